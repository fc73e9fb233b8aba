"""The training tokenizer (a LLaMA-2-layout sentencepiece BPE model) as a transformers fast tokenizer
that gives the same ids.

Why not transformers' LlamaTokenizer: on 5.x it splits leading whitespace differently from sentencepiece
and parses a literal "<s>" in text as BOS. Here: sentencepiece's own pieces and merge order (by score),
its normalisation (a "▁" before the text, spaces as "▁", nothing else: the model was trained with the
identity rule), byte fallback, BOS before the text when special tokens are asked for (LLaMA-2), and
special-token text split like any other text. ``mismatches`` checks it against sentencepiece; the
exporter refuses a tokenizer that disagrees.
"""

from typing import List, Sequence

SPACE = "\u2581"


def hf_tokenizer(sp_model: str):
    """A ``PreTrainedTokenizerFast`` equal to the sentencepiece model at ``sp_model``."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    scores = {piece: sp.GetScore(i) for i, piece in enumerate(pieces)}
    unk, bos, eos = (sp.IdToPiece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=generate_merges(vocab, scores), unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1, right=0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (unk, bos, eos)])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, sp.bos_id())])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   split_special_tokens=True, clean_up_tokenization_spaces=False,
                                   model_max_length=int(1e30))


def mismatches(tokenizer, sp_model: str, texts: Sequence[str]) -> List[str]:
    """Texts whose ids (no special tokens) or decoded text differ between ``tokenizer`` and sentencepiece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    bad = []
    for text in texts:
        ids = sp.EncodeAsIds(text)
        if tokenizer(text, add_special_tokens=False)["input_ids"] != ids or tokenizer.decode(ids) != sp.DecodeIds(ids):
            bad.append(text)
    return bad
