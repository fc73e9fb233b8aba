"""checkpoint.init_from: a new run starting from another run's weights (and optionally its AdamW state),
with a model that may differ in what keeps parameter shapes; everything else refused by name."""

import json
import os

import pytest
import torch

from titans_pretrain import checkpoint as ckpt
from titans_pretrain import optim as optim_
from titans_pretrain import sharded_checkpoint as sharded
from titans_pretrain.config import load_config
from titans_pretrain.distributed import init_distributed
from tests.helpers import TINY_CONFIG, losses, tiny_overrides, train_main
from titans_megatron import build_model

pytestmark = pytest.mark.process  # trains (in this process): not in make test-fast


@pytest.fixture(scope="module")
def source(train_shards, tmp_path_factory):
    """A tiny MAG run of 8 steps at a high learning rate: its weights are far from any initialisation."""
    root = tmp_path_factory.mktemp("init_source")
    train_main(tiny_overrides(train_shards, root, **{"schedule.train_steps": 8, "optim.lr": 0.01}), check=True)
    return root


def pieces(folder):
    return {k: v for k, v in sharded.read_whole(str(folder)).items() if "#" not in k}


def test_new_run_starts_from_the_weights_with_a_fresh_schedule(source, train_shards, tmp_path):
    """window and memory lr changed (no shape changes); lr 0 and no weight decay: the weights it saves
    after its first step are the source's, exactly, and its step count starts at 1."""
    new = tmp_path / "new"
    proc = train_main(tiny_overrides(train_shards, new, **{
        "schedule.train_steps": 1, "optim.lr": 0.0, "optim.min_lr": 0.0, "optim.weight_decay": 0.0,
        "checkpoint.init_from": str(source), "model.overrides": {"window_size": 8, "memory_lr_max": 0.03}}), check=True)
    assert f"initialised from {source / 'iter_0000008'} (step 8 of its run); this run starts at step 0" in proc.stdout
    assert sorted(losses(new)) == [1]
    theirs, ours = pieces(source / "iter_0000008"), pieces(new / "iter_0000001")
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    # the first loss is the trained model's, far below a fresh model's
    fresh = losses(source)[1]
    assert losses(new)[1] < fresh - 0.5


def test_a_requeued_run_resumes_from_its_own_checkpoint(source, train_shards, tmp_path):
    new = tmp_path / "new"
    args = tiny_overrides(train_shards, new, **{"schedule.train_steps": 2, "checkpoint.interval": 1,
                                                  "checkpoint.init_from": str(source / "iter_0000004")})
    assert "initialised from" in train_main(args, check=True).stdout
    longer = [a for a in args if not a.startswith("schedule.train_steps=")] + ["schedule.train_steps=3"]
    proc = train_main(longer, check=True)
    assert f"resumed from {new / 'iter_0000002'} at step 2" in proc.stdout and "initialised from" not in proc.stdout


def test_optimizer_state_comes_along_when_asked(source, train_shards):
    config = load_config(str(TINY_CONFIG), tiny_overrides(train_shards, source, **{"checkpoint.init_optimizer": True}))
    layout = init_distributed(1)
    saved = {}
    for what in ("resume", "init"):
        model = build_model(config.model_config(), seed=5)
        opt = optim_.build(model, config.model_config(), config.optim, layout)
        if what == "resume":
            ckpt.load(str(source / "iter_0000008"), model, opt.checkpoint_state, config.as_dict(), layout)
        else:
            ckpt.init_from(str(source), model, opt.checkpoint_state)
        names = {p: n for n, p in model.named_parameters()}
        saved[what] = {names[p]: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                       for p, s in opt.checkpoint_state.state.items()}
    assert saved["init"].keys() == saved["resume"].keys() and saved["init"]
    for name, moments in saved["resume"].items():
        for key, value in moments.items():
            assert torch.equal(saved["init"][name][key], value), (name, key)


@pytest.mark.parametrize("change, message", [
    ({"model.overrides": {"ffn_hidden_size": 96}}, "linear_fc1.weight: the checkpoint's full shape is (256, 64), the model's (192, 64)"),
    ({"model.variant": "lmm"}, "the checkpoint holds other parameters than the model"),
    ({"checkpoint.init_from": "EMPTY"}, "neither a run folder with 'latest' nor an iter_NNNNNNN folder with train_state.json"),
    ({"checkpoint.init_from": "MISSING"}, "no such directory"),
])
def test_what_cannot_start_a_run_is_refused_by_name(source, train_shards, tmp_path, change, message):
    (tmp_path / "empty").mkdir()
    target = {"EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "missing")}
    change = {k: target.get(v, v) if isinstance(v, str) else v for k, v in change.items()}
    proc = train_main(tiny_overrides(train_shards, tmp_path / "new", **{"checkpoint.init_from": str(source), **change}))
    assert proc.returncode == 2 and "checkpoint.init_from" in proc.stderr and message in proc.stderr, proc.stderr[-800:]
    assert not os.path.exists(tmp_path / "new" / "latest")
    assert json.loads((source / "iter_0000008" / "train_state.json").read_text())["step"] == 8  # untouched


def test_a_hugging_face_export_starts_a_run_with_its_weights(source, train_shards, tmp_path):
    """export_hf.py's folder as init_from (lr 0): the new run's weights are the source's, but for the
    vocabulary padding rows the export drops (zeros after the import)."""
    from titans_eval_suite.export_hf import export

    hf = export(str(source), str(tmp_path / "hf"))
    new = tmp_path / "new"
    proc = train_main(tiny_overrides(train_shards, new, **{
        "schedule.train_steps": 1, "optim.lr": 0.0, "optim.min_lr": 0.0, "optim.weight_decay": 0.0,
        "checkpoint.init_from": hf}), check=True)
    assert f"initialised from {hf} (step 8 of its run)" in proc.stdout
    theirs, ours = pieces(source / "iter_0000008"), pieces(new / "iter_0000001")
    assert sorted(ours) == sorted(theirs)
    vocab = load_config(str(TINY_CONFIG), tiny_overrides(train_shards, new)).model_config().vocab_size
    for name in theirs:
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            assert torch.equal(ours[name][:vocab], theirs[name][:vocab]) and not ours[name][vocab:].any(), name
        else:
            assert torch.equal(ours[name], theirs[name]), name
    with pytest.raises(ckpt.CheckpointError, match="holds no optimizer state"):
        model = build_model(load_config(str(TINY_CONFIG), tiny_overrides(train_shards, new)).model_config())
        ckpt.init_from(hf, model, object())
