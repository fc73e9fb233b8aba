"""``TitansCache``: what generation carries from token to token, a transformers ``Cache``.

It is exactly the state of ``TitansLM.stream``: for each mixer (in layer order; MAL with residual
sublayers has two per layer) a dict holding the memory weights and momenta at the last chunk boundary
with the inputs of the chunk under way, the conv's last inputs, the sliding window's keys and values,
and MAC's segment state (position, memory tokens, the segment's keys and values). Everything but
Transformer++'s keys and values stays the same size however many tokens were read.
"""

import torch
from transformers.cache_utils import Cache


class TitansCache(Cache):
    is_compileable = False

    def __init__(self):
        super().__init__(layers=[])
        self.state = {}
        self.seen_tokens = 0

    def slot(self, index: int) -> dict:
        """Mixer ``index``'s state (empty before its first token)."""
        return self.state.setdefault(index, {})

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_length(self, layer_idx=None) -> int:
        return -1  # no limit: the state does not grow with the context (Transformer++ aside)

    def numel(self) -> int:
        """Elements held, over every tensor of the state."""
        def count(x):
            if isinstance(x, torch.Tensor):
                return x.numel()
            if isinstance(x, dict):
                return sum(count(v) for v in x.values())
            if isinstance(x, (tuple, list)):
                return sum(count(v) for v in x)
            return 0
        return count(self.state)

    def _refuse(self, *args, **kwargs):
        raise NotImplementedError("a Titans state cannot be cropped, reordered or re-batched: the memory "
                                  "has been written by every token read (beam search and assisted "
                                  "generation are not supported; sample or decode greedily)")

    crop = reorder_cache = batch_repeat_interleave = batch_select_indices = _refuse

    def reset(self):
        self.state, self.seen_tokens = {}, 0

    def __repr__(self):
        return f"TitansCache(mixers={len(self.state)}, seen_tokens={self.seen_tokens})"
