"""Train a sentencepiece BPE tokenizer with the LLaMA-2 id layout on parquet / jsonl text.

    python data_prep/train_tokenizer.py --input SRC --vocab-size N --output MODEL [--max-docs M]

unk 0, bos 1, eos 2, no pad, byte fallback (any text encodes, no unknown bytes), digits split, no
normalisation (decode(encode(text)) == text). For users without the gated LLaMA-2 tokenizer, and for the
tests and the demo. Writes MODEL and MODEL's .vocab beside it, atomically.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402
import tempfile  # noqa: E402

from titans_data_prep.sources import SourceError, count_rows, list_files, read_texts  # noqa: E402

# The LLaMA-2 tokenizer's trainer settings that decide its ids and behaviour.
LLAMA2_LAYOUT = dict(model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
                     split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                     normalization_rule_name="identity", add_dummy_prefix=True, character_coverage=0.99995)


def lines(paths, text_column, max_docs):
    """Non-empty lines of every document (sentencepiece trains on sentences of bounded length)."""
    seen = 0
    for path in paths:
        n = count_rows(path, text_column)
        for _, text, _ in read_texts(path, text_column, 0, n, skip_bad=True):
            if max_docs is not None and seen >= max_docs:
                return
            seen += 1
            if text is not None:
                yield from (line for line in text.split("\n") if line.strip())


def train(input_src, vocab_size, output, text_column="text", max_docs=None, max_sentences=0, threads=0):
    import sentencepiece as spm

    paths = list_files(input_src)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    source_errors = []

    def sentences():  # sentencepiece reports an error of its iterator as its own: keep ours to re-raise
        try:
            yield from lines(paths, text_column, max_docs)
        except SourceError as e:
            source_errors.append(e)
            raise

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        prefix = os.path.join(tmp, "spm")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_prefix=prefix, vocab_size=vocab_size,
                input_sentence_size=max_sentences, shuffle_input_sentence=max_sentences > 0,
                num_threads=threads or os.cpu_count() or 1, minloglevel=2, **LLAMA2_LAYOUT)
        except RuntimeError as e:
            if source_errors:
                raise source_errors[0] from None
            raise SourceError(f"sentencepiece training failed for --vocab-size {vocab_size}: {e}") from e
        os.replace(prefix + ".vocab", os.path.splitext(output)[0] + ".vocab")
        os.replace(prefix + ".model", output)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="file, directory or glob of parquet / jsonl / jsonl.gz")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--output", required=True, help="the .model file to write")
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-docs", type=int, default=None, help="train on the first M rows only")
    p.add_argument("--max-sentences", type=int, default=0, help="sample this many lines (0: all)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    try:
        train(args.input, args.vocab_size, args.output, args.text_column, args.max_docs, args.max_sentences, args.threads)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
