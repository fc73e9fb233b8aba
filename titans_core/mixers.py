"""The token mixers of the five variants (TITANS_SPEC section 3). Each takes ``[s, b, h]`` and returns
``(output, None)`` like Megatron's attention: titans_megatron plugs them in as the ``self_attention``
submodule of a Megatron-core ``TransformerLayer`` (their ``submodules``: Megatron's tensor-parallel
layers), titans_hf into its own layers (``LocalParallel``).

Choices made here (documented in docs/model.md):
- MAG / MAC combine: ``o = RMSNorm_y(y) * sigmoid(RMSNorm_m(m))`` per head, learnable vectors.
- LMM output: ``o = RMSNorm(y) * SiLU(x W_gate)`` (spec section 2).
- MAL: the memory layer reads [persistent || x]; its output attends with the persistent tokens as the
  always-visible prefix. With mal_residual, memory and attention are two pre-norm residual sublayers
  (specs.py), each with its own persistent tokens.
- MAC: memory tokens for segment i are read from the memory after segment i-1, either (mac_retrieval
  "previous_segment") with the memory queries of the last N_l positions of segment i-1 (learned queries
  for segment 0), or ("own_query", the paper's h_t = M*_{i-1}(q_t) made causal) one per position with
  its own query, seen only by that position and later ones of the segment; the memory is written with
  the attention output (projected back to hidden space); the combine uses each token's own retrieval
  (the op's output after that token's update), so nothing reads later tokens of the segment.
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from .branches import AttentionBranch, MemoryBranch, heads
from .norms import head_norm
from .parallel import LocalParallel, Sharded
from .stream_state import StreamState


def row_linear(config, parallel):
    """A row-parallel projection from the heads back to hidden space."""
    return parallel.row(config, config.hidden_size, config.hidden_size)


def merge_heads(x):
    """[b, s, H_l, d] -> [s, b, H_l * d]."""
    b, s = x.shape[:2]
    return x.reshape(b, s, -1).transpose(0, 1)


def gate_combine(norm_y, norm_m, y, m):
    return norm_y(y) * torch.sigmoid(norm_m(m))


class Mixer(StreamState, Sharded):
    """Shared parts: the persistent tokens, the output projection, and the stream state (attention
    cache, memory state, conv inputs).

    ``submodules``: where the layers come from (titans_core.parallel), the name Megatron's specs pass
    them by; None builds plain single-rank layers."""

    def __init__(self, config, submodules=None, layer_number=None, pg_collection=None, **kwargs):
        super().__init__()
        self.config, self.layer_number = config, layer_number
        self.parallel = submodules if submodules is not None else LocalParallel()
        n = config.effective_persistent_tokens
        self.persistent = nn.Parameter(torch.empty(n, 1, config.hidden_size, dtype=config.params_dtype,
                                                   device=self.parallel.device(config))) if n else None
        if n and config.perform_initialization:
            config.init_method(self.persistent)
        self.linear_proj = row_linear(config, self.parallel)

    def prefix(self):
        return self.persistent

    def heads_first(self, x, *linears):
        """Under context parallelism: this rank's heads of x's projections by ``linears`` (column-parallel),
        all in one all-to-all, for the branches to take as ``projected``. Nones at cp 1, where each branch
        projects x itself (the single-rank path is unchanged)."""
        if self.parallel.cp_size() == 1:
            return [None] * len(linears)
        return self.parallel.to_heads(*(linear(x)[0] for linear in linears))

    def project_out(self, o):
        """[b, s, H, d] heads -> [s, b, h]; under context parallelism back to this rank's positions first."""
        out, bias = self.linear_proj(self.parallel.to_sequence(merge_heads(o)))
        return out, bias


class AttentionMixer(Mixer):
    """Causal attention with RoPE over [persistent || x] (no persistent tokens for Transformer++)."""

    def __init__(self, config, window=None, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = AttentionBranch(config, window, self.parallel)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return self.project_out(self.attention(hidden_states, self.prefix(), cache=self.stream_slot("attention")))


class TransformerPPMixer(AttentionMixer):
    """Transformer++: full causal attention with RoPE."""

    def __init__(self, config, **kwargs):
        super().__init__(config, window=None, **kwargs)


class LMMMixer(Mixer):
    """Memory only: o = RMSNorm(y) * SiLU(x W_gate), y the memory's output."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.memory = MemoryBranch(config, self.parallel)
        self.linear_gate = self.parallel.column(config, config.hidden_size, config.hidden_size)
        self.norm = head_norm(config, self.parallel)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return self.mix(hidden_states, self.prefix(), self.stream_slot("memory"))

    def mix(self, x, prefix, state):
        """The memory's output for x (``prefix`` read first; ``state`` as MemoryBranch takes it), normed,
        gated by x and projected out."""
        qkv, gates, gate = self.heads_first(x, *self.memory.linears, self.linear_gate)
        y = self.memory(x, prefix, state=state, projected=(qkv, gates))
        gate = self.linear_gate(x)[0] if gate is None else gate
        return self.project_out(self.norm(y) * F.silu(heads(gate, 1, self.config.head_dim).squeeze(3)))


class SlidingWindowMixer(AttentionMixer):
    """Sliding-window attention over [persistent || x]: the attention sublayer of MAL with residual
    sublayers (config.mal_residual). It runs in a TransformerLayer's cross-attention slot, whose
    context arguments it ignores."""

    def __init__(self, config, **kwargs):
        super().__init__(config, window=config.window_size, **kwargs)


class MAGMixer(Mixer):
    """Memory as gate: sliding-window attention and memory on the same input, gated together."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = AttentionBranch(config, config.window_size, self.parallel)
        if config.has_memory:
            self.memory = MemoryBranch(config, self.parallel)
            self.norm_y, self.norm_m = head_norm(config, self.parallel), head_norm(config, self.parallel)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        memory = self.memory.linears if self.config.has_memory else ()
        qkv, *projected = self.heads_first(hidden_states, self.attention.linear_qkv, *memory)
        y = self.attention(hidden_states, self.prefix(), cache=self.stream_slot("attention"), projected=qkv)
        if not self.config.has_memory:
            return self.project_out(y)
        m = self.memory(hidden_states, self.prefix(), state=self.stream_slot("memory"), projected=projected)
        return self.project_out(gate_combine(self.norm_y, self.norm_m, y, m))


class MALMixer(Mixer):
    """Memory as layer: the memory layer, then sliding-window attention over its output."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if config.has_memory:
            self.memory_layer = LMMMixer(config, **kwargs)
            self.memory_layer.persistent = None  # shares this mixer's persistent tokens
        self.attention = AttentionBranch(config, config.window_size, self.parallel)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        x = hidden_states
        if self.config.has_memory:
            x, _ = self.memory_layer.mix(x, self.prefix(), self.stream_slot("memory"))
        return self.project_out(self.attention(x, self.prefix(), cache=self.stream_slot("attention")))


class MACMixer(Mixer):
    """Memory as context, segment by segment (TITANS_SPEC section 3)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        # Inside the segment loop the full sequence is at hand: sequence parallelism is undone at the
        # mixer's borders instead of inside each projection.
        inner = dataclasses.replace(config, sequence_parallel=False) if config.sequence_parallel else config
        self.attention = AttentionBranch(inner, None, self.parallel)
        self.attention_proj = row_linear(inner, self.parallel)
        self.own_query = config.mac_retrieval == "own_query"
        if config.has_memory:
            self.memory = MemoryBranch(inner, self.parallel)
            self.memory_token_proj = row_linear(inner, self.parallel)
            if not self.own_query:  # own-query retrieval has no first segment's learned queries
                H_l, d = config.num_attention_heads // self.parallel.tp_size(), config.head_dim
                self.first_queries = self.parallel.parameter(
                    (config.num_memory_tokens, H_l, d), 1, config,
                    lambda t: t.copy_(F.normalize(torch.randn_like(t), dim=-1)))
            self.norm_y, self.norm_m = head_norm(config, self.parallel), head_norm(config, self.parallel)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        """Segments of C tokens, in one pass over the pieces of the input: a whole sequence is one
        piece of a stream that starts and ends here; a stream carries its state between calls."""
        cfg = self.config
        x = hidden_states
        if cfg.sequence_parallel:
            if self.stream_state is not None:
                raise ValueError("streaming runs without sequence parallelism")
            # The inner column-parallel projections all-reduce x's gradient: the gather's backward
            # only needs to keep this rank's slice of it.
            x = self.parallel.gather_sequence(x)
        st = {} if self.stream_state is None else self.stream_state
        cp = self.parallel.cp_size()
        s, b = x.shape[0] * cp, x.shape[1]  # x: this rank's part of the sequence under context parallelism
        C, N_l = cfg.segment_length, cfg.num_memory_tokens
        persistent = self.prefix()
        persistent = None if persistent is None else persistent.expand(-1, b, -1)
        use_tokens = cfg.has_memory and N_l > 0 and not self.own_query
        own = cfg.has_memory and self.own_query
        # Context parallelism: this rank's heads of the whole sequence's projections (one all-to-all);
        # inside the loop the hidden-space tokens (memory tokens, the attention output the memory writes)
        # are summed over the tensor x context group and projected to this rank's heads (row_from_heads,
        # head_linear).
        x_qkv, *projected = self.heads_first(x, self.attention.linear_qkv,
                                             *(self.memory.linears if cfg.has_memory else ()))
        if cfg.has_memory:
            (x_queries, *_), st["x_conv"] = self.memory.inputs(x, conv_state=st.get("x_conv"), projected=projected)

        pos, i, outs = st.get("pos", 0), 0, []
        while i < s:
            if (pos + i) % C == 0:  # a segment starts: fresh attention cache, memory tokens from M_{i-1}
                st["segment"] = {"pos": pos + i}
                st["tokens"] = self.memory_tokens(b, pos + i, st, x_queries[:, :i]) if use_tokens else None
                st["segment_memory"] = st.get("y_memory", {}).get("memory")
            take = min(C - (pos + i) % C, s - i)
            prefix = [t for t in (persistent, st["tokens"]) if t is not None]
            # own_query: each position's retrieval M*_{i-1}(q_j), seen by positions >= j of the segment.
            aligned = self.own_retrievals(x_queries[:, i:i + take], st["segment_memory"]) if own else None
            if cp > 1:  # persistent tokens are parameters, memory tokens activations: projected apart
                y = self.attention(None, persistent, cache=st["segment"], aligned=aligned, tokens=st["tokens"],
                                   projected=x_qkv[i:i + take])
            else:
                y = self.attention(x[i:i + take], torch.cat(prefix) if prefix else None, cache=st["segment"],
                                   aligned=aligned)
            if cfg.has_memory:
                y_hidden = self.parallel.row_from_heads(self.attention_proj, merge_heads(y))
                m = self.memory(y_hidden, None, state=st.setdefault("y_memory", {}), replicated=True)
                y = gate_combine(self.norm_y, self.norm_m, y, m)
            outs.append(y)
            i += take
        if use_tokens:
            st["queries"] = self.recent_queries(st, x_queries)
        st["pos"] = pos + s
        return self.project_out(torch.cat(outs, dim=1))  # reduce-scatters back under sequence parallelism

    def own_retrievals(self, queries, segment_memory):
        """[take, b, h]: the memory after the previous segment read with each position's own query."""
        return self.parallel.row_from_heads(self.memory_token_proj,
                                            merge_heads(self.memory.retrieve(queries, segment_memory)))

    def recent_queries(self, st, new):
        """The memory queries of the last N_l inputs seen (earlier pieces included)."""
        old = st.get("queries")
        return (new if old is None else torch.cat([old, new], dim=1))[:, -self.config.num_memory_tokens:]

    def memory_tokens(self, b, start, st, queries_before):
        """h_i: the memory after the previous segment read (no update) with the queries of its last
        N_l inputs (learned queries for the first segment), projected to hidden space."""
        if start == 0:
            q = self.parallel.local_heads(self.first_queries, 1).unsqueeze(0).expand(b, -1, -1, -1)
        else:
            q = self.recent_queries(st, queries_before)
        tokens = self.memory.retrieve(q, st.get("y_memory", {}).get("memory"))
        return self.parallel.row_from_heads(self.memory_token_proj, merge_heads(tokens))


MIXERS = {"transformer++": TransformerPPMixer, "lmm": LMMMixer, "mag": MAGMixer, "mal": MALMixer, "mac": MACMixer}
