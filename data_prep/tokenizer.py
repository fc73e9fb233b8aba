"""The sentencepiece model: loading with clear errors, its identity (sha256) and special ids."""

import os
from dataclasses import asdict, dataclass

import numpy as np

from titans_data_prep.manifest import file_sha256


class TokenizerError(Exception):
    pass


@dataclass(frozen=True)
class TokenizerInfo:
    sha256: str
    vocab_size: int
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int  # -1: none (the LLaMA-2 layout)

    def as_dict(self):
        return asdict(self)

    @property
    def dtype(self):
        """Token dtype of the shards: uint16 when every id fits."""
        return np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def load(path: str):
    """(SentencePieceProcessor, TokenizerInfo); a missing or invalid model file is a TokenizerError."""
    import sentencepiece as spm

    if not os.path.isfile(path):
        raise TokenizerError(f"tokenizer {path}: no such file (a sentencepiece .model; "
                             "data_prep/train_tokenizer.py makes one)")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(path)
    except Exception as e:
        raise TokenizerError(f"tokenizer {path}: not a valid sentencepiece model ({type(e).__name__}: {e})") from e
    info = TokenizerInfo(file_sha256(path), sp.GetPieceSize(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
    if info.bos_id < 0 or info.eos_id < 0:
        raise TokenizerError(f"tokenizer {path}: needs BOS and EOS ids (has bos {info.bos_id}, eos {info.eos_id}); "
                             "every document is stored as BOS + tokens + EOS")
    return sp, info
