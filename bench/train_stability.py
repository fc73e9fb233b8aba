"""Are the memory's defaults stable at real widths? Train a scaling preset's width and depth (a shorter
sequence) on the shipped corpus through pretrain/train.py and count non-finite steps.

For each variant of the config: configs/<preset>_<variant>.json with the config's overrides (sequence
length, batch, steps, learning rate), on shards made here from the shipped corpus with a tokenizer
trained here (as `make demo` does). The table gives the steps run, the steps skipped as non-finite
(the trainer skips and counts them), the largest gradient norm and the loss at the start and end.

    python bench/train_stability.py --config configs/bench/train_stability.json --output bench/results/train_stability_cpu
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.config import read_config  # noqa: E402
from bench.outputs import cpu_description, write_report  # noqa: E402

ROOT = os.path.dirname(_here)
CORPUS = os.path.join(ROOT, "data_prep", "corpus", "python_docs.jsonl.gz")
REQUIRED = ("preset", "variants", "model", "overrides")


def run(cmd, log_path):
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    return proc.returncode


def prepare_data(work, cfg):
    py = sys.executable
    tok, shards = os.path.join(work, "tokenizer.model"), os.path.join(work, "shards")
    if os.path.exists(os.path.join(shards, "manifest.json")):  # a --workdir made by an earlier call
        return shards
    for name, cmd in (("tokenizer", [py, os.path.join(ROOT, "data_prep", "train_tokenizer.py"), "--input", CORPUS,
                                     "--vocab-size", str(cfg["model"]["vocab_size"]), "--output", tok]),
                      ("shards", [py, os.path.join(ROOT, "data_prep", "tokenize.py"), "--input", CORPUS, "--tokenizer",
                                  tok, "--output", shards, "--seq-len", str(cfg["model"]["seq_length"]), "--seqs-per-shard", "64",
                                  "--val-docs", "10"])):
        if run(cmd, os.path.join(work, f"{name}.log")):
            raise SystemExit(f"{name} failed: see {os.path.join(work, name + '.log')}")
    return shards


def read_metrics(ckpt):
    metrics = os.path.join(ckpt, "tensorboard", "metrics.jsonl")
    if not os.path.exists(metrics):
        return []
    with open(metrics) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_variant(work, shards, cfg, variant):
    ckpt = os.path.join(work, f"run_{variant}")
    done = read_metrics(ckpt)
    if done and done[-1].get("step") == cfg["overrides"]["schedule.train_steps"]:
        return summary(variant, done, 0, None, os.path.join(work, f"train_{variant}.log"))  # finished earlier
    cmd = [sys.executable, os.path.join(ROOT, "pretrain", "train.py"), "--config",
           os.path.join(ROOT, "configs", f"{cfg['preset']}_{variant}.json"), f"data.dir={shards}",
           f"checkpoint.dir={ckpt}",
           "model.overrides=" + json.dumps(cfg["model"])]
    cmd += [f"{k}={json.dumps(v)}" for k, v in cfg["overrides"].items()]
    start = time.time()
    code = run(cmd, os.path.join(work, f"train_{variant}.log"))
    return summary(variant, read_metrics(ckpt), code, round(time.time() - start), os.path.join(work, f"train_{variant}.log"))


def summary(variant, records, code, seconds, log):
    steps = [r for r in records if "loss" in r]
    finite = [r["grad_norm"] for r in steps if r.get("grad_norm") is not None and r["grad_norm"] == r["grad_norm"]]
    return {"variant": variant, "exit_code": code, "steps": len(steps),
            "skipped_steps": steps[-1]["skipped_steps"] if steps else None,
            "max_grad_norm": max(finite) if finite else None,
            "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
            "seconds": seconds, "log": log}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/train_stability.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--variants", nargs="+", help="a subset of the config's variants")
    p.add_argument("--workdir", help="keep data, logs and checkpoints here (default: a temporary folder); a "
                   "variant whose run there has finished is reported, not retrained")
    args = p.parse_args()
    cfg = read_config(args.config, REQUIRED, precision=False)
    work = args.workdir or tempfile.mkdtemp(prefix="train_stability_")
    os.makedirs(work, exist_ok=True)
    shards = prepare_data(work, cfg)
    rows = []
    for variant in args.variants or cfg["variants"]:
        row = train_variant(work, shards, cfg, variant)
        rows.append(row)
        print(f"{variant}: exit {row['exit_code']}, {row['steps']} steps, {row['skipped_steps']} skipped, "
              f"loss {row['first_loss']} -> {row['last_loss']} ({row['seconds']} s)", file=sys.stderr, flush=True)
        report(rows, cfg, args)  # after every variant: a stopped run keeps what finished


def report(rows, cfg, args):
    lines = [f"# Memory defaults at the {cfg['preset']} preset's width and depth ({datetime.date.today().isoformat()})", "",
             f"- command: `python bench/train_stability.py {' '.join(sys.argv[1:])}`",
             f"- machine: {cpu_description()}, torch {torch.__version__}",
             f"- configs/{cfg['preset']}_<variant>.json with model overrides {json.dumps(cfg['model'])} (BPE vocabulary "
             f"trained on the shipped corpus) and {json.dumps(cfg['overrides'])}", "",
             "| variant | exit | steps | non-finite steps (skipped) | max grad norm | loss first -> last | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = "-" if r["first_loss"] is None else f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}"
        norm = "-" if r["max_grad_norm"] is None else f"{r['max_grad_norm']:.3g}"
        lines.append(f"| {r['variant']} | {r['exit_code']} | {r['steps']} | {r['skipped_steps']} | {norm} | {loss} | "
                     f"{'-' if r['seconds'] is None else r['seconds']} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        write_report(args.output, table, {"config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
