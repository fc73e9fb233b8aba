"""Training under torchrun on CPU (gloo): tensor parallel 2 and data parallel 2 equal one process,
checkpoints load and train on at another tensor- or data-parallel size, data parallel 2 resumes exactly,
layouts that cannot work are refused.
The uninterrupted runs are tests/pretrain/conftest.py's ``layout_runs``."""

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, as_of_step, losses, tiny_overrides, torchrun, train_main
from tests.pretrain.conftest import STEPS

pytestmark = pytest.mark.process  # starts processes: not in make test-fast


def test_tensor_parallel_2_matches_one_process(layout_runs):
    one, two = losses(layout_runs / "tp1"), losses(layout_runs / "tp2")
    assert sorted(two) == sorted(one) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), step
    assert sorted(p.name for p in (layout_runs / "tp2" / "iter_0000008").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp", "data_summary.json", "optimizer.pt", "rng_00000.pt",
        "rng_00001.pt", "tokenizer.model", "train_state.json"]  # every rank writes its share


def test_context_parallel_2_matches_one_process_and_resumes_across_sizes(layout_runs, train_shards, tmp_path):
    """Each sequence split over two ranks (parallel.context 2, torch's optimizer path): one process's
    losses to reduction order; its checkpoint continues in one process with its own steps 7 and 8, and
    one process's checkpoint continues at context parallel 2 with that run's own."""
    cp2 = tmp_path / "cp2"
    proc = torchrun(tiny_overrides(train_shards, cp2, **STEPS, **{"parallel.context": 2}))
    assert "tensor 1 x context 2 x data 1" in proc.stdout
    # on Megatron's path (DDP and the distributed optimizer over the data x context group), and composed
    # with data parallelism (4 processes: data 2 x context 2)
    megatron = tmp_path / "cp2_megatron"
    torchrun(tiny_overrides(train_shards, megatron, **STEPS, **{"parallel.context": 2, "optim.implementation": "megatron",
                                                                  "optim.bucket_size": 4000}))
    dp2 = tmp_path / "dp2_cp2"
    assert "tensor 1 x context 2 x data 2" in torchrun(tiny_overrides(train_shards, dp2, **STEPS, **{"parallel.context": 2}),
                                                       nproc=4).stdout
    one = losses(layout_runs / "tp1")
    for run in (cp2, megatron, dp2):
        two = losses(run)
        assert sorted(two) == sorted(one) == list(range(1, 9))
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), (run.name, step)
    for source, context, target in ((cp2, 1, "to_cp1"), (layout_runs / "tp1", 2, "to_cp2")):
        moved = as_of_step(source, tmp_path / target, 6)
        overrides = tiny_overrides(train_shards, moved, **STEPS, **{"parallel.context": context})
        proc = torchrun(overrides, nproc=context) if context > 1 else train_main(overrides, check=True)
        assert f"resumed from {moved / 'iter_0000006'}" in proc.stdout
        resumed, whole = losses(moved), losses(source)
        assert sorted(resumed) == [7, 8]
        for step in resumed:
            assert resumed[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-5), (target, step)


def logits_at(nproc, checkpoints, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "tests" / "pretrain" / "logits_worker.py"), str(out), *map(str, checkpoints)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def test_checkpoint_loads_at_another_tensor_parallel_size_with_the_same_logits(layout_runs, tmp_path):
    from tests.pretrain.logits_worker import logits

    checkpoints = [layout_runs / "tp1", layout_runs / "tp2"]
    at1, at2 = logits(checkpoints), logits_at(2, checkpoints, tmp_path / "at2.pt")
    for path in map(str, checkpoints):
        torch.testing.assert_close(at2[path], at1[path], rtol=1e-5, atol=1e-5)
    # the two runs' weights differ in the last bits only; a load that ignored the checkpoint would not
    assert not torch.equal(at1[str(checkpoints[0])], at1[str(checkpoints[1])])
    torch.testing.assert_close(at1[str(checkpoints[0])], at1[str(checkpoints[1])], rtol=1e-3, atol=1e-3)


def test_hugging_face_export_of_a_tensor_parallel_2_checkpoint_gives_its_logits(layout_runs, tmp_path):
    """eval_suite/export_hf.py on checkpoints saved at TP 1 and TP 2: the Hugging Face model's logits are
    the checkpoint's (loaded in one process)."""
    from titans_eval_suite.export_hf import export
    from tests.pretrain.logits_worker import logits
    from titans_hf import TitansForCausalLM

    for run in ("tp1", "tp2"):
        expected = logits([layout_runs / run])[str(layout_runs / run)]
        model = TitansForCausalLM.from_pretrained(export(str(layout_runs / run), str(tmp_path / run))).eval()
        ids = torch.randint(0, model.config.vocab_size, (2, model.config.max_position_embeddings),
                            generator=torch.Generator().manual_seed(7))  # logits_worker's ids
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("saved, other", [(2, 1), (1, 2)])
def test_training_continues_at_another_tensor_parallel_size(layout_runs, train_shards, tmp_path, saved, other):
    """Model and AdamW state resharded: steps 7 and 8 resumed at the other size are the saving run's own."""
    target = as_of_step(layout_runs / f"tp{saved}", tmp_path / "moved", 6)
    overrides = tiny_overrides(train_shards, target, **STEPS, **{"parallel.tensor": other})
    proc = torchrun(overrides, nproc=other) if other > 1 else train_main(overrides, check=True)
    assert f"resumed from {target / 'iter_0000006'}" in proc.stdout
    moved, whole = losses(target), losses(layout_runs / f"tp{saved}")
    assert sorted(moved) == [7, 8]
    for step in moved:
        assert moved[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-5), step


def test_data_parallel_2_matches_one_process(layout_runs):
    """Every global batch holds the same samples whatever the data-parallel size (pretrain/data.py): two
    ranks of two micro-batches give one process's losses, to the order of the gradient reduction."""
    one, two = losses(layout_runs / "tp1"), losses(layout_runs / "dp2")
    assert sorted(two) == sorted(one) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), step


@pytest.mark.parametrize("saved, other", [("dp2", 1), ("tp1", 2)])
def test_training_continues_at_another_data_parallel_size(layout_runs, train_shards, tmp_path, saved, other):
    """A run saved at data parallel 2 continues in one process and the other way round: steps 7 and 8
    are the saving run's own (the same next samples; AdamW state and step carried)."""
    target = as_of_step(layout_runs / saved, tmp_path / "moved", 6)
    overrides = tiny_overrides(train_shards, target, **STEPS)
    proc = torchrun(overrides, nproc=other) if other > 1 else train_main(overrides, check=True)
    assert f"resumed from {target / 'iter_0000006'}" in proc.stdout
    moved, whole = losses(target), losses(layout_runs / saved)
    assert sorted(moved) == [7, 8]
    for step in moved:
        assert moved[step] == pytest.approx(whole[step], rel=1e-5, abs=1e-5), step


def test_data_parallel_2_stops_and_resumes_exactly_from_a_background_save(layout_runs, train_shards, tmp_path):
    """checkpoint.async_save: step 3's checkpoint is written from a host copy while steps 4 and 5 train, then
    a stop at 5 (its save waited for). The losses are the uninterrupted run's, and continuing from the
    background-written step 3 repeats the uninterrupted run to the bit."""
    run = tmp_path / "async"
    overrides = {**STEPS, "checkpoint.async_save": True, "checkpoint.keep": 0}
    proc = torchrun(tiny_overrides(train_shards, run, **overrides, **{"run.stop_at_step": 5}), check=False)
    assert proc.returncode != 0 and "stopping at step 5 (run.stop_at_step)" in proc.stdout
    reference = losses(layout_runs / "dp2")
    assert losses(run) == {step: loss for step, loss in reference.items() if step <= 5}
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000003", "iter_0000005"]
    assert (run / "latest").read_text() == "iter_0000005"
    target = as_of_step(run, tmp_path / "from3", 3)
    proc = torchrun(tiny_overrides(train_shards, target, **overrides))
    assert "tensor 1 x data 2" in proc.stdout and "resumed from" in proc.stdout
    assert losses(target) == {step: loss for step, loss in reference.items() if step > 3}


def test_impossible_layout_is_refused(train_shards, tmp_path, monkeypatch):
    """As rank 0 of a 2-process torchrun launch sees it (refused before joining any process group)."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    proc = train_main(tiny_overrides(train_shards, tmp_path / "c", **STEPS, **{"parallel.tensor": 3}))
    assert proc.returncode == 2 and "parallel.tensor (3) must divide the number of processes (2)" in proc.stderr
    proc = train_main(tiny_overrides(train_shards, tmp_path / "c", **STEPS, **{"parallel.tensor": 2, "parallel.context": 2}))
    assert proc.returncode == 2 and ("parallel.tensor x parallel.context (2 x 2 = 4) must divide the number of "
                                     "processes (2)") in proc.stderr


@pytest.mark.slow
def test_tensor_by_data_parallel_layouts_continue_each_other(train_shards, tmp_path):
    """TP 2 x DP 2 -> TP 1 x DP 4 -> TP 2 x DP 2 (4 processes each; a global batch of 8 so that DP 4 keeps
    micro-batches of 2): every step's loss is the one-process run's, to the order of the reductions. The
    TP 2 x DP 2 runs use Megatron's distributed optimizer (each rank saves its flat ranges of AdamW's
    moments, the norms' replicated over tensor-parallel ranks), the DP 4 run torch's AdamW."""
    steps = {**STEPS, "schedule.global_batch": 8, "checkpoint.keep": 0}
    megatron = {"parallel.tensor": 2, "optim.implementation": "megatron", "optim.bucket_size": 4000}
    train_main(tiny_overrides(train_shards, tmp_path / "tp1", **steps), check=True)
    proc = torchrun(tiny_overrides(train_shards, tmp_path / "tp2dp2", **steps, **megatron), nproc=4)
    assert "tensor 2 x data 2" in proc.stdout and "megatron optimizer" in proc.stdout
    to_dp4 = as_of_step(tmp_path / "tp2dp2", tmp_path / "to_dp4", 3)
    assert "tensor 1 x data 4" in torchrun(tiny_overrides(train_shards, to_dp4, **steps), nproc=4).stdout
    back = as_of_step(to_dp4, tmp_path / "back", 6)
    torchrun(tiny_overrides(train_shards, back, **steps, **megatron), nproc=4)
    one = losses(tmp_path / "tp1")
    for run, first in (("tp2dp2", 1), ("to_dp4", 4), ("back", 7)):
        got = losses(tmp_path / run)
        assert sorted(got) == list(range(first, 9)), run
        for step in got:
            assert got[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), (run, step)
