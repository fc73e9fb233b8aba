"""``TitansFields``: every knob of TITANS_SPEC sections 1-4, with their checks; ``CoreConfig``: them plus
the transformer's widths, the config of a model built without Megatron (the Hugging Face model).

titans_megatron.TitansConfig is Megatron-core's ``TransformerConfig`` plus these same fields, so both
models read one definition. Invalid combinations fail at construction with a message naming the field.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

VARIANTS = ("lmm", "mac", "mag", "mal", "transformer++", "gdn")
TITANS_VARIANTS = ("lmm", "mac", "mag", "mal")  # the others are baselines: no memory, no persistent tokens
MAC_RETRIEVALS = ("previous_segment", "own_query")
ATTENTION_BACKENDS = ("auto", "sdpa", "flex")


@dataclass
class TitansFields:
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
    memory_step_budget: Optional[float] = None
    """None: the op takes theta as the gates give it. A number: the most step each token's key may take
    within its chunk (titans_kernels/memory_op/step_budget.py; 0.5 is the exact write of the squared
    loss), so that lr_max can be large for distinct keys while a key repeated through a chunk stays
    bounded (docs/model.md, "The step budget")."""
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
    """titans_kernels.neural_memory backend: auto (Triton kernels on CUDA, else torch), triton, torch, sequential."""

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

    def check_titans_fields(self):
        """Validate and normalise the fields above (``hidden_size``, ``num_attention_heads`` and
        ``init_method_std`` come from the subclass)."""
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        if self.width_scaled_init:
            self.init_method_std = math.sqrt(2.0 / (5.0 * self.hidden_size))
        for name in ("memory_forget_init", "memory_lr_init"):
            lo_hi = tuple(getattr(self, name))
            if len(lo_hi) != 2 or not all(0.0 < x < 1.0 for x in lo_hi):
                raise ValueError(f"{name} must be two numbers in (0, 1), got {getattr(self, name)!r}")
            setattr(self, name, lo_hi)

    def check_titans_combinations(self):
        """Checks that read the transformer's widths (after the subclass has set them up)."""
        if self.mac_retrieval not in MAC_RETRIEVALS:
            raise ValueError(f"mac_retrieval must be one of {list(MAC_RETRIEVALS)}, got {self.mac_retrieval!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {self.attention_backend!r}")
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
        if self.memory_step_budget is not None and not self.memory_step_budget > 0:
            raise ValueError(f"memory_step_budget must be None or > 0, got {self.memory_step_budget}")
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



@dataclass
class CoreConfig(TitansFields):
    """TitansFields plus the transformer's widths, named as Megatron-core's TransformerConfig names them
    (the mixers read these names), for a model built without Megatron."""

    num_layers: int = 12
    hidden_size: int = 768
    num_attention_heads: int = 12
    ffn_hidden_size: Optional[int] = None
    """SwiGLU width; None: 4 x hidden_size."""
    layernorm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    params_dtype: torch.dtype = torch.float32
    perform_initialization: bool = True
    sequence_parallel: bool = False
    init_method: Optional[Callable] = None
    output_layer_init_method: Optional[Callable] = None
    # Gated DeltaNet's widths (variant gdn), TransformerConfig's names and defaults.
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32

    def __post_init__(self):
        self.check_titans_fields()
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        # Megatron's defaults: N(0, std), the output projections scaled by 1 / sqrt(2 num_layers).
        std, out_std = self.init_method_std, self.init_method_std / math.sqrt(2.0 * self.num_layers)
        self.init_method = self.init_method or (lambda t: torch.nn.init.normal_(t, 0.0, std))
        self.output_layer_init_method = self.output_layer_init_method or (lambda t: torch.nn.init.normal_(t, 0.0, out_std))
        self.check_titans_combinations()
