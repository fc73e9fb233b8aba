"""``TitansConfig``: Megatron-core's ``TransformerConfig`` plus every knob of TITANS_SPEC sections 1-4
(``titans_core.config.TitansFields``, shared with the model built without Megatron).

Invalid combinations fail at construction with a message naming the field.
"""

from dataclasses import dataclass, fields

from megatron.core.transformer.transformer_config import TransformerConfig

from titans_kernels.memory_op import KNOWN_BACKENDS as MEMORY_BACKENDS
from titans_core.config import MAC_RETRIEVALS, TITANS_VARIANTS, VARIANTS, TitansFields
from titans_megatron.presets import preset_fields

__all__ = ["TitansConfig", "VARIANTS", "TITANS_VARIANTS", "MAC_RETRIEVALS"]


@dataclass
class TitansConfig(TransformerConfig, TitansFields):
    # TransformerConfig has fields of these names (a (left, right) window tuple, an enum of Megatron's
    # attention kernels); ours, with TitansFields' meaning, replace them.
    window_size: int = TitansFields.window_size
    attention_backend: str = TitansFields.attention_backend

    def __post_init__(self):
        self.check_titans_fields()
        super().__post_init__()
        if self.memory_backend not in MEMORY_BACKENDS:
            raise ValueError(f"memory_backend must be one of {list(MEMORY_BACKENDS)}, got {self.memory_backend!r}")
        if self.make_vocab_size_divisible_by % self.tensor_model_parallel_size:
            raise ValueError(f"make_vocab_size_divisible_by ({self.make_vocab_size_divisible_by}) must be a multiple "
                             f"of tensor_model_parallel_size ({self.tensor_model_parallel_size})")
        if self.variant == "gdn":
            self._check_gated_delta_net()
        self.check_titans_combinations()
        self._check_context_parallel()

    def _check_context_parallel(self):
        """Heads are split across tensor x context-parallel ranks (titans_megatron/context_parallel.py)."""
        cp, group = self.context_parallel_size, self.tensor_model_parallel_size * self.context_parallel_size
        if cp == 1:
            return
        heads = ("linear_num_key_heads", "linear_num_value_heads") if self.variant == "gdn" else ("num_attention_heads",)
        if self.seq_length % cp or (self.sequence_parallel and (self.seq_length // cp) % self.tensor_model_parallel_size):
            raise ValueError(f"seq_length ({self.seq_length}) must split into context_parallel_size ({cp}) equal parts"
                             + (f", each a multiple of tensor_model_parallel_size ({self.tensor_model_parallel_size})"
                                if self.sequence_parallel else ""))
        for name in heads:
            if getattr(self, name) % group:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of tensor_model_parallel_size x "
                                 f"context_parallel_size ({group}): each of those ranks runs whole heads")


    def _check_gated_delta_net(self):
        if self.gdn_dt_init is not None:
            lo_hi = tuple(self.gdn_dt_init)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"gdn_dt_init must be None or two numbers 0 < lo <= hi, got {self.gdn_dt_init!r}")
            self.gdn_dt_init = lo_hi
        lo_hi = tuple(self.gdn_A_init)
        if len(lo_hi) != 2 or not 0.0 <= lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"gdn_A_init must be two numbers 0 <= lo <= hi, got {self.gdn_A_init!r}")
        self.gdn_A_init = lo_hi
        for name in ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim",
                     "linear_num_key_heads", "linear_num_value_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"variant gdn: {name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError(f"linear_num_value_heads ({self.linear_num_value_heads}) must be a multiple of "
                             f"linear_num_key_heads ({self.linear_num_key_heads})")
        if self.linear_num_key_heads % self.tensor_model_parallel_size:
            raise ValueError(f"variant gdn: linear_num_key_heads ({self.linear_num_key_heads}) must be a multiple of "
                             f"tensor_model_parallel_size ({self.tensor_model_parallel_size}): heads are split across ranks")

    @classmethod
    def from_preset(cls, name: str, variant: str = "mag", **overrides) -> "TitansConfig":
        kwargs = {**preset_fields(name, variant), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown TitansConfig field(s): {unknown}")
        return cls(**kwargs)

