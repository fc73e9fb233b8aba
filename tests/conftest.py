"""Fixtures the test folders share (session-scoped: each is made once per run), and the GPU skip.
Plain helpers are in tests/helpers.py."""

import json
import os
import shutil
import subprocess
import tempfile

import pytest
import torch

from tests.helpers import CORPUS, SEQ, VOCAB, corpus_texts, run_cli, shared_across_workers, tiny_overrides, train_main

# Every run starts as a fresh machine would: the caches that libraries fill on first use (matplotlib's
# font list, Triton's kernels, Hugging Face's hub and datasets) live in a folder of this session, so no
# test passes only because an earlier run left a cache behind. Processes the tests start inherit it.
TEST_CACHES = tempfile.mkdtemp(prefix="titans-test-caches-")
for _var, _sub in (("MPLCONFIGDIR", "matplotlib"), ("TRITON_CACHE_DIR", "triton"), ("HF_HOME", "huggingface"),
                   ("XDG_CACHE_HOME", "xdg")):
    os.environ[_var] = os.path.join(TEST_CACHES, _sub)

# Without a GPU the Triton kernels run under the interpreter. Triton reads this when it is first
# imported (its own jit helpers are defined then), so it is set before any test module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Under pytest-xdist (`make test`: two workers on two cores) each worker and what it starts use one
# thread, so that the two never oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# Fixtures that spawn processes (tokenizer training, tokenization, training runs, a SLURM cluster):
# a test using one is a `process` test, left out of `make test-fast`.
SPAWNING_FIXTURES = {"tokenizer", "train_shards", "checkpoints", "mag", "slurm_cluster", "layout_runs"}
FAST_TIER = os.environ.get("TITANS_TEST_FAST") == "1"  # set by `make test-fast`


def pytest_unconfigure(config):
    shutil.rmtree(TEST_CACHES, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if skip and "gpu" in item.keywords:
            item.add_marker(skip)
        if SPAWNING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """A test that sets torch's thread count (a bench script's main run in-process, --threads 1) does not
    leave it to the tests after it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _no_processes_in_the_fast_tier():
    """Under `make test-fast` a test (or a fixture of any scope) that starts a process fails, naming the
    marker it lacks: the fast tier cannot quietly grow slow."""
    if not FAST_TIER:
        yield
        return

    try:  # matplotlib's first use scans the fonts with fc-list (a process): done here, before the guard
        import matplotlib.font_manager  # noqa: F401
    except ImportError:
        pass

    def refuse(*args, **kwargs):
        raise AssertionError("this test starts a process: mark it `process` (pytestmark or @pytest.mark.process), "
                             "which keeps it out of make test-fast")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        yield


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A sentencepiece model (1,000 pieces) trained once on the shipped corpus (data_prep tests)."""
    path = tmp_path_factory.mktemp("tokenizer") / "corpus.model"
    run_cli("train_tokenizer.py", "--input", CORPUS, "--vocab-size", 1000, "--output", path)
    return path


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory):
    """Shards of SEQ-token windows with a VOCAB-piece tokenizer: what the tiny training runs read."""
    def build(root):
        run_cli("train_tokenizer.py", "--input", CORPUS, "--vocab-size", VOCAB, "--output", root / "tok.model")
        run_cli("tokenize.py", "--input", CORPUS, "--tokenizer", root / "tok.model", "--output", root / "shards",
                "--seq-len", SEQ, "--seqs-per-shard", 64, "--val-docs", 8, "--workers", 1)

    return shared_across_workers(tmp_path_factory, "train_shards", build) / "shards"


EVAL_STEPS = {"schedule.train_steps": 8, "checkpoint.interval": 4, "eval.interval": 4}


@pytest.fixture(scope="session")
def checkpoints(train_shards, tmp_path_factory):
    """{variant: checkpoint folder} for mag and transformer++ (8 steps each; eval_suite tests)."""
    variants = ("mag", "transformer++")

    def build(root):
        for variant in variants:
            train_main(tiny_overrides(train_shards, root / variant.replace("+", "p"), **EVAL_STEPS,
                                      **{"model.variant": variant}), check=True)

    root = shared_across_workers(tmp_path_factory, "eval_checkpoints", build)
    return {variant: root / variant.replace("+", "p") for variant in variants}


@pytest.fixture(scope="session")
def mag(checkpoints):
    from titans_eval_suite.model import EvalModel

    return EvalModel.load(str(checkpoints["mag"]), batch_size=3)


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
    """DATA_DIR with small WikiText-103 (3 articles, the raw format) and LAMBADA (6 passages) files."""
    root = tmp_path_factory.mktemp("eval_data")
    (root / "wikitext103").mkdir()
    articles = []
    for i, text in enumerate(corpus_texts(3)):
        words = text.split()[:60 + 40 * i]
        body = " ".join(words[:30]) + " \n \n = = Section = = \n \n " + " ".join(words[30:])
        articles.append(f" = Article {i} = \n \n {body} \n \n")
    (root / "wikitext103" / "test.txt").write_text("".join(articles), encoding="utf-8")
    (root / "lambada_openai").mkdir()
    passages = [" ".join(t.split()[:12 + 9 * i]) for i, t in enumerate(corpus_texts(6, skip=3))]
    (root / "lambada_openai" / "test.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))
    return root


@pytest.fixture(scope="session")
def babilong_dir(eval_data, tmp_path_factory):
    """eval_data plus a small BABILong qa1 file (the RMT-team/babilong fields)."""
    root = tmp_path_factory.mktemp("eval_data_babilong")
    shutil.copytree(eval_data, root, dirs_exist_ok=True)
    (root / "babilong" / "0k").mkdir(parents=True)
    rows = [{"input": f"Mary moved to the {place}. John went to the garden.", "question": "Where is Mary?",
             "target": place} for place in ("bathroom", "hallway", "kitchen")]
    (root / "babilong" / "0k" / "qa1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
