"""The two branches every Titans mixer is made of: sliding-window attention and the neural memory.

Both take sequence-first hidden states ``[s, b, h]`` (``[s / tp, b, h]`` under sequence
parallelism: the column-parallel projections gather the sequence) and an optional prefix of tokens in
hidden space ``[P, b, h]`` (persistent tokens, MAC's memory tokens) that the branch reads before the
sequence. They return per-head outputs ``[b, P + s, H_local, d_h]`` (prefix positions first).

Fused projections are laid out head-major ([H, parts, d_h] rows), so a contiguous split of their rows
across tensor-parallel ranks gives each rank whole heads: the same checkpoint tensors serve any
tensor-parallel size.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention_core import prefixed_attention
from .memory import mlp_forward, neural_memory
from .parallel import Sharded
from .rotary import apply_rotary, rotary_cos_sin


def project_with_prefix(linear, x, prefix, parallel, tokens=None, projected=None, replicated=False):
    """``linear`` (column-parallel) over the sequence and over the prefix, joined along time:
    [P + N + s, b, out_local]. ``prefix`` [P, 1 or b, h]: parameters (persistent tokens), through the
    same weight, their gradient all-reduced across tensor-parallel ranks as the linear does for its own
    input. ``tokens`` [N, b, h]: activations every rank of the tensor x context group holds (MAC's
    memory tokens under context parallelism). Under context parallelism x is this rank's part of the
    sequence and the projection comes back as this rank's heads of the whole sequence (``replicated``:
    x is the whole sequence already, as MAC's tokens are); the prefix's projection is cut to the same
    heads. ``projected``: the sequence's projection, made earlier."""
    if projected is not None:
        out = projected
    elif replicated:
        out = parallel.head_linear(linear, x)
    else:
        out, = parallel.to_heads(linear(x)[0])
    parts = []
    if prefix is not None and prefix.shape[0]:
        p = parallel.local_heads(F.linear(parallel.copy_to_tensor_parallel(prefix), linear.weight), -1)
        parts.append(p.expand(-1, out.shape[1], -1))
    if tokens is not None and tokens.shape[0]:
        parts.append(parallel.head_linear(linear, tokens))
    return torch.cat([*parts, out], dim=0) if parts else out


def heads(x, num_parts, head_dim):
    """[T, b, H_l * parts * d] -> [b, T, H_l, parts, d]."""
    T, b, _ = x.shape
    return x.transpose(0, 1).reshape(b, T, -1, num_parts, head_dim)


class AttentionBranch(Sharded):
    """Softmax attention with RoPE over [prefix || sequence]; causal, optional sliding window.

    RoPE rotates sequence tokens by their positions; prefix keys carry no rotation (choice: they are
    content-addressed memory, visible from every position).
    """

    def __init__(self, config, window: Optional[int], parallel):
        super().__init__()
        self.config, self.window, self.head_dim, self.parallel = config, window, config.head_dim, parallel
        self.linear_qkv = parallel.column(config, config.hidden_size, 3 * config.hidden_size)

    def forward(self, x, prefix=None, position_offset: int = 0, cache=None, aligned=None, tokens=None, projected=None):
        """``cache``: None for a whole sequence, or a dict carried between pieces of one stream ({} to
        start; it keeps the rotated keys and values a later query can still see, and the position).
        ``aligned``: None, or tokens [s, b, h] in hidden space, one per token of x, each seen (unrotated)
        by the queries that see the token at its position (MAC's own-query retrievals). ``tokens``
        (MAC under context parallelism), ``projected`` (x's projection made by the mixer: context
        parallelism's one all-to-all): as project_with_prefix takes them."""
        aligned_kv = None
        if aligned is not None:
            akv = heads(self.parallel.head_linear(self.linear_qkv, aligned), 3, self.head_dim)
            aligned_kv = [t.transpose(1, 2) for t in akv.unbind(3)[1:]]     # k, v: [b, H_l, s, d]
        qkv = heads(project_with_prefix(self.linear_qkv, x, prefix, self.parallel, tokens, projected), 3, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(3))             # [b, H_l, P + s, d]
        P = sum(0 if t is None else t.shape[0] for t in (prefix, tokens))
        s = q.shape[2] - P
        if cache is not None:
            position_offset = cache.setdefault("pos", position_offset)
        positions = torch.arange(position_offset, position_offset + s, device=q.device)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.config.rotary_base, q.dtype)
        qs, ks, vs = apply_rotary(q[:, :, P:], cos, sin), apply_rotary(k[:, :, P:], cos, sin), v[:, :, P:]
        seen = 0
        if cache is not None and "k" in cache:
            seen = cache["k"].shape[2]
            ks, vs = torch.cat([cache["k"], ks], dim=2), torch.cat([cache["v"], vs], dim=2)
            if aligned_kv is not None:
                aligned_kv = [torch.cat([cache[name], t], dim=2) for name, t in zip(("ak", "av"), aligned_kv)]
        aligned_k, aligned_v = aligned_kv if aligned_kv is not None else (None, None)
        out = prefixed_attention(qs, ks, vs, k[:, :, :P], v[:, :, :P], self.window, query_offset=seen,
                                 backend=self.config.attention_backend, aligned_k=aligned_k, aligned_v=aligned_v)
        if cache is not None:
            keep = ks.shape[2] if self.window is None else min(ks.shape[2], self.window - 1)
            cache["k"], cache["v"] = ks[:, :, ks.shape[2] - keep:], vs[:, :, vs.shape[2] - keep:]
            if aligned_kv is not None:
                cache["ak"], cache["av"] = (t[:, :, t.shape[2] - keep:] for t in aligned_kv)
            cache["pos"] = position_offset + s
        return out.transpose(1, 2)                                       # [b, s, H_l, d]


def spread_across_heads(lo_hi, heads: int) -> torch.Tensor:
    """``heads`` values log-spaced from lo_hi[0] to lo_hi[1] (their geometric mean for one head)."""
    lo, hi = (math.log(x) for x in lo_hi)
    if heads == 1:
        return torch.tensor([math.exp((lo + hi) / 2)], dtype=torch.float64)
    return torch.linspace(lo, hi, heads, dtype=torch.float64).exp()


def initial_gate_bias(config) -> torch.Tensor:
    """[H, 3] biases of theta, eta, alpha for all heads (every rank keeps its slice), choices of
    docs/model.md: theta / lr_max and alpha spread across heads (config.memory_lr_init,
    config.memory_forget_init), eta at 0.5. A larger eta (0.88) with lr_max 0.1 diverged at
    initialisation on repetitive text (1K tokens, 4 fillers)."""
    H = config.num_attention_heads
    bias = torch.zeros(H, 3, dtype=torch.float64)
    bias[:, 0] = torch.logit(spread_across_heads(config.memory_lr_init, H))
    bias[:, 2] = torch.logit(spread_across_heads(config.memory_forget_init, H))
    return bias.to(config.params_dtype)


class MemoryBranch(Sharded):
    """The memory layer of TITANS_SPEC section 2 up to the op's output (norm/gate/output come after):

        q, k, v = SiLU(depthwise causal conv(x W_{Q,K,V})); q, k L2-normalised per head
        theta = lr_max sigmoid(.), eta = sigmoid(.), alpha = sigmoid(.)  (per head and token)
        y = neural_memory(q, k, v, theta, eta, alpha, W_init)
    """

    def __init__(self, config, parallel):
        super().__init__()
        self.config, self.parallel = config, parallel
        H_l, d = config.num_attention_heads // parallel.tp_size(), config.head_dim
        self.num_heads, self.head_dim = H_l, d
        self.linear_qkv = parallel.column(config, config.hidden_size, 3 * config.hidden_size)
        self.linear_gates = parallel.column(config, config.hidden_size, 3 * config.num_attention_heads)
        self.gate_bias = parallel.parameter((H_l, 3), 0, config, lambda t: t.copy_(initial_gate_bias(config)))
        K = config.conv_kernel
        self.conv_weight = parallel.parameter(
            (H_l * 3 * d, K), 0, config, lambda t: nn.init.uniform_(t, -1 / math.sqrt(K), 1 / math.sqrt(K)))
        E, L = config.memory_expansion, config.effective_memory_depth
        dims = [d] + [E * d] * (L - 1) + [d]
        # Plain attributes, not a ParameterList: Megatron would take a list's entries as replicated.
        self.num_memory_layers = L
        for i in range(L):
            setattr(self, f"memory_init_{i}", parallel.parameter(
                (H_l, dims[i], dims[i + 1]), 0, config, lambda t, fan_in=dims[i]: nn.init.normal_(t, std=1 / math.sqrt(fan_in))))

    @property
    def memory_init(self):
        """The learned initial memory weights, one [H_local, d_in, d_out] tensor per MLP layer (this
        context-parallel rank's heads)."""
        return tuple(self.parallel.local_heads(getattr(self, f"memory_init_{i}"), 0) for i in range(self.num_memory_layers))

    def conv(self, x, conv_state=None):
        """Depthwise causal conv over time of [b, T, C]; ``conv_state`` is the previous K-1 inputs."""
        K = self.conv_weight.shape[1]
        if not self.config.memory_conv:
            return x, None
        weight = self.parallel.local_heads(self.conv_weight, 0)
        past = x.new_zeros(x.shape[0], K - 1, x.shape[2]) if conv_state is None else conv_state
        padded = torch.cat([past, x], dim=1)
        out = F.conv1d(padded.transpose(1, 2), weight[:, None, :], groups=x.shape[2]).transpose(1, 2)
        return out, padded[:, -(K - 1):] if K > 1 else padded[:, :0]

    @property
    def linears(self):
        """The column projections of the input (q, k, v; the gates), in the order ``projected`` takes."""
        return self.linear_qkv, self.linear_gates

    def inputs(self, x, prefix=None, conv_state=None, replicated=False, projected=(None, None)):
        """q, k, v [b, T, H_l, d] and gates [b, T, H_l] for the memory op, T = P + s. ``projected``: x's
        projections by ``linears`` made earlier (context parallelism: one all-to-all for a mixer's)."""
        qkv = project_with_prefix(self.linear_qkv, x, prefix, self.parallel, replicated=replicated,
                                  projected=projected[0])                                             # [T, b, 3 h_l]
        qkv, conv_state = self.conv(qkv.transpose(0, 1), conv_state)
        qkv = F.silu(qkv).reshape(qkv.shape[0], qkv.shape[1], -1, 3, self.head_dim)
        q, k, v = qkv.unbind(3)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.config.memory_value_norm:
            v = F.normalize(v, dim=-1)
        g = project_with_prefix(self.linear_gates, x, prefix, self.parallel, replicated=replicated,
                                projected=projected[1]).transpose(0, 1)
        g = torch.sigmoid(g.reshape(g.shape[0], g.shape[1], -1, 3) + self.parallel.local_heads(self.gate_bias, 0))
        lr, momentum, forget = g.unbind(-1)
        lr = self.config.memory_lr_max * lr
        if not self.config.memory_momentum:
            momentum = torch.zeros_like(momentum)
        elif self.config.memory_momentum_ema:
            lr = lr * (1.0 - momentum)
        if not self.config.memory_forgetting:
            forget = torch.zeros_like(forget)
        return (q, k, v, lr, momentum, forget), conv_state

    def memory(self, inputs, state=None):
        """Run the op; ``state`` = (weights, momenta) carried from earlier tokens, None to start."""
        weights, momenta = (tuple(self.memory_init), None) if state is None else state
        return neural_memory(*inputs, weights, momenta, chunk_size=self.config.memory_chunk_size,
                             backend=self.config.memory_backend, step_budget=self.config.memory_step_budget)

    def retrieve(self, q, state=None):
        """M(q) with the current weights, no update: [b, n, H_l, d]."""
        weights = tuple(w.unsqueeze(0) for w in self.memory_init) if state is None else state[0]
        out = mlp_forward([w.float() for w in weights], q.transpose(1, 2).float())
        return out.transpose(1, 2).to(q.dtype)

    def forward(self, x, prefix=None, state=None, replicated=False, projected=(None, None)):
        """The memory's outputs for the tokens of x ([b, s, H_l, d]; it reads the prefix first).

        ``state``: None for a whole sequence, or a dict carried between pieces of one stream ({} to
        start). A stream keeps the conv's last inputs, the memory state at the last chunk boundary and
        the inputs of the chunk under way, so every piece gives exactly the outputs of one call.
        """
        P = 0 if prefix is None else prefix.shape[0]
        if state is None:
            inputs, _ = self.inputs(x, prefix, replicated=replicated, projected=projected)
            out, _ = self.memory(inputs)
            return out[:, P:]
        if state:
            P, prefix = 0, None  # the prefix was read at the start of the stream
        inputs, state["conv"] = self.inputs(x, prefix, conv_state=state.get("conv"), replicated=replicated,
                                            projected=projected)
        pending = state.get("pending")
        done = 0
        if pending is not None:
            done = pending[0].shape[1]
            inputs = tuple(torch.cat([a, b], dim=1) for a, b in zip(pending, inputs))
        T, C = inputs[0].shape[1], self.config.memory_chunk_size
        whole = T // C * C
        memory, outs = state.get("memory"), []
        if whole:
            out, memory = self.memory(tuple(t[:, :whole] for t in inputs), memory)
            outs.append(out)
        if T > whole:
            out, _ = self.memory(tuple(t[:, whole:] for t in inputs), memory)
            outs.append(out)
        state["memory"] = memory
        state["pending"] = tuple(t[:, whole:] for t in inputs) if T > whole else None
        return torch.cat(outs, dim=1)[:, done + P:]
