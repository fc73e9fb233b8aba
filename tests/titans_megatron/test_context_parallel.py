"""Context parallelism's layouts: the all-to-all between sequence shards and head shards over gloo,
against the same tensors whole (values and gradients), and the per-head parameter slices."""

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT
from titans_megatron.context_parallel import local_heads, split_sequence


@pytest.mark.process
def test_to_heads_and_back_over_gloo_equal_slicing_the_whole_tensors(tmp_path):
    """One launch of 4 ranks: Megatron's context-parallel group of 4, and two explicit groups of 2."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           str(ROOT / "tests" / "titans_megatron" / "cp_layout_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for cp in (2, 4):
        g = torch.Generator().manual_seed(0)  # the worker's draws
        a, b = torch.randn(12, 3, 8, generator=g), torch.randn(12, 3, 4 * cp, generator=g)
        wa, wb, wy = (torch.randn(*shape, generator=g) for shape in ((12, 3, 8 // cp), (12, 3, 4), (12 // cp, 3, 8)))
        A, B = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = sum((A[:, :, r * 8 // cp:(r + 1) * 8 // cp] * wa).sum() + (B[:, :, 4 * r:4 * r + 4] * wb).sum()
                   + (split_sequence(A, 0, cp, r) * wy).sum() for r in range(cp))
        loss.backward()
        for world_rank in range(4):
            got = torch.load(tmp_path / f"cp{cp}_rank{world_rank}.pt")
            r = got["rank"]
            assert r == world_rank % cp
            assert torch.equal(got["ha"], a[:, :, r * 8 // cp:(r + 1) * 8 // cp])  # its heads, every position
            assert torch.equal(got["hb"], b[:, :, 4 * r:4 * r + 4])
            assert torch.equal(got["back"], split_sequence(a, 0, cp, r))  # and back to its positions, every head
            torch.testing.assert_close(got["ga"], split_sequence(A.grad, 0, cp, r))
            torch.testing.assert_close(got["gb"], split_sequence(B.grad, 0, cp, r))


def test_local_heads_slices_each_section_and_passes_gradients_back():
    p = torch.arange(24.0).reshape(12, 2).requires_grad_()
    assert torch.equal(local_heads(p, 0, 2, 1), p[6:])
    got = local_heads(p, 0, 2, 1, sections=(4, 4, 4))  # [q; k; v] rows, each split in two
    assert torch.equal(got, torch.cat([p[2:4], p[6:8], p[10:12]]))
    got.sum().backward()
    assert p.grad[[2, 3, 6, 7, 10, 11]].eq(1).all() and p.grad.sum() == 12
    assert local_heads(p, 0, 1, 0) is p


def test_split_sequence_names_an_uneven_split():
    with pytest.raises(ValueError, match="13 positions does not split into 2"):
        split_sequence(torch.zeros(13, 1), 0, 2, 0)


def test_config_names_heads_that_do_not_split():
    from tests.titans_megatron.model_configs import small_config

    with pytest.raises(ValueError, match=r"num_attention_heads \(2\) must be a multiple of .* \(4\)"):
        small_config("mag", context_parallel_size=4)
    with pytest.raises(ValueError, match="linear_num_key_heads .* must be a multiple"):
        small_config("gdn", context_parallel_size=4)


CP_VARIANTS = ["transformer++", "lmm", "mag", "mal", "mal-res", "mac", "mac-own", "gdn"]


@pytest.fixture(scope="module")
def cp_runs(tmp_path_factory):
    """runs(nproc, tensor) -> {sequence_parallel: {variant: results}}: one launch per layout, both
    sequence-parallel settings in it where tensor > 1 (a launch's start costs more than its work)."""
    done = {}

    def runs(nproc, tensor):
        if (nproc, tensor) not in done:
            out = tmp_path_factory.mktemp("cp") / f"cp_{nproc}_{tensor}.pt"
            flags = "0,1" if tensor > 1 else "0"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   str(ROOT / "tests" / "titans_megatron" / "cp_worker.py"), str(out), str(tensor),
                   ",".join(CP_VARIANTS), flags]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[nproc, tensor] = torch.load(out)
        return done[nproc, tensor]

    return runs


@pytest.fixture(scope="module")
def cp_reference_runs():
    from tests.titans_megatron.cp_reference import reference

    return {v: reference(v) for v in CP_VARIANTS}


@pytest.mark.process
@pytest.mark.parametrize("nproc, tensor, sequence_parallel", [(2, 1, False), (4, 2, False), (4, 2, True)],
                         ids=["cp2", "tp2xcp2", "tp2xcp2-sp"])
def test_context_parallel_gives_the_logits_and_gradients_of_one_rank(cp_reference_runs, cp_runs, nproc, tensor,
                                                                      sequence_parallel):
    from tests.titans_megatron.tp_reference import assembled_grads, assert_equal_fp32

    runs = cp_runs(nproc, tensor)[sequence_parallel]
    for variant in CP_VARIANTS:
        # one all-to-all into heads and one back per mixer (MAL twice: its memory layer returns to hidden
        # space, the attention's input)
        mixers = runs[variant]["mixers"]
        assert mixers and runs[variant]["all_to_alls"] == sum(4 if m == "MALMixer" else 2 for m in mixers), \
            (variant, mixers, runs[variant]["all_to_alls"])
        model, logits = cp_reference_runs[variant]
        assert_equal_fp32(runs[variant]["logits"], logits.detach(), f"{variant} logits")
        expected, grads = assembled_grads(model), runs[variant]["grads"]
        assert sorted(grads) == sorted(expected)  # every parameter's gradient compared
        for name, g in expected.items():
            assert_equal_fp32(grads[name], g, f"{variant} {name}")
