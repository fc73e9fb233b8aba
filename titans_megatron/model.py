"""``build_model``: a Megatron-core ``GPTModel`` with the Titans layer specs, callable as
``model(input_ids) -> logits [B, T, vocab]`` in any process (one CPU process included)."""

import torch
import torch.nn as nn
from megatron.core.models.gpt.gpt_model import GPTModel

from titans_megatron.config import TitansConfig
from titans_core.stream_state import StreamState
from titans_megatron.parallel import ensure_model_parallel
from titans_megatron.specs import block_spec


class TitansLM(nn.Module):
    """The language model. ``forward(input_ids [B, T]) -> logits [B, T, vocab]``, gathered over
    tensor-parallel ranks unless ``parallel_output``; ``forward(input_ids, labels [B, T])`` -> fp32
    next-token losses [B, T] by Megatron's vocab-parallel cross-entropy (what training uses: no
    rank gathers the [B, T, vocab] logits)."""

    def __init__(self, config: TitansConfig, parallel_output: bool = False):
        super().__init__()
        self.config = config
        self.gpt = GPTModel(config=config, transformer_layer_spec=block_spec(config), vocab_size=config.padded_vocab_size,
                            max_sequence_length=config.seq_length, position_embedding_type="none",
                            parallel_output=parallel_output, share_embeddings_and_output_weights=False)

    def forward(self, input_ids: torch.Tensor, labels=None):
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be an integer tensor [B, T], got {input_ids.dtype} {list(input_ids.shape)}")
        if labels is not None:
            return self._token_losses(input_ids, labels)
        out = self.gpt(input_ids, position_ids=None, attention_mask=None)
        if not self.gpt.parallel_output:
            out = out[..., : self.config.vocab_size]
        return out

    def _token_losses(self, input_ids, labels):
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        if labels.shape != input_ids.shape:
            raise ValueError(f"labels must have the shape of input_ids {list(input_ids.shape)}, got {list(labels.shape)}")
        logits = self.gpt(input_ids, position_ids=None, attention_mask=None, runtime_gather_output=False).float()
        # This rank's vocabulary slice; the padding columns (past vocab_size) take no probability, as
        # in the gathered logits, which are cut at vocab_size.
        width = logits.shape[-1]
        first = parallel_state.get_tensor_model_parallel_rank() * width
        padding = torch.arange(first, first + width, device=logits.device) >= self.config.vocab_size
        if padding.any():
            logits = logits.masked_fill(padding, float("-inf"))
        return vocab_parallel_cross_entropy(logits, labels)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """Megatron-core's checkpoint metadata, keyed like ``state_dict()``."""
        return self.gpt.sharded_state_dict(prefix=prefix + "gpt.", sharded_offsets=sharded_offsets, metadata=metadata)

    def mixers(self):
        """Every token mixer, in order (MAL with residual sublayers has two per layer)."""
        return [m for layer in self.gpt.decoder.layers for m in (layer.self_attention, layer.cross_attention)
                if isinstance(m, StreamState)]

    @torch.no_grad()
    def stream(self, input_ids: torch.Tensor, state=None):
        """Logits of the next piece of a long sequence, carrying every layer's state between calls:
        ``logits, state = model.stream(piece, state)``, starting with ``state=None``.

        The pieces, concatenated, give the logits of one forward over the whole sequence (any piece
        lengths), while the state stays the same size whatever the context length (memory weights
        and momenta, conv inputs, the sliding window's keys and values, Gated DeltaNet's recurrent
        state; Transformer++ keeps all its keys and values, as full attention must).
        """
        if self.config.sequence_parallel or self.config.context_parallel_size > 1:
            raise ValueError("streaming runs without sequence or context parallelism")
        state = {} if state is None else state
        mixers = self.mixers()
        for i, mixer in enumerate(mixers):
            mixer.stream_state = state.setdefault(i, {})
        try:
            logits = self(input_ids)
        finally:
            for mixer in mixers:
                mixer.stream_state = None
        return logits, state


def build_model(config: TitansConfig, parallel_output: bool = False, seed: int = 0) -> TitansLM:
    """Build the model for ``config``; sets up a one-rank gloo group and Megatron's parallel state if
    the process has none. Every rank draws the same full weights from ``seed``, so models built at
    different tensor-parallel sizes hold the same weights."""
    ensure_model_parallel(config.tensor_model_parallel_size, config.context_parallel_size)
    torch.manual_seed(seed)
    return TitansLM(config, parallel_output=parallel_output)
