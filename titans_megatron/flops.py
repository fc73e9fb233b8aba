"""Model FLOPs of one training token (forward + backward), for MFU: what the model must compute, not
what an implementation does (no recomputation, no padding).

    6 x (matrices applied to every token: all 2-D weights but the input embedding table, which is a
         lookup, and the depthwise conv; MAC's memory-token projection counts its reads per token)
  + attention: 12 x hidden x (mean keys a query attends to), per attention layer (QK^T and AV, fwd+bwd)
  + Gated DeltaNet: 3 x 6 x d_k x d_v per value head (the recurrent form's read S^T k, rank-one write
    and readout S^T q; the chunked kernels compute the same state), per layer
  + memory: 3 x the memory op's forward model (titans_kernels/memory_op/flops.py) x heads, per memory layer,
    and for MAC the retrieval of its memory tokens (N_l per segment, or one per token for own-query
    retrieval; 3 x 2 x the MLP's weights per token read)

Mean keys per query: Transformer++ (T + 1) / 2; MAG / MAL a causal window w plus the persistent prefix;
MAC a causal segment C plus the persistent and memory tokens (N_l, or for own-query retrieval a causal
block of C); LMM and Gated DeltaNet none.

The memory forward is exactly the torch backend's matmuls (tests/titans_megatron/test_flops.py checks
both terms against torch's FLOP counter); Transformer++'s count (6N + causal attention) is the standard
one its MFU target refers to.
"""

from titans_kernels.memory_op.flops import memory_forward_flops
from titans_megatron.config import TitansConfig


def mean_attended_keys(config: TitansConfig) -> float:
    T, P = config.seq_length, config.effective_persistent_tokens
    if config.variant in ("lmm", "gdn"):
        return 0.0
    if config.variant == "transformer++":
        return (T + 1) / 2
    if config.variant in ("mag", "mal"):
        w = min(config.window_size, T)
        return (w * (w + 1) / 2 + (T - w) * w) / T + P
    C = config.segment_length
    return (C + 1) / 2 + P + config.mac_memory_keys


def training_flops_per_token(config: TitansConfig, matmul_parameters: int) -> float:
    layers, hidden = config.num_layers, config.hidden_size
    flops = 6.0 * matmul_parameters + layers * 12.0 * hidden * mean_attended_keys(config)
    if config.variant == "gdn":
        flops += layers * 3.0 * 6.0 * config.linear_key_head_dim * config.linear_value_head_dim * config.linear_num_value_heads
    if config.has_memory:
        d, depth, E = config.head_dim, config.effective_memory_depth, config.memory_expansion
        per_head = memory_forward_flops(d, depth, E, config.memory_chunk_size)
        if config.variant == "mac":
            weights = d * d if depth == 1 else 2 * E * d * d + (depth - 2) * E * E * d * d
            per_head += 2 * weights * config.mac_retrievals_per_token
        flops += layers * 3.0 * per_head * config.num_attention_heads
    return flops


NOT_MATMUL_WEIGHTS = ("word_embeddings", "conv_weight", "bias")


def matmul_parameters(model) -> float:
    """Weights of the whole model applied to every token (tensor-parallel shards counted at their full
    size): 2-D parameters but the embedding table, the depthwise conv and biases."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    config = model.config
    total = 0.0
    for name, p in model.named_parameters():
        if p.dim() != 2 or any(part in name for part in NOT_MATMUL_WEIGHTS):
            continue
        size = p.numel() * (tp if getattr(p, "tensor_model_parallel", False) else 1)
        if "memory_token_proj" in name:  # applied to the memory tokens of each segment of C
            size *= config.mac_retrievals_per_token
        total += size
    return total
