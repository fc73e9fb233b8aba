"""Gated DeltaNet (Yang, Kautz, Hatamizadeh, ICLR 2025), the linear-recurrent baseline: Megatron-core's
``GatedDeltaNet`` module in the ``self_attention`` slot of our Llama-style block.

Upstream's module, parameters and checkpoint layout (``in_proj`` split into query/key/value/z/beta/
alpha, ``conv1d`` into query/key/value, heads split across tensor-parallel ranks) are kept; its forward
is titans_core.gated_delta_net's (shared with the Hugging Face model), which adds what upstream's lacks:

- a stream state: the recurrent state S [b, H_l, d_k, d_v] and the conv's last K-1 inputs carried
  between the pieces of ``TitansLM.stream`` (upstream starts every call from zero);
- a path that needs no GPU: Megatron's torch chunked delta rule and a torch L2 norm where CUDA is
  absent (fla's kernels, Triton, run on CUDA), and the gated output norm uncompiled (upstream wraps it
  in torch.compile, 20 s per shape on CPU);

and this subclass:
- weights drawn whole and sliced per rank, so a model holds the same weights at every
  tensor-parallel size (upstream draws the conv and gates per rank), with the gate initialisation of
  fla's layer (the GDN paper's) or Megatron's (``config.gdn_dt_init``, docs/model.md).
"""

import contextlib
import math

import torch
import torch.nn as nn
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.ssm import gated_delta_net as upstream

from titans_core.gated_delta_net import GatedDeltaNetForward, initial_dt_bias, torch_l2norm
from titans_megatron.parallel import MixerSubmodules, tp_rank


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


class GatedDeltaNetMixer(GatedDeltaNetForward, upstream.GatedDeltaNet):
    """Megatron-core's GatedDeltaNet, streamable and runnable on CPU (module docstring)."""

    def __init__(self, config, submodules, layer_number=None, pg_collection=None, **kwargs):
        pg_collection = pg_collection or ProcessGroupCollection.use_mpu_process_groups()
        rng = torch.get_rng_state()  # upstream draws per rank; the whole-tensor draws below replace them
        with _fla_optional(torch.cuda.is_available()):
            super().__init__(config, submodules, layer_number=layer_number, pg_collection=pg_collection,
                             A_init_range=tuple(config.gdn_A_init))
        torch.set_rng_state(rng)
        # Split over heads on dim 0, as megatron-core 0.19 marks them (0.16 leaves partition_dim unset)
        for p in (self.conv1d.weight, self.conv1d.bias, self.dt_bias, self.A_log):
            if p is not None and getattr(p, "tensor_model_parallel", False):
                p.partition_dim = 0
        self.parallel = MixerSubmodules()  # context parallelism's all-to-all and head slices
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

    def kernels(self, x):
        """fla's kernels on CUDA (unless deterministic mode asks for upstream's torch rule), else torch."""
        fla = x.is_cuda and not self.config.deterministic_mode
        if fla:
            return upstream.l2norm, upstream.chunk_gated_delta_rule, upstream.causal_conv1d_fn
        return torch_l2norm, upstream.torch_chunk_gated_delta_rule, None
