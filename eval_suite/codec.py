"""Text <-> ids with the checkpoint's sentencepiece model."""

from typing import List, Sequence


class Codec:
    """Text <-> ids with a sentencepiece model: what prompt layouts need, so that they can be checked
    with the tokenizer alone before any model is built (EvalModel is one too)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos_id, self.eos_id = tokenizer.bos_id(), tokenizer.eos_id()

    def encode(self, text: str) -> List[int]:
        return self.tokenizer.EncodeAsIds(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.DecodeIds(list(ids))
