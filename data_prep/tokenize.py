"""Tokenize FineWeb-Edu (parquet / jsonl / jsonl.gz, local or from the hub) into packed webdataset shards.

    python data_prep/tokenize.py --input SRC --tokenizer MODEL --output DIR [--seq-len 4096]
        [--seqs-per-shard 1024] [--workers N] [--threads T] [--text-column text] [--max-docs M]
        [--val-docs N] [--skip-bad-files] [--hf-config sample-100BT]

Every document becomes BOS + tokens + EOS; documents are concatenated and cut into windows of
seq_len + 1 tokens (see docs/data.md for the shard format, the manifest, the tail and resuming).
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402

from titans_data_prep.manifest import ArgumentMismatch  # noqa: E402
from titans_data_prep.sources import SourceError  # noqa: E402
from titans_data_prep.tokenizer import TokenizerError  # noqa: E402


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="file, directory, glob, or hub dataset id (owner/name)")
    p.add_argument("--tokenizer", required=True, help="sentencepiece .model")
    p.add_argument("--output", required=True, help="output directory (created; resumed if interrupted)")
    p.add_argument("--seq-len", type=positive, default=4096)
    p.add_argument("--seqs-per-shard", type=positive, default=1024)
    p.add_argument("--workers", type=positive, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--threads", type=non_negative, default=0, help="encode threads per worker (0: cores / workers)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-docs", type=positive, default=None, help="read only the first M rows of the input")
    p.add_argument("--val-docs", type=non_negative, default=0, help="hold out the first N rows as the val split")
    p.add_argument("--docs-per-part", type=positive, default=20000, help="rows per unit of work and of resumption")
    p.add_argument("--batch-chars", type=positive, default=4_000_000, help="characters per encode call")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="record unreadable files, row groups and malformed lines in the manifest instead of stopping")
    p.add_argument("--hf-config", default=None, help="hub dataset config, e.g. sample-100BT")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from titans_data_prep.pipeline import run

    try:
        run(args)
    except (SourceError, TokenizerError, ArgumentMismatch) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
