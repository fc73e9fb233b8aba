"""Gated DeltaNet (Yang, Kautz, Hatamizadeh, ICLR 2025), the linear-recurrent baseline: the forward of a
layer laid out as Megatron-core's ``GatedDeltaNet`` (``in_proj`` = [q; k; v; z; beta; alpha] rows,
``conv1d`` over [q; k; v], ``A_log``, ``dt_bias``, ``out_norm`` shared by the heads, ``out_proj``), written
once for the Megatron model (titans_megatron.gated_delta_net) and the Hugging Face model (here).

Compared with upstream's forward it carries a stream state (the recurrent state S [b, H, d_k, d_v] and
the conv's last K-1 inputs between pieces: upstream starts every call from zero) and runs without a GPU
(a torch chunked delta rule and L2 norm where fla's Triton kernels cannot run).
"""

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norms import RMSNorm
from .parallel import LocalParallel
from .stream_state import StreamState


def torch_l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's l2norm (x / sqrt(sum x^2 + eps), in fp32) without Triton."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def initial_dt_bias(config, heads: int) -> torch.Tensor:
    """softplus^-1(dt), dt log-uniform in ``gdn_dt_init`` (fla's layer, Mamba-2's), or Megatron's ones."""
    if config.gdn_dt_init is None:
        return torch.ones(heads)
    lo, hi = (math.log(x) for x in config.gdn_dt_init)
    # in float64, then rounded: float32 exp/log differ in the last bit between CPUs' vector libraries
    dt = torch.exp(torch.rand(heads).double() * (hi - lo) + lo)
    return (dt + torch.log(-torch.expm1(-dt))).float()


class GatedDeltaNetForward(StreamState):
    """The forward, over the attributes upstream's ``GatedDeltaNet.__init__`` sets (sizes, ``in_proj``,
    ``conv1d``, ``A_log``, ``dt_bias``, ``out_norm``, ``out_proj``, ``act_fn``, ``tp_size``) and
    ``parallel`` (context parallelism's all-to-all and head slices: titans_core.parallel). A subclass
    says which kernels run: ``kernels(x) -> (l2norm, delta_rule, fused_conv or None)``."""

    def kernels(self, x):
        raise NotImplementedError

    def forward(self, hidden_states, attention_mask=None, inference_context=None, packed_seq_params=None, **kwargs):
        """[s, b, h] -> (out, bias), with the stream state."""
        if inference_context is not None or packed_seq_params is not None:
            raise NotImplementedError("variant gdn: Megatron's inference context and packed sequences are not "
                                      "supported; stream with TitansLM.stream")
        state = self.stream_slot("gdn")
        qkvzba, _ = self.in_proj(hidden_states)  # gathers the sequence under sequence parallelism
        l2norm, rule, fused_conv = self.kernels(qkvzba)
        qk, v, H = self.qk_dim // self.tp_size, self.v_dim // self.tp_size, self.num_v_heads_local_tp
        # Context parallelism: this rank's heads of each part, over the whole sequence (Megatron's a2a_cp_to_hp)
        query, key, value, gate, beta, alpha = self.parallel.to_heads(*torch.split(qkvzba, [qk, qk, v, v, H, H], dim=-1))
        s, b = query.shape[:2]
        qkv = torch.cat([query, key, value], dim=-1).transpose(0, 1)
        conv_weight = self.parallel.local_heads(self.conv1d.weight, 0, sections=(qk, qk, v))
        qkv = self.causal_conv(qkv.transpose(1, 2), state, fused_conv, conv_weight).transpose(1, 2)
        query, key, value = torch.split(qkv, [query.shape[-1], key.shape[-1], value.shape[-1]], dim=-1)
        query = query.reshape(b, s, -1, self.key_head_dim)
        key = key.reshape(b, s, -1, self.key_head_dim)
        value = value.reshape(b, s, -1, self.value_head_dim).contiguous()
        if self.use_qk_l2norm:
            query, key = l2norm(query.contiguous()), l2norm(key.contiguous())
        groups = self.num_value_heads // self.num_key_heads
        if groups > 1:
            query = query.repeat_interleave(groups, dim=2)
            key = key.repeat_interleave(groups, dim=2)
        A_log, dt_bias = (self.parallel.local_heads(t, 0) for t in (self.A_log, self.dt_bias))
        g = -A_log.exp() * F.softplus(alpha.transpose(0, 1).float() + dt_bias)  # log decay, fp32
        out, final = rule(query.contiguous(), key.contiguous(), value, g=g,
                          beta=beta.transpose(0, 1).sigmoid().contiguous(),
                          initial_state=None if state is None else state.get("recurrent"),
                          output_final_state=state is not None, use_qk_l2norm_in_kernel=False)
        if state is not None:
            state["recurrent"] = final
        gate = gate.transpose(0, 1).reshape(b, s, -1, self.value_head_dim)
        y = (self.out_norm(out) * self.act_fn(gate.float())).to(out.dtype)  # upstream's _apply_gated_norm
        y = self.parallel.to_sequence(y.reshape(b, s, -1).transpose(0, 1).contiguous())
        return self.out_proj(y)

    def causal_conv(self, x, state, fused=None, weight=None):
        """act(depthwise causal conv) of [b, d, s] (``weight``: this rank's channels of conv1d's, by
        default all); a stream prepends the previous piece's last K-1 inputs."""
        weight = self.conv1d.weight if weight is None else weight
        if state is None and fused is not None:
            return fused(x=x.contiguous(), weight=weight.squeeze(1), bias=self.conv1d.bias,
                         activation=self.activation)
        K = self.conv_kernel_dim
        past = None if state is None else state.get("conv")
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], K - 1)
        padded = torch.cat([past, x], dim=-1)
        if state is not None:
            state["conv"] = padded[..., padded.shape[-1] - (K - 1):]
        return self.act_fn(F.conv1d(padded, weight, self.conv1d.bias, groups=x.shape[1]))


def _hf_kernels(on_cuda: bool):
    """fla's kernels on CUDA when installed; else transformers' torch chunked rule (Qwen3-Next's, the one
    Megatron-core copies) and a torch L2 norm."""
    if on_cuda:
        try:
            from fla.modules.l2norm import l2norm
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
            try:
                from causal_conv1d import causal_conv1d_fn
            except ImportError:
                causal_conv1d_fn = None
            return l2norm, chunk_gated_delta_rule, causal_conv1d_fn
        except ImportError:
            pass
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    # transformers wraps it to call fla's Triton kernel wherever fla is installed, CPU included: unwrap
    return torch_l2norm, inspect.unwrap(torch_chunk_gated_delta_rule), None


class GatedDeltaNetMixer(GatedDeltaNetForward, nn.Module):
    """The layer on one rank without Megatron, parameters named as upstream's (the Hugging Face model)."""

    def __init__(self, config, layer_number=None, **kwargs):
        super().__init__()
        self.config, self.layer_number, self.tp_size = config, layer_number, 1
        self.act_fn, self.activation, self.use_qk_l2norm = F.silu, "silu", True
        self.conv_kernel_dim = config.linear_conv_kernel_dim
        self.key_head_dim, self.value_head_dim = config.linear_key_head_dim, config.linear_value_head_dim
        self.num_key_heads, self.num_value_heads = config.linear_num_key_heads, config.linear_num_value_heads
        self.qk_dim = self.key_head_dim * self.num_key_heads
        self.v_dim = self.value_head_dim * self.num_value_heads
        self.conv_dim = self.conv_dim_local_tp = self.qk_dim * 2 + self.v_dim
        self.num_v_heads_local_tp = H = self.num_value_heads
        self.parallel = parallel = LocalParallel()
        dtype = config.params_dtype
        self.in_proj = parallel.column(config, config.hidden_size, self.qk_dim * 2 + self.v_dim * 2 + H * 2)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.conv_kernel_dim, groups=self.conv_dim,
                                padding=self.conv_kernel_dim - 1, bias=False, dtype=dtype)
        self.A_log = nn.Parameter(torch.log(torch.empty(H, dtype=dtype).uniform_(*config.gdn_A_init)))
        self.dt_bias = nn.Parameter(initial_dt_bias(config, H).to(dtype))
        self.out_norm = RMSNorm(self.value_head_dim, config.layernorm_epsilon, dtype)
        self.out_proj = parallel.row(config, self.v_dim, config.hidden_size)

    def kernels(self, x):
        return _hf_kernels(x.is_cuda)
