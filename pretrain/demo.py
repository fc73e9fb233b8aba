"""The whole path, small, on CPU: what `make demo` runs.

    python pretrain/demo.py [--workdir demo_run] [--steps 960]

1. trains a BPE tokenizer (LLaMA-2 layout) on the shipped corpus;
2. tokenizes the corpus into packed shards (10 documents held out for validation) and verifies them;
3. trains a tiny Titans-MAG (configs/tiny_mag.json) for half the steps, stopping as a preemption would;
4. resumes from that checkpoint and trains to the end;
5. evaluates the final checkpoint: validation perplexity, then eval_suite (needles in the shipped corpus,
   a report with the loss curves), and prints a summary.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import titans_data_prep  # noqa: E402
import titans_eval_suite  # noqa: E402
import titans_pretrain  # noqa: E402
from titans_configs import config_path  # noqa: E402
from titans_data_prep.corpus import CORPUS  # noqa: E402
from titans_pretrain.stopping import EXIT_REQUEUE  # noqa: E402

CONFIG = config_path("tiny_mag.json")
EVAL_CONFIG = config_path("eval", "tiny.json")
# The commands' folders, wherever the package is installed (the checkout's folders in an editable install)
DATA_PREP, PRETRAIN, EVAL_SUITE = (os.path.dirname(m.__file__) for m in (titans_data_prep, titans_pretrain,
                                                                          titans_eval_suite))
ROOT = os.path.dirname(PRETRAIN)


def stage(title, cmd, ok=(0,)):
    shown = ["python" if c == sys.executable else os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd]
    print(f"\n== {title}\n$ {' '.join(shown)}", flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode not in ok:
        raise SystemExit(f"demo: {title} failed (exit status {proc.returncode})")
    return proc.returncode


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="demo_run")
    p.add_argument("--steps", type=int, default=960)
    args = p.parse_args(argv)
    start = time.time()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tok, shards, ckpt = (os.path.join(work, n) for n in ("tokenizer.model", "shards", "checkpoints"))
    with open(CONFIG) as f:
        vocab = json.load(f)["model"]["overrides"]["vocab_size"]
    py = sys.executable
    stage("1. tokenizer", [py, os.path.join(DATA_PREP, "train_tokenizer.py"), "--input", str(CORPUS),
                           "--vocab-size", str(vocab), "--output", tok])
    stage("2. shards", [py, os.path.join(DATA_PREP, "tokenize.py"), "--input", str(CORPUS), "--tokenizer", tok,
                        "--output", shards, "--seq-len", "128", "--seqs-per-shard", "64", "--val-docs", "10"])
    stage("2b. verify", [py, os.path.join(DATA_PREP, "verify.py"), shards])
    train = [py, os.path.join(PRETRAIN, "train.py"), "--config", CONFIG, f"data.dir={shards}",
             f"checkpoint.dir={ckpt}", f"schedule.train_steps={args.steps}",
             f"checkpoint.interval={max(1, args.steps // 4)}", f"eval.interval={max(1, args.steps // 4)}"]
    half = args.steps // 2
    stage(f"3. train to step {half} of {args.steps}, then stop as if preempted",
          train + [f"run.stop_at_step={half}"], ok=(EXIT_REQUEUE,))
    stage("4. resume from the checkpoint and finish", train)
    stage("5. evaluate the final checkpoint", [py, os.path.join(PRETRAIN, "val_loss.py"), "--checkpoint", ckpt])
    report = os.path.join(work, "eval")
    stage("6. eval_suite: needle in a haystack, report", [py, os.path.join(EVAL_SUITE, "run.py"), "--checkpoint",
                                                          ckpt, "--config", EVAL_CONFIG, "--output", report])

    records = {}
    with open(os.path.join(ckpt, "tensorboard", "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            records[r["step"]] = r
    first = [records[s]["loss"] for s in sorted(records)[:10]]
    last = [records[s]["loss"] for s in sorted(records)[-10:]]
    val = [records[s]["val_loss"] for s in sorted(records) if "val_loss" in records[s]]
    print(f"\n== summary ({time.time() - start:.0f} s)\n"
          f"training loss: {sum(first) / len(first):.3f} (first 10 steps) -> {sum(last) / len(last):.3f} (last 10)\n"
          f"validation loss at each evaluation: {', '.join(f'{v:.3f}' for v in val)}\n"
          f"checkpoints: {ckpt} (latest: {open(os.path.join(ckpt, 'latest')).read()})\n"
          f"TensorBoard: tensorboard --logdir {os.path.join(ckpt, 'tensorboard')}\n"
          f"evaluation report: {os.path.join(report, 'report.md')} (results.json, needle heatmap, loss curves)\n"
          f"shards: {shards}; tokenizer: {tok}")
    if not sum(last) < sum(first):
        raise SystemExit("demo: the training loss did not fall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
