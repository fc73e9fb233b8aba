"""What eval_suite/run.py learns about a checkpoint before building its model: the folder it means, its
name in reports, its training context and tokenizer; and every broken folder named once, with what is
missing."""

import json
import pathlib

import pytest

from titans_eval_suite.checkpoint import inspect
from titans_eval_suite.errors import EvalInputError
from tests.helpers import SEQ


def test_run_and_iteration_folders(checkpoints):
    run = checkpoints["mag"]
    found = inspect(str(run))
    assert (found.folder, found.name, found.step, found.seq_length) == (str(run / "iter_0000008"), "mag", 8, SEQ)
    assert found.label == f"checkpoint {run} (iter_0000008)"
    # an iteration folder given alone is named after its run and step: two runs' iter_0000008 stay apart
    alone = inspect(str(run / "iter_0000004"))
    assert (alone.folder, alone.name, alone.step) == (str(run / "iter_0000004"), "mag@4", 4)
    assert inspect(str(checkpoints["transformer++"] / "iter_0000004")).name == "transformerpp@4"
    assert found.codec.encode("a b") == alone.codec.encode("a b")


def broken_copy(source, root, latest="iter_0000008", model_files=True, data_dir=None):
    """A run folder holding a copy of ``source``'s train_state.json (and an empty model file of the
    titans-tp-pieces-1 format, which inspect takes as present)."""
    folder = root / "iter_0000008"
    folder.mkdir(parents=True)
    state = json.loads((source / "iter_0000008" / "train_state.json").read_text())
    if data_dir is not None:
        state["config"]["data"]["dir"] = data_dir
    (folder / "train_state.json").write_text(json.dumps(state))
    if model_files:
        (folder / "model_tp0.pt").touch()
    (root / "latest").write_text(latest)
    return root


@pytest.mark.parametrize("kind, message", [
    ("latest", "{run}: its 'latest' names 'iter_0000099', which does not exist"),
    ("model", "{run} (iter_0000008): lacks .metadata (the index of the sharded state, written last"),
    ("moved", "{run} (iter_0000008): no tokenizer: the checkpoint holds no tokenizer.model and the run's data.dir "
              "(/nonexistent/shards) has no manifest"),
    ("state", "{run} (iter_0000008): train_state.json is unreadable"),
    ("empty", "{run}: neither a run folder with 'latest' nor an iter_NNNNNNN folder with train_state.json"),
])
def test_broken_folders_are_named_once(checkpoints, tmp_path, kind, message):
    run = tmp_path / "run"
    if kind == "empty":
        run.mkdir()
    else:
        broken_copy(checkpoints["mag"], run, latest="iter_0000099" if kind == "latest" else "iter_0000008",
                    model_files=kind != "model", data_dir="/nonexistent/shards" if kind == "moved" else None)
    if kind == "state":
        (run / "iter_0000008" / "train_state.json").write_text("{not json")
    with pytest.raises(EvalInputError) as error:
        inspect(str(run))
    assert str(error.value).startswith("checkpoint " + message.format(run=run))
    assert str(error.value).count(str(run)) == 1


def test_a_tokenizer_that_does_not_fit(checkpoints, tmp_path):
    bad = tmp_path / "tok.model"
    bad.write_text("not a sentencepiece model")
    run = broken_copy(checkpoints["mag"], tmp_path / "run", data_dir="")
    with pytest.raises(EvalInputError, match=f"tokenizer {bad}: not a sentencepiece model"):
        inspect(str(run), str(bad))


def test_a_copied_checkpoint_carries_its_tokenizer(checkpoints, tmp_path):
    """A checkpoint copied to another machine, its shards gone: the tokenizer inside it is found and
    checked against the sha256 it records; a replaced one is refused."""
    import shutil

    source = checkpoints["mag"] / "iter_0000008"
    copy = tmp_path / "run" / "iter_0000008"
    shutil.copytree(source, copy)
    (tmp_path / "run" / "latest").write_text("iter_0000008")
    state = json.loads((copy / "train_state.json").read_text())
    manifest = json.loads((pathlib.Path(state["config"]["data"]["dir"]) / "manifest.json").read_text())
    state["config"]["data"]["dir"] = "/nonexistent/shards"
    (copy / "train_state.json").write_text(json.dumps(state))
    summary = json.loads((copy / "data_summary.json").read_text())
    assert summary["tokenizer"] == manifest["tokenizer"] and summary["seq_len"] == manifest["seq_len"]
    assert summary["splits"]["train"]["shards"] == len(manifest["splits"]["train"]["shards"])
    assert summary["splits"]["train"]["samples"] == manifest["splits"]["train"]["samples"]
    found = inspect(str(tmp_path / "run"))
    assert found.tokenizer == str(copy / "tokenizer.model")
    assert found.codec.encode("a b c") == inspect(str(checkpoints["mag"])).codec.encode("a b c")
    (copy / "tokenizer.model").write_bytes((copy / "tokenizer.model").read_bytes()[:-1] + b"x")
    with pytest.raises(EvalInputError, match="sha256 differs"):
        inspect(str(tmp_path / "run"))
