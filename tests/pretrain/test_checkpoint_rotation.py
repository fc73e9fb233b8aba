"""Checkpoint rotation in one process: the newest ``keep`` survive, ``latest`` names the newest, a
left-over ``.tmp`` folder is neither counted nor pointed at, and what is saved loads back."""

import json

import torch

from titans_pretrain import checkpoint as ckpt
from titans_pretrain.distributed import Layout
from titans_megatron import build_model
from tests.titans_megatron.model_configs import small_config

ONE_PROCESS = Layout(rank=0, world=1, local_rank=0, tensor=1, tp_rank=0, data=1, dp_rank=0)


def _iters(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("iter_"))


def test_newest_keep_survive_and_latest_follows(tmp_path):
    model = build_model(small_config("lmm"), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = {"model": {"variant": "lmm"}}
    (tmp_path / "iter_0000001.tmp").mkdir(parents=True)  # a save that crashed before its rename
    for step in (2, 4, 6, 8):
        path = ckpt.save(str(tmp_path), step, model, opt, [{"epoch": 0, "samples": step}], config, ONE_PROCESS, keep=2)
        assert ckpt.latest_dir(str(tmp_path)) == path
    assert _iters(tmp_path) == ["iter_0000001.tmp", "iter_0000006", "iter_0000008"]
    state = json.loads((tmp_path / "iter_0000008" / "train_state.json").read_text())
    assert state["step"] == 8 and state["data"] == [{"epoch": 0, "samples": 8}]


def test_keep_zero_keeps_everything_and_saved_weights_load(tmp_path):
    model = build_model(small_config("mag"), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = {"model": {"variant": "mag"}}
    for step in (1, 2, 3):
        ckpt.save(str(tmp_path), step, model, opt, [{}], config, ONE_PROCESS, keep=0)
    assert _iters(tmp_path) == ["iter_0000001", "iter_0000002", "iter_0000003"]
    other = build_model(small_config("mag"), seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    ckpt.load(ckpt.latest_dir(str(tmp_path)), other, torch.optim.AdamW(other.parameters(), lr=1e-3), config,
              ONE_PROCESS)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        if torch.is_tensor(a):
            assert torch.equal(a, b), name
