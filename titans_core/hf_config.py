"""``TitansHFConfig``: the Hugging Face config of our models (``model_type`` "titans").

Standard names where transformers has them (``hidden_size``, ``intermediate_size``,
``num_hidden_layers``, ``rms_norm_eps``, ...); every Titans knob under its own name, with the defaults and
checks of config.TitansFields (one definition for both models).
"""

import dataclasses

import torch
from transformers import PreTrainedConfig

from .config import CoreConfig, TitansFields

# Fields of TitansFields the Hugging Face config holds under their standard names instead.
_STANDARD = {"vocab_size": "vocab_size", "seq_length": "max_position_embeddings"}
HF_VARIANTS = ("lmm", "mac", "mag", "mal", "transformer++", "gdn")
GDN_WIDTHS = ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
              "linear_num_value_heads")


class TitansHFConfig(PreTrainedConfig):
    model_type = "titans"

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    rms_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    max_position_embeddings: int = 4096
    """The training context (``seq_length``): longer inputs run in pieces of this length, carrying
    the state between them, so any length works."""
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for field in dataclasses.fields(TitansFields):
            if field.name not in _STANDARD:
                default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
                value = kwargs.pop(field.name, getattr(self, field.name, default))
                setattr(self, field.name, list(value) if isinstance(value, tuple) else value)
        for name in GDN_WIDTHS:  # Gated DeltaNet's widths (TransformerConfig's names and defaults)
            setattr(self, name, kwargs.pop(name, getattr(self, name, CoreConfig.__dataclass_fields__[name].default)))
        if "seq_length" in kwargs:
            self.max_position_embeddings = kwargs.pop("seq_length")
        super().__post_init__(**kwargs)
        if self.variant not in HF_VARIANTS:
            raise ValueError(f"variant {self.variant!r} has no Hugging Face model (known: {list(HF_VARIANTS)})")
        self.core_config()  # the checks of TitansFields

    def core_config(self, dtype=None) -> CoreConfig:
        """The config the shared modules read (titans_core.config.CoreConfig)."""
        titans = {f.name: getattr(self, f.name) for f in dataclasses.fields(TitansFields) if f.name not in _STANDARD}
        titans["seq_length"] = self.max_position_embeddings
        return CoreConfig(**titans, vocab_size=self.vocab_size, num_layers=self.num_hidden_layers,
                          hidden_size=self.hidden_size, num_attention_heads=self.num_attention_heads,
                          ffn_hidden_size=self.intermediate_size, layernorm_epsilon=self.rms_norm_eps,
                          init_method_std=self.initializer_range, **{n: getattr(self, n) for n in GDN_WIDTHS},
                          params_dtype=dtype or torch.get_default_dtype())
