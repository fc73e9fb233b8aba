"""``tokenize.py``'s run: check, plan, process the parts in worker processes, merge, write the manifest.

Order of durable writes: the run's arguments (``.tokenize_state/run.json``), then per part its full
shards and last of all its record, then the merged shards of the part remainders, then
``manifest.json``, and finally the state directory is removed. A run killed at any point and rerun
with the same arguments redoes only unfinished parts (and the merge) and ends with the same bytes.
"""

import multiprocessing as mp
import os
import queue
import shutil
import time
from typing import List, Optional

from titans_data_prep import tokenizer as tok
from titans_data_prep.manifest import (MANIFEST, Manifest, ShardRecord, SplitRecord, TokenizerRecord, check_same_arguments,
                                read_json, write_json)
from titans_data_prep.plan import plan_parts
from titans_data_prep.shards import read_shard, write_shard
from titans_data_prep.sources import MissingColumn, SourceError, count_rows
from titans_data_prep.worker import STATE_DIR, Settings, init, part_record_path, partial_shard_path, process_part

SPLITS = ("train", "val")


def _fingerprint(args, paths: List[str], info: tok.TokenizerInfo) -> dict:
    """Everything that decides the output bytes (workers and threads do not)."""
    return {"sources": [os.path.abspath(p) for p in paths], "hub_dataset": args.hub_dataset,
            "hf_config": args.hf_config, "tokenizer_sha256": info.sha256, "seq_len": args.seq_len,
            "seqs_per_shard": args.seqs_per_shard, "text_column": args.text_column, "max_docs": args.max_docs,
            "val_docs": args.val_docs, "docs_per_part": args.docs_per_part, "skip_bad_files": args.skip_bad_files}


def _count_sources(paths, text_column, skip_bad, log):
    rows, status = [], []
    for path in paths:
        try:
            rows.append(count_rows(path, text_column))
            status.append("ok")
        except SourceError as e:
            if not skip_bad or isinstance(e, MissingColumn):
                raise
            log(f"skipping bad file: {e}")
            rows.append(None)
            status.append(f"skipped: {e}")
    return rows, status


def _run_parts(parts, settings, workers, total_rows, log):
    """Process ``parts`` in a pool, with a progress line (documents/s, tokens/s, ETA)."""
    from tqdm import tqdm

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    progress = ctx.Queue()
    records = {}
    bar = tqdm(total=total_rows, unit="doc", desc="tokenize", smoothing=0.05, mininterval=1.0)
    tokens, start = 0, time.time()
    with ctx.Pool(workers, initializer=init, initargs=(settings, progress)) as pool:
        pending = {p.index: pool.apply_async(process_part, (p,)) for p in parts}
        while pending:
            try:
                while True:
                    docs, toks = progress.get(timeout=0.2)
                    tokens += toks
                    bar.update(docs)
                    bar.set_postfix_str(f"{tokens / max(time.time() - start, 1e-9):,.0f} tok/s", refresh=False)
            except queue.Empty:
                pass
            for index in [i for i, r in pending.items() if r.ready()]:
                records[index] = pending.pop(index).get()  # re-raises a worker's error here
    bar.close()
    log(f"{len(parts)} parts, {tokens:,} tokens in {time.time() - start:.1f}s")
    return records


def _merge_partials(output, split, records, seqs_per_shard):
    """The parts' last, partial shards, in part order, re-cut into full shards (the final one may be
    short). Samples keep their keys."""
    shards, batch = [], []

    def write():
        name = f"{split}-rest-{len(shards):04d}.tar"
        shards.append(write_shard(os.path.join(output, split, name), batch))

    for index in sorted(records):
        rec = records[index]
        if rec["part"]["split"] != split or rec["partial"] is None:
            continue
        for sample in read_shard(partial_shard_path(output, split, index)):
            batch.append(sample)
            if len(batch) == seqs_per_shard:
                write()
                batch = []
    if batch:
        write()
    return shards


def run(args, log=print) -> Optional[Manifest]:
    """Returns the manifest (None when the output was already complete)."""
    from titans_data_prep.hub import resolve_input

    paths = resolve_input(args, log)
    sp, info = tok.load(args.tokenizer)
    del sp
    fingerprint = _fingerprint(args, paths, info)
    out = args.output
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        check_same_arguments(manifest_path, Manifest.read(out).arguments, fingerprint)
        shutil.rmtree(os.path.join(out, STATE_DIR), ignore_errors=True)
        log(f"{manifest_path}: complete, with these arguments; nothing to do")
        return None
    state = os.path.join(out, STATE_DIR)
    run_path = os.path.join(state, "run.json")
    previous = read_json(run_path)
    if previous is not None:
        if args.skip_bad_files and not previous["skip_bad_files"]:
            # What a stop on a bad row or file suggests. Safe: the parts already done hold no bad rows,
            # so they are what a run with the flag would have written.
            log("--skip-bad-files: on from here (the parts already done hold no bad rows)")
            previous = {**previous, "skip_bad_files": True}
        check_same_arguments(run_path, previous, fingerprint)
        log(f"resuming the run in {out}")
    elif os.path.isdir(out) and any(name != STATE_DIR for name in os.listdir(out)):
        raise SourceError(f"{out}: exists and holds files that are not from this tool; choose an empty or new directory")
    for sub in ("parts", "partial", *SPLITS):
        os.makedirs(os.path.join(state if sub in ("parts", "partial") else out, sub), exist_ok=True)
    write_json(run_path, fingerprint)
    for root, _, names in os.walk(out):  # leftovers of writes a kill interrupted
        for name in names:
            if name.endswith(".tmp"):
                os.remove(os.path.join(root, name))

    rows, status = _count_sources(paths, args.text_column, args.skip_bad_files, log)
    parts = plan_parts(paths, rows, args.val_docs, args.max_docs, args.docs_per_part)
    records = {p.index: read_json(part_record_path(out, p.index)) for p in parts}
    records = {i: r for i, r in records.items() if r is not None}
    todo = [p for p in parts if p.index not in records]
    if records:
        log(f"{len(records)} of {len(parts)} parts already done")
    workers = max(1, min(args.workers, len(todo) or 1))
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    settings = Settings(out, args.tokenizer, args.seq_len, args.seqs_per_shard, args.text_column,
                        args.skip_bad_files, threads, args.batch_chars)
    if todo:
        records.update(_run_parts(todo, settings, workers, sum(p.stop - p.start for p in todo), log))

    skip_counts, skips = {}, []
    for index in sorted(records):
        for reason, n in records[index]["skip_counts"].items():
            skip_counts[reason] = skip_counts.get(reason, 0) + n
        skips.extend(records[index]["skips"])
    splits = {}
    for split in SPLITS:
        mine = [records[i] for i in sorted(records) if records[i]["part"]["split"] == split]
        shards = tuple(ShardRecord(**s) for s in [s for r in mine for s in r["shards"]]
                       + _merge_partials(out, split, records, args.seqs_per_shard))
        splits[split] = SplitRecord(
            shards, samples=sum(s.samples for s in shards), tokens=sum(s.tokens for s in shards),
            documents=sum(r["documents"] for r in mine), rows=sum(r["rows"] for r in mine),
            document_tokens=sum(r["tokens"] for r in mine))
    # the tokenizer's path too (not part of the fingerprint): evaluation finds it from the shards
    manifest = Manifest(
        tokenizer=TokenizerRecord(path=os.path.abspath(args.tokenizer), **info.as_dict()), seq_len=args.seq_len,
        window=args.seq_len + 1, stride=args.seq_len, dtype=info.dtype.__name__, seqs_per_shard=args.seqs_per_shard,
        splits=splits, arguments=fingerprint,
        sources=[{"index": i, "path": os.path.abspath(p), "rows": n, "status": st}
                 for i, (p, n, st) in enumerate(zip(paths, rows, status))],
        skipped={"counts": skip_counts, "rows": skips, "rows_listed_per_part": "at most 1000"})
    manifest.write(out)
    shutil.rmtree(state, ignore_errors=True)
    for name, split in manifest.splits.items():
        log(f"{name}: {split.documents} documents, {split.tokens:,} tokens, {split.samples} samples "
            f"in {len(split.shards)} shards")
    return manifest
