"""``TitansConfig``: Megatron-core's ``TransformerConfig`` plus every knob of TITANS_SPEC sections 1-4.

Invalid combinations fail at construction with a message naming the field.
"""

import math
from dataclasses import dataclass, fields
from typing import Optional, Tuple

from megatron.core.transformer.transformer_config import TransformerConfig

from kernels.memory_op import KNOWN_BACKENDS as MEMORY_BACKENDS
from titans_megatron.presets import preset_fields

VARIANTS = ("lmm", "mac", "mag", "mal", "transformer++", "gdn")
TITANS_VARIANTS = ("lmm", "mac", "mag", "mal")  # the others are baselines: no memory, no persistent tokens
MAC_RETRIEVALS = ("previous_segment", "own_query")


@dataclass
class TitansConfig(TransformerConfig):
    variant: str = "mag"
    """lmm (memory only), mac (memory as context), mag (as gate), mal (as layer), and the baselines
    transformer++ and gdn (Gated DeltaNet: Megatron-core's module; its widths are TransformerConfig's
    linear_* fields)."""

    seq_length: int = 4096
    """Training sequence length: window, segment and chunk sizes are checked against it."""
    vocab_size: int = 32000
    make_vocab_size_divisible_by: int = 128
    """Embedding rows are padded to a multiple of this (independent of the tensor-parallel size, so
    checkpoints reshard); the model returns logits for the real vocabulary only."""

    # The neural memory (section 1-2).
    memory_depth: int = 2
    """Layers of the memory MLP; the ablation 'linear memory' is depth 1 (or deep_memory=False)."""
    memory_expansion: int = 4
    """Hidden width of the memory MLP in multiples of the head dim."""
    memory_chunk_size: int = 16
    memory_lr_max: Optional[float] = None
    """theta = lr_max * sigmoid(.) (choice; the paper leaves it open). None: 1 / memory_chunk_size, the
    largest step the stability map bounds for every eta under the momentum average; on MQAR it learned
    recall where 0.02 (the default before 2026-12-01) did not (docs/model.md, "Where the defaults stand")."""
    memory_value_norm: bool = True
    memory_momentum_ema: bool = True
    """Stability (choices; docs/model.md): L2-normalise the memory's values per head like its keys,
    and hand the op theta * (1 - eta) so that momentum averages surprises instead of summing them.
    Without both, training diverged in every recall run; False restores the spec's literal formulas."""
    memory_forget_init: Tuple[float, float] = (1e-4, 2e-2)
    """The forget gate alpha at initialisation, log-spaced across heads from the first value to the
    second (choice, like Mamba's dt and Gated DeltaNet's A_log ranges): the first heads keep a token
    for ~1 / alpha = 10K positions, the last for ~50. One value for all heads: give both equal."""
    memory_lr_init: Tuple[float, float] = (0.5, 0.5)
    """theta / lr_max at initialisation, log-spaced across heads like memory_forget_init."""
    conv_kernel: int = 4
    """Depthwise causal conv on q, k, v of the memory."""
    memory_backend: str = "auto"
    """kernels.neural_memory backend: auto (Triton kernels on CUDA, else torch), triton, torch, sequential."""

    # Attention and the variants (section 3).
    window_size: int = 2048
    """Sliding window of MAG/MAL attention (the persistent prefix is always visible)."""
    num_persistent_tokens: int = 128
    segment_length: int = 512
    """MAC segment length C."""
    num_memory_tokens: int = 256
    """MAC memory tokens N_l retrieved per segment (mac_retrieval "previous_segment")."""
    mal_residual: bool = False
    """MAL as two pre-norm residual sublayers (memory, then sliding-window attention, each with its own
    norm, residual and persistent tokens) instead of one mixer (memory then attention) in one residual."""
    mac_retrieval: str = "previous_segment"
    """How MAC reads its memory for segment i (from the memory after segment i-1): "previous_segment",
    N_l tokens with the memory queries of the last N_l positions of segment i-1 (learned queries for
    segment 0); "own_query", the paper's h_t = M*_{i-1}(q_t): one token per position, with its own
    query, which attention lets only that position and later ones of the segment see."""
    rotary_base: float = 10000.0
    attention_backend: str = "auto"
    """sdpa, flex (flex_attention, compiled on CUDA) or auto (sdpa until flex is validated on a GPU)."""

    # Ablation switches (section 5): each removes its component.
    memory_momentum: bool = True
    memory_forgetting: bool = True
    memory_conv: bool = True
    persistent_memory: bool = True
    deep_memory: bool = True
    memory_enabled: bool = True
    """False removes the memory branch altogether (attention alone): the recall baseline."""

    # Gated DeltaNet (variant gdn).
    gdn_dt_init: Optional[Tuple[float, float]] = (1e-3, 1e-1)
    """dt_bias = softplus^-1(dt), dt log-uniform in this range per head (fla's GatedDeltaNet layer, the GDN
    paper, Mamba-2); None: Megatron's dt_bias = 1."""
    gdn_A_init: Tuple[float, float] = (0.0, 16.0)
    """A uniform in this range per head, A_log = log A (fla: (0, 16); Megatron: (1, 16)). A token's state
    decays by exp(-A softplus(alpha + dt_bias)) per step."""

    width_scaled_init: bool = False
    """init_method_std = sqrt(2 / (5 hidden_size)) ("small init", Nguyen & Salazar 2019) instead of the
    fixed init_method_std. Megatron's 0.02 suits widths near 2K; at the tiny presets' widths it makes
    even full attention learn recall slowly (docs/model.md, initialisation)."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.width_scaled_init:
            self.init_method_std = math.sqrt(2.0 / (5.0 * self.hidden_size))
        for name in ("memory_forget_init", "memory_lr_init"):
            lo_hi = tuple(getattr(self, name))
            if len(lo_hi) != 2 or not all(0.0 < x < 1.0 for x in lo_hi):
                raise ValueError(f"{name} must be two numbers in (0, 1), got {getattr(self, name)!r}")
            setattr(self, name, lo_hi)
        super().__post_init__()
        if self.memory_backend not in MEMORY_BACKENDS:
            raise ValueError(f"memory_backend must be one of {list(MEMORY_BACKENDS)}, got {self.memory_backend!r}")
        if self.mac_retrieval not in MAC_RETRIEVALS:
            raise ValueError(f"mac_retrieval must be one of {list(MAC_RETRIEVALS)}, got {self.mac_retrieval!r}")
        if self.attention_backend not in ("auto", "sdpa", "flex"):
            raise ValueError(f"attention_backend must be one of ['auto', 'sdpa', 'flex'], got {self.attention_backend!r}")
        if self.make_vocab_size_divisible_by % self.tensor_model_parallel_size:
            raise ValueError(f"make_vocab_size_divisible_by ({self.make_vocab_size_divisible_by}) must be a multiple "
                             f"of tensor_model_parallel_size ({self.tensor_model_parallel_size})")
        if self.variant == "gdn":
            self._check_gated_delta_net()
        if self.variant == "lmm" and not self.memory_enabled:
            raise ValueError("memory_enabled=False leaves variant 'lmm' (memory only) with no mixer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        for name in ("memory_depth", "memory_expansion", "memory_chunk_size", "conv_kernel", "seq_length", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.memory_lr_max is None:
            self.memory_lr_max = 1.0 / self.memory_chunk_size
        if self.memory_lr_max < 0:
            raise ValueError(f"memory_lr_max must be >= 0, got {self.memory_lr_max}")
        if self.num_persistent_tokens < 0 or self.num_memory_tokens < 0:
            raise ValueError("num_persistent_tokens and num_memory_tokens must be >= 0")
        if self.variant in ("mag", "mal") and not 1 <= self.window_size <= self.seq_length:
            raise ValueError(f"window_size ({self.window_size}) must be in [1, seq_length = {self.seq_length}]")
        if self.variant == "mac":
            if not 1 <= self.segment_length <= self.seq_length:
                raise ValueError(f"segment_length ({self.segment_length}) must be in [1, seq_length = {self.seq_length}]")
            if self.seq_length % self.segment_length:
                raise ValueError(f"seq_length ({self.seq_length}) must be a multiple of segment_length "
                                 f"({self.segment_length})")
            if self.num_memory_tokens > self.segment_length:
                raise ValueError(f"num_memory_tokens ({self.num_memory_tokens}) cannot exceed segment_length "
                                 f"({self.segment_length}): they are read from the previous segment")
            if self.segment_length % self.memory_chunk_size:
                raise ValueError(f"segment_length ({self.segment_length}) must be a multiple of memory_chunk_size "
                                 f"({self.memory_chunk_size}): each segment continues the memory at a chunk boundary")

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

    @property
    def padded_vocab_size(self) -> int:
        m = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def effective_memory_depth(self) -> int:
        return self.memory_depth if self.deep_memory else 1

    @property
    def effective_persistent_tokens(self) -> int:
        return self.num_persistent_tokens if self.persistent_memory and self.variant in TITANS_VARIANTS else 0

    @property
    def mac_memory_keys(self) -> float:
        """Memory tokens a MAC query attends to, on average over a segment."""
        if not self.has_memory:
            return 0.0
        return (self.segment_length + 1) / 2 if self.mac_retrieval == "own_query" else float(self.num_memory_tokens)

    @property
    def mac_retrievals_per_token(self) -> float:
        """Memory reads (and memory-token projections) per token of a MAC segment."""
        return 1.0 if self.mac_retrieval == "own_query" else self.num_memory_tokens / self.segment_length

    @property
    def has_memory(self) -> bool:
        return self.memory_enabled and self.variant in TITANS_VARIANTS

    @classmethod
    def from_preset(cls, name: str, variant: str = "mag", **overrides) -> "TitansConfig":
        kwargs = {**preset_fields(name, variant), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown TitansConfig field(s): {unknown}")
        return cls(**kwargs)

