"""Between a training checkpoint's model (Megatron-core names, tensor-parallel size 1) and the Hugging
Face model: the config and the state dict, both ways.

Megatron names -> ours: ``gpt.embedding.word_embeddings`` -> ``model.embed_tokens``;
``gpt.decoder.layers.i.{input_layernorm, self_attention, pre_cross_attn_layernorm, cross_attention,
pre_mlp_layernorm}`` -> ``model.layers.i.{input_layernorm, mixer, attention_layernorm, attention_mixer,
post_attention_layernorm}``; ``mlp.linear_fc1`` ([gate; up]) -> ``mlp.gate_proj`` and ``mlp.up_proj``;
``mlp.linear_fc2`` -> ``mlp.down_proj``; ``gpt.decoder.final_layernorm`` -> ``model.norm``;
``gpt.output_layer`` -> ``lm_head``. The embedding and output rows past the vocabulary (Megatron pads
them to a multiple of make_vocab_size_divisible_by; they never receive probability) are dropped, and
come back as zeros.
"""

import dataclasses
import re

import torch
import torch.nn.functional as F

from titans_core.config import TitansFields
from titans_core.hf_config import GDN_WIDTHS, HF_VARIANTS, TitansHFConfig

_LAYER = {"input_layernorm": "input_layernorm", "self_attention": "mixer",
          "pre_cross_attn_layernorm": "attention_layernorm", "cross_attention": "attention_mixer",
          "pre_mlp_layernorm": "post_attention_layernorm", "mlp.linear_fc2": "mlp.down_proj"}
_WHOLE = {"gpt.embedding.word_embeddings.weight": "model.embed_tokens.weight",
          "gpt.decoder.final_layernorm.weight": "model.norm.weight", "gpt.output_layer.weight": "lm_head.weight"}
_VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


def hf_config(config, **token_ids) -> TitansHFConfig:
    """The Hugging Face config of a training config (titans_megatron.TitansConfig)."""
    if config.variant not in HF_VARIANTS:
        raise ValueError(f"variant {config.variant!r} has no Hugging Face model yet (exportable: {list(HF_VARIANTS)})")
    if not config.gated_linear_unit or config.add_bias_linear or config.activation_func is not F.silu:
        raise ValueError("the Hugging Face model has SwiGLU MLPs (SiLU, no biases), as every preset does")
    titans = {f.name: getattr(config, f.name) for f in dataclasses.fields(TitansFields)}
    titans["memory_backend"], titans["attention_backend"] = "auto", "auto"  # the loading machine's best
    return TitansHFConfig(**titans, hidden_size=config.hidden_size, intermediate_size=config.ffn_hidden_size,
                          num_hidden_layers=config.num_layers, num_attention_heads=config.num_attention_heads,
                          rms_norm_eps=config.layernorm_epsilon, initializer_range=config.init_method_std,
                          architectures=["TitansForCausalLM"], **{n: getattr(config, n) for n in GDN_WIDTHS},
                          **token_ids)


def hf_state_dict(state: dict, config) -> dict:
    """Megatron names -> Hugging Face names (``state``: TitansLM.state_dict() at tensor-parallel size 1)."""
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or name.endswith("_extra_state"):
            continue
        if name in _WHOLE:
            out[_WHOLE[name]] = tensor
            continue
        m = re.fullmatch(r"gpt\.decoder\.layers\.(\d+)\.(.+)", name)
        if m is None:
            raise KeyError(f"{name}: not a parameter of the Titans model")
        layer, rest = m.groups()
        if rest == "mlp.linear_fc1.weight":
            gate, up = tensor.chunk(2, dim=0)
            out[f"model.layers.{layer}.mlp.gate_proj.weight"] = gate
            out[f"model.layers.{layer}.mlp.up_proj.weight"] = up
            continue
        for old, new in _LAYER.items():
            if rest.startswith(old + "."):
                out[f"model.layers.{layer}.{new}{rest[len(old):]}"] = tensor
                break
        else:
            raise KeyError(f"{name}: not a parameter of the Titans model")
    for name in _VOCAB_ROWS:
        out[name] = out[name][:config.vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


def megatron_state_dict(state: dict, config) -> dict:
    """Hugging Face names -> Megatron names, the vocabulary rows padded with zeros to
    ``config.padded_vocab_size`` (``config``: the titans_megatron.TitansConfig to load into)."""
    back_whole = {v: k for k, v in _WHOLE.items()}
    back_layer = {v: k for k, v in _LAYER.items()}
    out, halves = {}, {}
    for name, tensor in state.items():
        if name in back_whole:
            if name in _VOCAB_ROWS:
                pad = tensor.new_zeros(config.padded_vocab_size - tensor.shape[0], tensor.shape[1])
                tensor = torch.cat([tensor, pad])
            out[back_whole[name]] = tensor
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if m is None:
            raise KeyError(f"{name}: not a parameter of the Titans Hugging Face model")
        layer, rest = m.groups()
        if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
            halves.setdefault(layer, {})[rest.split(".")[1]] = tensor
            continue
        for new, old in back_layer.items():
            if rest.startswith(new + "."):
                out[f"gpt.decoder.layers.{layer}.{old}{rest[len(new):]}"] = tensor
                break
        else:
            raise KeyError(f"{name}: not a parameter of the Titans Hugging Face model")
    for layer, parts in halves.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise KeyError(f"model.layers.{layer}.mlp: gate_proj and up_proj must both be present")
        out[f"gpt.decoder.layers.{layer}.mlp.linear_fc1.weight"] = torch.cat([parts["gate_proj"], parts["up_proj"]])
    return out
