"""data_prep/tokenize.py end to end against raw sentencepiece encoding, on the same texts and cores.

Input: a parquet file of at least ``input_bytes`` of text, made from the shipped corpus with each
document's paragraphs shuffled (so no two documents repeat). Tokenizer: BPE trained on the corpus
with the LLaMA-2 layout (``tokenizer_vocab_size``).

Rows, in one run on this machine:
  raw encode   SentencePieceProcessor.encode(batch, num_threads=cores) over the texts, already in
               memory (reading them is not timed), in batches of ``batch_chars`` characters
  pipeline     python data_prep/tokenize.py with --workers cores: reading parquet, encoding, packing,
               writing shards, the manifest; wall time of the whole command

Target: pipeline tokens/s >= 0.8x raw encode. Peak memory of the pipeline: the largest sum of the
resident set sizes of its process tree (main and workers), sampled every ``memory_sample_seconds``.

    python bench/tokenize.py --config configs/bench/tokenize.json --output bench/results/tokenize_cpu
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse
import datetime
import gzip
import json
import platform
import random
import shutil
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from bench.outputs import cpu_description, package_version, write_report  # noqa: E402
from titans_data_prep.manifest import Manifest  # noqa: E402
CORPUS = os.path.join(ROOT, "data_prep", "corpus", "python_docs.jsonl.gz")


def make_input(path, cfg, log):
    """A parquet file of >= input_bytes of text; returns (rows, characters)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(cfg["seed"])
    with gzip.open(CORPUS, "rt") as f:
        paragraphs = [d["text"].split("\n\n") for d in map(json.loads, f)]
    rows, chars, start = 0, 0, time.time()
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        while chars < cfg["input_bytes"]:
            texts = []
            for _ in range(cfg["docs_per_row_group"]):
                doc = list(rng.choice(paragraphs))
                rng.shuffle(doc)
                texts.append("\n\n".join(doc))
            writer.write_table(pa.table({"id": list(range(rows, rows + len(texts))), "text": texts}, schema=schema))
            rows += len(texts)
            chars += sum(len(t) for t in texts)
            done = chars / cfg["input_bytes"]
            log(f"input: {chars / 1e6:,.0f} MB ({done:.0%}, ETA {(time.time() - start) / done * (1 - done):.0f}s)")
    return rows, chars


def raw_encode(model, parquet, cfg, threads):
    """Tokens and seconds of the threaded batch encode over every text (texts loaded first)."""
    import pyarrow.parquet as pq
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    texts = pq.read_table(parquet, columns=["text"]).column(0).to_pylist()
    batches, batch, chars = [], [], 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if chars >= cfg["batch_chars"]:
            batches.append(batch)
            batch, chars = [], 0
    if batch:
        batches.append(batch)
    tokens, start = 0, time.perf_counter()
    for b in batches:
        tokens += sum(len(ids) + 2 for ids in sp.encode(b, num_threads=threads))  # + BOS, EOS as stored
    return tokens, time.perf_counter() - start


def _tree_rss(pid):
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def pipeline(model, parquet, out, cfg, workers):
    cmd = [sys.executable, os.path.join(ROOT, "data_prep", "tokenize.py"), "--input", parquet, "--tokenizer", model,
           "--output", out, "--seq-len", str(cfg["seq_len"]), "--seqs-per-shard", str(cfg["seqs_per_shard"]),
           "--docs-per-part", str(cfg["docs_per_part"]), "--batch-chars", str(cfg["batch_chars"]),
           "--workers", str(workers)]
    peak, stop = [0], threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            stop.wait(cfg["memory_sample_seconds"])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"tokenize.py failed:\n{stderr[-2000:]}")
    split = Manifest.read(out).splits["train"]
    # The documents' tokens (BOS + text + EOS each), not window slots, to compare with raw encode.
    return {"seconds": seconds, "tokens": split.document_tokens, "samples": split.samples, "shards": len(split.shards),
            "peak_rss_mib": peak[0] / 2**20, "progress_tail": stderr.strip().splitlines()[-1][-160:] if stderr.strip() else ""}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "bench", "tokenize.json"))
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--workdir", help="where the input and shards go (default: a temporary directory, removed)")
    args = p.parse_args()
    with open(args.config) as f:
        cfg = json.load(f)
    cores = os.cpu_count() or 1
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    work = args.workdir or tempfile.mkdtemp(prefix="bench_tokenize_")
    os.makedirs(work, exist_ok=True)
    try:
        from titans_data_prep.train_tokenizer import train

        model = os.path.join(work, "tok.model")
        train(CORPUS, cfg["tokenizer_vocab_size"], model)
        parquet = os.path.join(work, "input.parquet")
        rows, chars = make_input(parquet, cfg, log)
        size = os.path.getsize(parquet)
        log("raw encode ...")
        raw_tokens, raw_seconds = raw_encode(model, parquet, cfg, cores)
        log(f"raw encode: {raw_tokens / raw_seconds:,.0f} tok/s; pipeline ...")
        out = os.path.join(work, "shards")
        shutil.rmtree(out, ignore_errors=True)
        pipe = pipeline(model, parquet, out, cfg, cores)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    ratio = (pipe["tokens"] / pipe["seconds"]) / (raw_tokens / raw_seconds)
    meta = {"command": "python bench/tokenize.py " + " ".join(sys.argv[1:]), "date": datetime.date.today().isoformat(),
            "machine": cpu_description(), "python": platform.python_version(),
            "sentencepiece": package_version("sentencepiece"), "pyarrow": package_version("pyarrow"), "config": cfg}
    result = {"input_rows": rows, "input_characters": chars, "input_file_bytes": size,
              "raw": {"tokens": raw_tokens, "seconds": raw_seconds, "tokens_per_s": raw_tokens / raw_seconds},
              "pipeline": {**pipe, "tokens_per_s": pipe["tokens"] / pipe["seconds"]}, "ratio": ratio}
    assert pipe["tokens"] == raw_tokens, f"pipeline stored {pipe['tokens']} tokens, raw encode made {raw_tokens}"
    verdict = "met" if ratio >= 0.8 else "not met"
    table = "\n".join([
        f"# Tokenization throughput ({meta['date']})", "",
        f"- command: `{meta['command']}`", f"- machine: {meta['machine']}; python {meta['python']}, sentencepiece "
        f"{meta['sentencepiece']}, pyarrow {meta['pyarrow']}",
        f"- input: {rows:,} documents, {chars / 1e9:.2f} G characters ({size / 1e9:.2f} GB parquet); tokenizer BPE "
        f"{cfg['tokenizer_vocab_size']} (LLaMA-2 layout) trained on the shipped corpus; seq_len {cfg['seq_len']}", "",
        "| row | tokens | seconds | tokens/s | peak RSS MiB |", "|---|---|---|---|---|",
        f"| raw encode ({cores} threads, texts in memory) | {raw_tokens:,} | {raw_seconds:.1f} | {raw_tokens / raw_seconds:,.0f} | - |",
        f"| tokenize.py --workers {cores} (read, encode, pack, write) | {pipe['tokens']:,} | {pipe['seconds']:.1f} | "
        f"{pipe['tokens'] / pipe['seconds']:,.0f} | {pipe['peak_rss_mib']:,.0f} |", "",
        f"Pipeline / raw encode: **{ratio:.2f}x** (target >= 0.8x: {verdict}).", ""])
    print(table)
    if args.output:
        write_report(args.output, table, {"meta": meta, "result": result})


if __name__ == "__main__":
    main()
