"""The package as users install it: from a wheel (`pip install .`, not editable) into a fresh venv, used
from a folder outside the checkout, and the README's code run from another directory. Nothing may
depend on the current directory being the checkout (README, Installing)."""

import os
import pathlib
import re
import site
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

ROOT = pathlib.Path(__file__).resolve().parents[1]
THREADS = {"OMP_NUM_THREADS": "1"}


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **THREADS, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_readme_python_runs_from_another_directory(tmp_path):
    """The README's memory-op and model examples, as written, from a folder that is not the checkout."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    runnable = [b for b in blocks if "neural_memory(" in b or "build_model(" in b]
    assert len(runnable) == 2
    for i, code in enumerate(runnable):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code + "\nprint('ran')\n")
        assert _run([sys.executable, script], cwd=tmp_path).strip().endswith("ran")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the project installed from a wheel; its dependencies are this venv's (a .pth
    line written after the install, so pip never sees the editable copy)."""
    root = tmp_path_factory.mktemp("wheel_install")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", ROOT], cwd=root)
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).strip()
    (pathlib.Path(purelib) / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, pathlib.Path(purelib)


def test_wheel_holds_every_module_and_data_file(installed):
    python, purelib = installed
    for name in ("titans_kernels", "titans_core", "titans_hf", "titans_megatron", "titans_pretrain",
                 "titans_data_prep", "titans_eval_suite", "titans_configs"):
        assert (purelib / name / "__init__.py").exists(), name
    assert (purelib / "titans_data_prep" / "corpus" / "python_docs.jsonl.gz").exists()
    assert (purelib / "titans_configs" / "eval" / "paper.json").exists()
    assert (purelib / "titans_configs" / "scaling" / "common.json").exists()
    for bare in ("kernels", "pretrain", "data_prep", "eval_suite", "configs"):
        assert not (purelib / bare).exists(), bare


def test_installed_package_trains_exports_and_evaluates_outside_the_checkout(installed, tmp_path):
    """From a folder outside the checkout, with the wheel's modules only (the checkout is not on sys.path
    and no editable finder is active): tokenize the shipped corpus, train a few steps, export to Hugging
    Face, load the export, and evaluate with the packaged default settings."""
    python, purelib = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    origin = _run([python, "-c", "import titans_megatron, titans_kernels, titans_pretrain, titans_configs;"
                                 "print(*(m.__file__ for m in (titans_megatron, titans_kernels, titans_pretrain, titans_configs)))"],
                  cwd=work).split()
    assert all(pathlib.Path(f).is_relative_to(purelib) for f in origin), origin

    corpus = purelib / "titans_data_prep" / "corpus" / "python_docs.jsonl.gz"
    config = purelib / "titans_configs" / "tiny_mag.json"
    _run([python, "-m", "titans_data_prep.train_tokenizer", "--input", corpus, "--vocab-size", 1000,
          "--output", "tok.model"], cwd=work)
    _run([python, "-m", "titans_data_prep.tokenize", "--input", corpus, "--tokenizer", "tok.model", "--output",
          "shards", "--seq-len", 64, "--seqs-per-shard", 32, "--val-docs", 4, "--workers", 1], cwd=work)
    tiny = ["schedule.train_steps=4", "schedule.global_batch=2", "schedule.micro_batch=2", "checkpoint.interval=4",
            "eval.interval=4", "eval.batches=1", "optim.warmup_steps=1",
            'model.overrides={"seq_length": 64, "vocab_size": 1000, "window_size": 16, "num_persistent_tokens": 2, '
            '"hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 2, "memory_chunk_size": 8}']
    _run([python, "-m", "titans_pretrain.train", "--config", config, "data.dir=shards", "checkpoint.dir=ckpt", *tiny],
         cwd=work)
    _run([python, "-m", "titans_eval_suite.export_hf", "--checkpoint", "ckpt", "--output", "hf"], cwd=work)
    loaded = _run([python, "-c", "import torch; from transformers import AutoModelForCausalLM as M;"
                                 "m = M.from_pretrained('hf', trust_remote_code=True);"
                                 "print(m.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=3, do_sample=False).shape)"],
                  cwd=work, env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    assert "torch.Size([1, 6])" in loaded
    _run([python, "-m", "titans_eval_suite.run", "--checkpoint", "ckpt", "--tasks", "needle", "--output", "report",
          "--set", "needle.lengths=[256]", "--set", "needle.depths=[50]", "--set", "needle.samples=1",
          "--set", "needle.kinds=[\"passkey\"]"], cwd=work)
    assert (work / "report" / "results.json").exists() and (work / "report" / "report.md").exists()
