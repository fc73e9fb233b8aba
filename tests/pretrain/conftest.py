"""The reference runs the layout tests compare against, trained once per session (and once for both
pytest-xdist workers: test_distributed.py and test_megatron_path.py share them)."""

import pytest

from tests.helpers import shared_across_workers, tiny_overrides, torchrun, train_main

# checkpoints at 3, 6 and 8 (the newest two kept): a resume from step 6 continues to the run's own 7 and 8
STEPS = {"schedule.train_steps": 8, "checkpoint.interval": 3, "eval.interval": 0}


@pytest.fixture(scope="session")
def layout_runs(train_shards, tmp_path_factory):
    """The same 8 steps in one process (``tp1``), at tensor parallel 2 (``tp2``) and at data parallel 2
    (``dp2``), all on torch's optimizer path (what ``auto`` is on CPU)."""
    def build(root):
        train_main(tiny_overrides(train_shards, root / "tp1", **STEPS), check=True)
        assert "tensor 2 x data 1" in torchrun(tiny_overrides(train_shards, root / "tp2", **STEPS,
                                                              **{"parallel.tensor": 2})).stdout
        assert "tensor 1 x data 2" in torchrun(tiny_overrides(train_shards, root / "dp2", **STEPS)).stdout

    return shared_across_workers(tmp_path_factory, "layout_runs", build)
