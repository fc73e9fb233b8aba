"""MAC, MAG, MAL, LMM and Transformer++ as Megatron-core specs: one ``TransformerLayer`` per block
(pre-norm residuals, SwiGLU MLP, RMSNorm) whose ``self_attention`` is the variant's mixer."""

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from titans_megatron.mixers import MIXERS
from titans_megatron.norms import RMSNorm


def layer_spec(variant: str) -> ModuleSpec:
    if variant not in MIXERS:
        raise ValueError(f"variant must be one of {sorted(MIXERS)}, got {variant!r}")
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(module=MIXERS[variant]),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                              linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def block_spec(config) -> TransformerBlockSubmodules:
    """All layers plus our final RMSNorm (Megatron's default final norm refuses sequence parallelism)."""
    return TransformerBlockSubmodules(layer_specs=[layer_spec(config.variant)] * config.num_layers,
                                      layer_norm=RMSNorm)
