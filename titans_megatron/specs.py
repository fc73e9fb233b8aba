"""MAC, MAG, MAL, LMM, Transformer++ and Gated DeltaNet as Megatron-core specs: one ``TransformerLayer``
per block (pre-norm residuals, SwiGLU MLP, RMSNorm) whose ``self_attention`` is the variant's mixer."""

import functools

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add as megatron_bias_dropout_add
from megatron.core.ssm.gated_delta_net import GatedDeltaNetSubmodules
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from titans_core.mixers import MIXERS, SlidingWindowMixer
from titans_megatron.gated_delta_net import GatedDeltaNetMixer
from titans_megatron.norms import HeadSharedRMSNorm, RMSNorm
from titans_megatron.parallel import MixerSubmodules


def get_bias_dropout_add(training: bool, fused: bool):
    """Megatron's bias-dropout-add with megatron-core 0.16's dtype rule on every version: the residual
    takes the branch's dtype, so under bf16 autocast the residual stream is bf16. 0.19 upcasts the branch
    to the residual's dtype instead (an fp32 stream: other numerics and activation memory than the
    version the benchmarks were measured on); one rule keeps both versions' runs comparable."""
    inner = megatron_bias_dropout_add(training, fused)

    def bias_dropout_add(x_with_bias, residual, prob):
        return inner(x_with_bias, residual.to(x_with_bias[0].dtype), prob)

    return bias_dropout_add


def mlp_spec():
    """The SwiGLU MLP with Megatron's parallel linears. megatron-core >= 0.19 builds a layer's MLP through
    ``MLP.as_mlp_submodule`` (a plain ``ModuleSpec`` is rewrapped into it with a warning); 0.16 builds the spec."""
    submodules = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
    if hasattr(MLP, "as_mlp_submodule"):
        return functools.partial(MLP.as_mlp_submodule, submodules=submodules)
    return ModuleSpec(module=MLP, submodules=submodules)


# Megatron's own parallel linears; a spec for Transformer Engine's would name TE's classes here.
MIXER_LINEARS = MixerSubmodules(column_linear=ColumnParallelLinear, row_linear=RowParallelLinear)

# Megatron's GDN spec (get_gated_delta_net_module_spec) without Transformer Engine: the block's input
# norm stays a separate RMSNorm instead of being fused into in_proj.
GATED_DELTA_NET = ModuleSpec(module=GatedDeltaNetMixer, submodules=GatedDeltaNetSubmodules(
    in_proj=ColumnParallelLinear, out_norm=HeadSharedRMSNorm, out_proj=RowParallelLinear))


def mixer_spec(variant: str) -> ModuleSpec:
    if variant == "gdn":
        return GATED_DELTA_NET
    if variant not in MIXERS:
        raise ValueError(f"variant must be one of {sorted([*MIXERS, 'gdn'])}, got {variant!r}")
    return ModuleSpec(module=MIXERS[variant], submodules=MIXER_LINEARS)


def layer_spec(variant: str, mal_residual: bool = False) -> ModuleSpec:
    """One block. ``mal_residual``: MAL's memory and attention as two pre-norm residual sublayers, the
    memory in the self-attention slot and the sliding-window attention in the layer's second
    (cross-attention) slot, which Megatron's TransformerLayer runs with its own norm and residual."""
    second = {}
    if variant == "mal" and mal_residual:
        variant = "lmm"
        second = dict(pre_cross_attn_layernorm=RMSNorm, cross_attention=ModuleSpec(module=SlidingWindowMixer, submodules=MIXER_LINEARS),
                      cross_attn_bda=get_bias_dropout_add)
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=mixer_spec(variant),
            self_attn_bda=get_bias_dropout_add,
            **second,
            pre_mlp_layernorm=RMSNorm,
            mlp=mlp_spec(),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def block_spec(config) -> TransformerBlockSubmodules:
    """All layers plus our final RMSNorm (Megatron's default final norm refuses sequence parallelism)."""
    residual = config.mal_residual and config.has_memory
    return TransformerBlockSubmodules(layer_specs=[layer_spec(config.variant, residual)] * config.num_layers,
                                      layer_norm=RMSNorm)
