"""Helpers the test folders share (fixtures are in tests/conftest.py): the repository's paths, the CLI
runners of data_prep and pretrain, and the tiny training configuration."""

import fcntl
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data_prep" / "corpus" / "python_docs.jsonl.gz"
SEQ = 32  # the tiny training runs' sequence length and vocabulary (train_shards)
VOCAB = 600
TINY_CONFIG = ROOT / "configs" / "tiny_mag.json"  # tiny_overrides shrinks it further


def run_cli(script, *args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, str(ROOT / "data_prep" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def corpus_docs():
    with gzip.open(CORPUS, "rt") as f:
        return [json.loads(line) for line in f]


def corpus_texts(n, skip=0):
    return [" ".join(d["text"].split()) for d in corpus_docs()[skip:skip + n]]


def tokenize(tokenizer, src, out, *extra, check=True):
    return run_cli("tokenize.py", "--input", src, "--tokenizer", tokenizer, "--output", out, "--seq-len", 64,
                   "--seqs-per-shard", 16, "--docs-per-part", 25, "--workers", 2, *extra, check=check)


def shard_bytes(directory):
    """{relative path: bytes} of every file under ``directory``."""
    root = pathlib.Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_overrides(shards, ckpt, **extra):
    base = {"data.dir": str(shards), "checkpoint.dir": str(ckpt), "schedule.train_steps": 12,
            "schedule.global_batch": 4, "schedule.micro_batch": 2, "checkpoint.interval": 4, "log.interval": 2,
            "eval.interval": 6, "eval.batches": 1, "optim.warmup_steps": 3,
            "model.overrides": {"seq_length": SEQ, "vocab_size": VOCAB, "window_size": 16, "num_persistent_tokens": 2,
                                "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 2,
                                "memory_chunk_size": 8}}
    extra = dict(extra)
    base["model.overrides"].update(extra.pop("model.overrides", {}))  # merged, as a config's base is
    base.update(extra)
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def train_cmd(overrides):
    return [sys.executable, str(ROOT / "pretrain" / "train.py"), "--config", str(TINY_CONFIG), *overrides]


def _checked(proc, what, check):
    if check and proc.returncode != 0:
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def run_train(overrides, check=True):
    """pretrain/train.py in a process of its own: for what only a process shows (signals, kills, the
    command line itself); ``train_main`` runs the same in this process."""
    return _checked(subprocess.run(train_cmd(overrides), capture_output=True, text=True, timeout=600), "train.py",
                    check)


def train_main(args, check=False):
    """pretrain/train.py's ``main(args)`` in this process, as ``run_train`` runs it in another, without an
    interpreter start and the imports of torch and megatron-core (about 9 CPU-seconds each)."""
    import contextlib
    import io

    from titans_pretrain.train import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--config", str(TINY_CONFIG), *map(str, args)])
    return _checked(subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue()), "train.main", check)


def torchrun(overrides, nproc=2, check=True):
    """pretrain/train.py under torchrun on CPU (gloo), ``nproc`` processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "pretrain" / "train.py"), "--config", str(TINY_CONFIG), *overrides]
    return _checked(subprocess.run(cmd, capture_output=True, text=True, timeout=600), "torchrun", check)


def as_of_step(source, target, step):
    """A copy of a run folder as it was right after ``step`` was saved (later checkpoints and the loss log
    gone), for a resume to continue from there."""
    shutil.copytree(source, target)
    for later in target.glob("iter_*"):
        if int(later.name.split("_")[1]) > step:
            shutil.rmtree(later)
    assert (target / f"iter_{step:07d}").is_dir(), f"{source} kept no checkpoint of step {step}"
    (target / "latest").write_text(f"iter_{step:07d}")
    (target / "tensorboard" / "metrics.jsonl").unlink()
    return target


def losses(ckpt):
    """step -> loss from metrics.jsonl (the last record of a step: a resumed run logs it again)."""
    out = {}
    for line in (ckpt / "tensorboard" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def shared_across_workers(tmp_path_factory, name, build):
    """A session artefact made once for the whole run: under pytest-xdist the first worker to ask builds
    it (``build(folder)``) under a file lock while the other waits, then both use the same folder, so
    the reference runs two test files share are not trained once per worker. Users must not change it."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target, done = root / name, root / f"{name}.complete"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(target, ignore_errors=True)  # a worker that failed half-way
                target.mkdir()
                build(target)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
