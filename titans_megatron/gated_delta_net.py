"""Gated DeltaNet (Yang, Kautz, Hatamizadeh, ICLR 2025), the linear-recurrent baseline: Megatron-core's
``GatedDeltaNet`` module in the ``self_attention`` slot of our Llama-style block.

Upstream's module, parameters and checkpoint layout (``in_proj`` split into query/key/value/z/beta/
alpha, ``conv1d`` into query/key/value, heads split across tensor-parallel ranks) are kept; this
subclass adds what the upstream forward lacks:

- a stream state: the recurrent state S [b, H_l, d_k, d_v] and the conv's last K-1 inputs carried
  between the pieces of ``TitansLM.stream`` (upstream starts every call from zero);
- a path that needs no GPU: Megatron's torch chunked delta rule and a torch L2 norm where CUDA is
  absent (fla's kernels, Triton, run on CUDA), and the gated output norm uncompiled (upstream wraps it
  in torch.compile, 20 s per shape on CPU);
- weights drawn whole and sliced per rank, so a model holds the same weights at every
  tensor-parallel size (upstream draws the conv and gates per rank), with the gate initialisation of
  fla's layer (the GDN paper's) or Megatron's (``config.gdn_dt_init``, docs/model.md).
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.ssm import gated_delta_net as upstream

from titans_megatron.parallel import tp_rank
from titans_core.stream_state import StreamState


def torch_l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's l2norm (x / sqrt(sum x^2 + eps), in fp32) without Triton."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@contextlib.contextmanager
def _fla_optional(on_gpu: bool):
    """Upstream refuses to build without fla; only its GPU path calls fla, so on CPU it may be absent."""
    if upstream.HAVE_FLA or on_gpu:
        if not upstream.HAVE_FLA:
            raise ImportError("variant gdn on GPU runs flash-linear-attention's kernels: pip install 'fla-core>=0.6,<0.7' "
                              "(the gpu extra)")
        yield
        return
    upstream.HAVE_FLA = True
    try:
        yield
    finally:
        upstream.HAVE_FLA = False


def rank_rows(full: torch.Tensor, parts, tp: int, rank: int) -> torch.Tensor:
    """This rank's rows of a tensor whose rows are ``parts`` concatenated, each split across ranks."""
    pieces = torch.split(full, list(parts), dim=0)
    return torch.cat([p.chunk(tp, dim=0)[rank] for p in pieces], dim=0)


def initial_dt_bias(config, heads: int) -> torch.Tensor:
    """softplus^-1(dt), dt log-uniform in ``gdn_dt_init`` (fla's layer, Mamba-2's), or Megatron's ones."""
    if config.gdn_dt_init is None:
        return torch.ones(heads)
    lo, hi = (math.log(x) for x in config.gdn_dt_init)
    dt = torch.exp(torch.rand(heads) * (hi - lo) + lo)
    return dt + torch.log(-torch.expm1(-dt))


class GatedDeltaNetMixer(StreamState, upstream.GatedDeltaNet):
    """Megatron-core's GatedDeltaNet, streamable and runnable on CPU (module docstring)."""

    def __init__(self, config, submodules, layer_number=None, pg_collection=None, **kwargs):
        pg_collection = pg_collection or ProcessGroupCollection.use_mpu_process_groups()
        rng = torch.get_rng_state()  # upstream draws per rank; the whole-tensor draws below replace them
        with _fla_optional(torch.cuda.is_available()):
            super().__init__(config, submodules, layer_number=layer_number, pg_collection=pg_collection,
                             A_init_range=tuple(config.gdn_A_init))
        torch.set_rng_state(rng)
        if config.perform_initialization:
            self.draw_weights()

    @torch.no_grad()
    def draw_weights(self):
        """Every weight drawn at its full size from the global RNG, this rank keeping its slice."""
        cfg, tp, r = self.config, self.tp_size, tp_rank()
        H = self.num_value_heads
        parts = [self.qk_dim, self.qk_dim, self.v_dim, self.v_dim, H, H]
        full = torch.empty(sum(parts), self.hidden_size, dtype=cfg.params_dtype)
        cfg.init_method(full)
        self.in_proj.weight.copy_(rank_rows(full, parts, tp, r))
        conv = torch.empty(self.conv_dim, 1, self.conv_kernel_dim, dtype=cfg.params_dtype)
        nn.init.kaiming_uniform_(conv, a=math.sqrt(5))  # nn.Conv1d's own initialisation
        self.conv1d.weight.copy_(rank_rows(conv, parts[:3], tp, r))
        out = torch.empty(self.hidden_size, self.v_dim, dtype=cfg.params_dtype)
        cfg.output_layer_init_method(out)
        self.out_proj.weight.copy_(out.chunk(tp, dim=1)[r])
        A = torch.empty(H).uniform_(*self.A_init_range)
        self.A_log.copy_(torch.log(A).chunk(tp)[r])
        self.dt_bias.copy_(initial_dt_bias(cfg, H).chunk(tp)[r])

    def forward(self, hidden_states, attention_mask=None, inference_context=None, packed_seq_params=None, **kwargs):
        """Upstream's forward ([s, b, h] -> (out, bias)), with the stream state and the CPU path."""
        if inference_context is not None or packed_seq_params is not None:
            raise NotImplementedError("variant gdn: Megatron's inference context and packed sequences are not "
                                      "supported; stream with TitansLM.stream")
        state = self.stream_slot("gdn")
        qkvzba, _ = self.in_proj(hidden_states)  # gathers the sequence under sequence parallelism
        s, b = qkvzba.shape[:2]
        qkv, gate, beta, alpha = torch.split(
            qkvzba.transpose(0, 1),
            [self.conv_dim_local_tp, self.v_dim // self.tp_size, self.num_v_heads_local_tp, self.num_v_heads_local_tp],
            dim=-1)
        qkv = self.causal_conv(qkv.transpose(1, 2), state).transpose(1, 2)
        query, key, value = torch.split(
            qkv, [self.qk_dim // self.tp_size, self.qk_dim // self.tp_size, self.v_dim // self.tp_size], dim=-1)
        query = query.reshape(b, s, -1, self.key_head_dim)
        key = key.reshape(b, s, -1, self.key_head_dim)
        value = value.reshape(b, s, -1, self.value_head_dim).contiguous()
        fla = qkv.is_cuda and not self.config.deterministic_mode
        if self.use_qk_l2norm:
            norm = upstream.l2norm if fla else torch_l2norm
            query, key = norm(query.contiguous()), norm(key.contiguous())
        groups = self.num_value_heads // self.num_key_heads
        if groups > 1:
            query = query.repeat_interleave(groups, dim=2)
            key = key.repeat_interleave(groups, dim=2)
        g = -self.A_log.exp() * F.softplus(alpha.float() + self.dt_bias)  # log decay, fp32
        rule = upstream.chunk_gated_delta_rule if fla else upstream.torch_chunk_gated_delta_rule
        out, final = rule(query.contiguous(), key.contiguous(), value, g=g, beta=beta.sigmoid().contiguous(),
                          initial_state=None if state is None else state.get("recurrent"),
                          output_final_state=state is not None, use_qk_l2norm_in_kernel=False)
        if state is not None:
            state["recurrent"] = final
        gate = gate.reshape(b, s, -1, self.value_head_dim)
        y = (self.out_norm(out) * self.act_fn(gate.float())).to(out.dtype)  # upstream's _apply_gated_norm
        return self.out_proj(y.reshape(b, s, -1).transpose(0, 1).contiguous())

    def causal_conv(self, x, state):
        """SiLU(depthwise causal conv) of [b, d, s]; a stream prepends the previous piece's last K-1 inputs."""
        if state is None and upstream.causal_conv1d_fn is not None and x.is_cuda and not self.config.deterministic_mode:
            return upstream.causal_conv1d_fn(x=x.contiguous(), weight=self.conv1d.weight.squeeze(1),
                                              bias=self.conv1d.bias, activation=self.activation)
        K = self.conv_kernel_dim
        past = None if state is None else state.get("conv")
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], K - 1)
        padded = torch.cat([past, x], dim=-1)
        if state is not None:
            state["conv"] = padded[..., padded.shape[-1] - (K - 1):]
        return self.act_fn(F.conv1d(padded, self.conv1d.weight, self.conv1d.bias, groups=x.shape[1]))
