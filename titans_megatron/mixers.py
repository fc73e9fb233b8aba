"""The token mixers of the five variants, each plugged in as the ``self_attention`` submodule of a
Megatron-core ``TransformerLayer`` (TITANS_SPEC section 3). Each takes ``[s, b, h]`` and returns
``(output, None)`` like Megatron's attention.

Choices made here (documented in docs/model.md):
- MAG / MAC combine: ``o = RMSNorm_y(y) * sigmoid(RMSNorm_m(m))`` per head, learnable vectors.
- LMM output: ``o = RMSNorm(y) * SiLU(x W_gate)`` (spec section 2).
- MAL: the memory layer reads [persistent || x]; its output attends with the persistent tokens as the
  always-visible prefix.
- MAC: memory tokens for segment i are read from the memory after segment i-1 with the memory queries
  of the last N_l positions of segment i-1 (learned queries for segment 0); the memory is written with
  the attention output (projected back to hidden space); the combine uses each token's own retrieval
  (the op's output after that token's update), so nothing reads later tokens of the segment.
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

from titans_megatron.branches import AttentionBranch, MemoryBranch, column_linear, heads
from titans_megatron.norms import HeadRMSNorm
from titans_megatron.parallel import tensor_parallel_parameter, tp_size
from titans_megatron.sharding import TensorParallelSharded


def row_linear(config):
    return RowParallelLinear(config.hidden_size, config.hidden_size, config=config,
                             init_method=config.output_layer_init_method, bias=False,
                             input_is_parallel=True, skip_bias_add=True)


def head_norm(config):
    H_l = config.num_attention_heads // tp_size()
    return HeadRMSNorm(tensor_parallel_parameter((H_l, config.head_dim), 0, config, nn.init.ones_),
                       config.layernorm_epsilon)


def merge_heads(x):
    """[b, s, H_l, d] -> [s, b, H_l * d]."""
    b, s = x.shape[:2]
    return x.reshape(b, s, -1).transpose(0, 1)


def gate_combine(norm_y, norm_m, y, m):
    return norm_y(y) * torch.sigmoid(norm_m(m))


class Mixer(TensorParallelSharded):
    """Shared parts: the persistent tokens and the output projection."""

    def __init__(self, config, layer_number=None, pg_collection=None, **kwargs):
        super().__init__()
        self.config, self.layer_number = config, layer_number
        n = config.effective_persistent_tokens
        self.persistent = nn.Parameter(torch.empty(n, 1, config.hidden_size, dtype=config.params_dtype)) if n else None
        if n and config.perform_initialization:
            config.init_method(self.persistent)
        self.linear_proj = row_linear(config)

    def prefix(self):
        return self.persistent

    def project_out(self, o):
        out, bias = self.linear_proj(merge_heads(o))
        return out, bias


class TransformerPPMixer(Mixer):
    """Transformer++: full causal attention with RoPE."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = AttentionBranch(config, window=None)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return self.project_out(self.attention(hidden_states))


class LMMMixer(Mixer):
    """Memory only: o = RMSNorm(y) * SiLU(x W_gate), y the memory's output."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.memory = MemoryBranch(config)
        self.linear_gate = column_linear(config, config.hidden_size, config.hidden_size)
        self.norm = head_norm(config)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        P = 0 if self.persistent is None else self.persistent.shape[0]
        y = self.memory(hidden_states, self.prefix())[:, P:]
        gate, _ = self.linear_gate(hidden_states)
        o = self.norm(y) * F.silu(heads(gate, 1, self.config.head_dim).squeeze(3))
        return self.project_out(o)


class MAGMixer(Mixer):
    """Memory as gate: sliding-window attention and memory on the same input, gated together."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.attention = AttentionBranch(config, window=config.window_size)
        if config.has_memory:
            self.memory = MemoryBranch(config)
            self.norm_y, self.norm_m = head_norm(config), head_norm(config)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        y = self.attention(hidden_states, self.prefix())
        if not self.config.has_memory:
            return self.project_out(y)
        P = 0 if self.persistent is None else self.persistent.shape[0]
        m = self.memory(hidden_states, self.prefix())[:, P:]
        return self.project_out(gate_combine(self.norm_y, self.norm_m, y, m))


class MALMixer(Mixer):
    """Memory as layer: the memory layer, then sliding-window attention over its output."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        if config.has_memory:
            self.memory_layer = LMMMixer(config, **kwargs)
            self.memory_layer.persistent = None  # shares this mixer's persistent tokens
        self.attention = AttentionBranch(config, window=config.window_size)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        x = hidden_states
        if self.config.has_memory:
            P = 0 if self.persistent is None else self.persistent.shape[0]
            memory, layer = self.memory_layer.memory, self.memory_layer
            y = memory(x, self.prefix())[:, P:]
            gate, _ = layer.linear_gate(x)
            x, _ = layer.project_out(layer.norm(y) * F.silu(heads(gate, 1, self.config.head_dim).squeeze(3)))
        return self.project_out(self.attention(x, self.prefix()))


class MACMixer(Mixer):
    """Memory as context, segment by segment (TITANS_SPEC section 3)."""

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        # Inside the segment loop the full sequence is at hand: sequence parallelism is undone at the
        # mixer's borders instead of inside each projection.
        inner = dataclasses.replace(config, sequence_parallel=False) if config.sequence_parallel else config
        self.inner_config = inner
        self.attention = AttentionBranch(inner, window=None)
        self.attention_proj = row_linear(inner)
        if config.has_memory:
            self.memory = MemoryBranch(inner)
            self.memory_token_proj = row_linear(inner)
            H_l, d = config.num_attention_heads // tp_size(), config.head_dim
            self.first_queries = tensor_parallel_parameter(
                (config.num_memory_tokens, H_l, d), 1, config, lambda t: t.copy_(F.normalize(torch.randn_like(t), dim=-1)))
            self.norm_y, self.norm_m = head_norm(config), head_norm(config)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        cfg = self.config
        x = hidden_states
        if cfg.sequence_parallel:
            # The inner column-parallel projections all-reduce x's gradient: the gather's backward
            # only needs to keep this rank's slice of it.
            x = gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)
        s, b, _ = x.shape
        C, N_l = cfg.segment_length, cfg.num_memory_tokens
        if s % C:
            raise ValueError(f"MAC needs a sequence length that is a multiple of segment_length ({C}), got {s}")
        persistent = self.prefix()
        persistent = None if persistent is None else persistent.expand(-1, b, -1)

        if cfg.has_memory:
            (x_queries, *_), _ = self.memory.inputs(x)              # memory queries of every input token
        state, conv_state, outs = None, None, []
        for start in range(0, s, C):
            x_i = x[start:start + C]
            prefix = persistent
            if cfg.has_memory and N_l:
                if start == 0:
                    q_mem = self.first_queries.unsqueeze(0).expand(b, -1, -1, -1)
                else:
                    q_mem = x_queries[:, start - N_l:start]
                tokens = self.memory.retrieve(q_mem, state)          # [b, N_l, H_l, d]
                tokens, _ = self.memory_token_proj(merge_heads(tokens))
                prefix = tokens if prefix is None else torch.cat([prefix, tokens], dim=0)
            y = self.attention(x_i, prefix, position_offset=start)   # [b, C, H_l, d]
            if not cfg.has_memory:
                outs.append(y)
                continue
            y_hidden, _ = self.attention_proj(merge_heads(y))
            inputs, conv_state = self.memory.inputs(y_hidden, conv_state=conv_state)
            m, state = self.memory.memory(inputs, state)
            outs.append(gate_combine(self.norm_y, self.norm_m, y, m))
        return self.project_out(torch.cat(outs, dim=1))  # reduce-scatters back under sequence parallelism


MIXERS = {"transformer++": TransformerPPMixer, "lmm": LMMMixer, "mag": MAGMixer, "mal": MALMixer, "mac": MACMixer}
