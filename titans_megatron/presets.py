"""Model presets: sizes of the paper's scaling study (TITANS_SPEC section 4) and a CPU-sized tiny.

Widths follow the Gated DeltaNet / flash-linear-attention conventions with d_h = 64; a Titans block
holds more than an attention block (memory projections beside the attention), so each variant has its
own block count, chosen to keep the total within 10% of the nominal size (README lists the counts).

Gated DeltaNet (gdn) takes fla's GatedDeltaNet layer widths: keys 0.75 x hidden, values twice the keys
(expand_v 2), one value head per key head, key heads of 256 (192 where 0.75 x hidden is no multiple
of 256), a conv of 4.
"""

import torch.nn.functional as F

# Defaults every preset shares (Llama-style blocks, as the paper's baselines).
COMMON_FIELDS = dict(
    normalization="RMSNorm",
    gated_linear_unit=True,
    activation_func=F.silu,
    add_bias_linear=False,
    layernorm_epsilon=1e-5,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    use_cpu_initialization=True,
)

# size: (hidden, heads, ffn_hidden, {variant: layers}, extra fields)
SIZES = {
    "tiny": (128, 4, 352, {"transformer++": 2, "lmm": 2, "mag": 2, "mal": 2, "mac": 2, "gdn": 2},
             dict(seq_length=256, window_size=64, segment_length=64, num_memory_tokens=16, num_persistent_tokens=8,
                  width_scaled_init=True)),
    "170m": (768, 12, 2048, {"transformer++": 16, "lmm": 15, "mag": 13, "mal": 12, "mac": 11, "gdn": 15}, {}),
    "340m": (1024, 16, 2816, {"transformer++": 22, "lmm": 20, "mag": 16, "mal": 15, "mac": 14, "gdn": 18}, {}),
    "400m": (1024, 16, 2816, {"transformer++": 26, "lmm": 24, "mag": 19, "mal": 18, "mac": 17, "gdn": 22}, {}),
    "760m": (1536, 24, 4096, {"transformer++": 24, "lmm": 22, "mag": 18, "mal": 16, "mac": 16, "gdn": 20}, {}),
    "1.3b": (2048, 32, 5632, {"transformer++": 24, "lmm": 22, "mag": 17, "mal": 16, "mac": 15, "gdn": 20}, {}),
}
# size: (key head dim, heads) of gdn
GDN_HEADS = {"tiny": (48, 2), "170m": (192, 3), "340m": (256, 3), "400m": (256, 3), "760m": (192, 6), "1.3b": (256, 6)}
NOMINAL = {"170m": 170e6, "340m": 340e6, "400m": 400e6, "760m": 760e6, "1.3b": 1.3e9}


def preset_fields(name: str, variant: str) -> dict:
    if name not in SIZES:
        raise ValueError(f"unknown preset {name!r}; presets: {list(SIZES)}")
    hidden, heads, ffn, layers, extra = SIZES[name]
    if variant not in layers:
        raise ValueError(f"unknown variant {variant!r}; variants: {list(layers)}")
    fields = dict(COMMON_FIELDS, variant=variant, hidden_size=hidden, num_attention_heads=heads,
                  ffn_hidden_size=ffn, num_layers=layers[variant], **extra)
    if variant == "gdn":
        key_dim, gdn_heads = GDN_HEADS[name]
        fields.update(linear_key_head_dim=key_dim, linear_value_head_dim=2 * key_dim, linear_num_key_heads=gdn_heads,
                      linear_num_value_heads=gdn_heads, linear_conv_kernel_dim=4)
    return fields
