"""Check a shard set against its manifest; exit status 1 on any mismatch, naming each.

    python data_prep/verify.py DIR

Checks: every listed shard exists with its sha256 and sample count; every sample reads (tokens.npy of
shape [window] and the manifest's dtype, json with doc_starts / docs / valid); every token id is inside
the vocabulary; keys are unique; split totals match the shards; no unlisted shard lies in a split folder.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402

from titans_data_prep.manifest import Manifest, ManifestError, file_sha256  # noqa: E402
from titans_data_prep.shards import read_shard  # noqa: E402


def check_shard(path, record, manifest):
    problems, window = [], manifest.window
    vocab, dtype = manifest.tokenizer.vocab_size, manifest.dtype
    if file_sha256(path) != record.sha256:
        problems.append(f"{path}: sha256 differs from the manifest")
    samples = tokens = 0
    keys = []
    try:
        for key, arr, meta in read_shard(path):
            samples += 1
            keys.append(key)
            if arr.shape != (window,) or arr.dtype.name != dtype:
                problems.append(f"{path}: sample {key}: tokens {arr.dtype.name}{list(arr.shape)}, expected {dtype}[{window}]")
                continue
            if int(arr.max()) >= vocab:
                problems.append(f"{path}: sample {key}: token id {int(arr.max())} outside the vocabulary ({vocab})")
            valid = meta.get("valid")
            if not isinstance(valid, int) or not 1 <= valid <= window or not {"doc_starts", "docs"} <= set(meta):
                problems.append(f"{path}: sample {key}: metadata {sorted(meta)} / valid {valid!r} malformed")
                continue
            tokens += valid
    except Exception as e:  # a truncated or corrupt tar
        problems.append(f"{path}: unreadable after {samples} samples ({type(e).__name__}: {e})")
    if samples != record.samples or tokens != record.tokens:
        problems.append(f"{path}: {samples} samples / {tokens} tokens, manifest says {record.samples} / {record.tokens}")
    return problems, keys


def verify(directory):
    try:
        manifest = Manifest.read(directory)
    except ManifestError as e:
        return [str(e)]
    problems, keys = [], set()
    for split, info in manifest.splits.items():
        listed = {s.name for s in info.shards}
        folder = os.path.join(directory, split)
        present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        problems += [f"{os.path.join(folder, n)}: not in the manifest" for n in sorted(present - listed)]
        for record in info.shards:
            path = os.path.join(folder, record.name)
            if not os.path.isfile(path):
                problems.append(f"{path}: missing")
                continue
            found, shard_keys = check_shard(path, record, manifest)
            problems += found
            problems += [f"{path}: duplicate key {k}" for k in shard_keys if k in keys]
            keys.update(shard_keys)
        if sum(s.samples for s in info.shards) != info.samples or sum(s.tokens for s in info.shards) != info.tokens:
            problems.append(f"{split}: split totals differ from the sum over its shards")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory")
    args = p.parse_args(argv)
    problems = verify(args.directory)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{args.directory}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.directory}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
