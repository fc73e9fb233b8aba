"""The MQAR benchmark: the generator is deterministic and lays out what its docstring says, the scorer
is exact, and the sweep resumes from its runs file and writes its report."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from bench.mqar_task import BOS, Vocab, loss_and_accuracy, make_batch, sequence_length
from tests.bench.scripts import ROOT, load_script

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

VOCAB = Vocab(keys=20, values=24, filler=7)


@pytest.mark.parametrize("pairs,gap,pad_to", [(1, 0, 1), (4, 16, 16), (8, 33, 16), (20, 5, 32)])
def test_layout(pairs, gap, pad_to):
    ids, pos, ans = make_batch(VOCAB, pairs, gap, 6, pad_to, torch.Generator().manual_seed(pairs + gap))
    T = sequence_length(pairs, gap, pad_to)
    assert ids.shape == (6, T) and T % pad_to == 0 and T >= 1 + 4 * pairs + gap
    assert pos.shape == ans.shape == (6, pairs)
    for b in range(6):
        row = ids[b].tolist()
        assert row[0] == BOS
        keys, values = row[1:1 + 2 * pairs:2], row[2:2 + 2 * pairs:2]
        assert all(VOCAB.key0 <= k < VOCAB.value0 for k in keys) and len(set(keys)) == pairs
        assert all(VOCAB.value0 <= v < VOCAB.filler0 for v in values) and len(set(values)) == pairs
        binding = dict(zip(keys, values))
        rest = [t for i, t in enumerate(row) if i > 2 * pairs and i not in pos[b].tolist()]
        assert all(VOCAB.filler0 <= t < VOCAB.size for t in rest), "only filler between and after the queries"
        asked = [row[p] for p in pos[b].tolist()]
        assert sorted(asked) == sorted(keys), "every key asked once"
        assert [binding[k] for k in asked] == ans[b].tolist()
        assert min(pos[b].tolist()) - 2 * pairs - 1 == gap, "G filler tokens between the last pair and the first query"
        assert not set(ans[b].tolist()) & set(row[2 * pairs + 1:]), "no answer appears as an input after the pairs"


def test_padded_to_a_longer_length():
    ids, pos, ans = make_batch(VOCAB, 3, 5, 4, 16, torch.Generator().manual_seed(0), length=64)
    assert ids.shape == (4, 64) and (ids[:, 1 + 4 * 3 + 5:] >= VOCAB.filler0).all()
    assert (pos == 1 + 2 * 3 + 5 + 2 * torch.arange(3)).all()
    with pytest.raises(ValueError, match="shorter"):
        make_batch(VOCAB, 3, 5, 4, 1, torch.Generator(), length=17)


@pytest.mark.parametrize("mix", [[], ["pairs"], ["gap"], ["pairs", "gap"]])
def test_training_mixture_draws_easier_points_at_the_full_length(mix):
    """train.mix draws each step's pairs from 1..D and/or its gap from 0..G, always at the point's
    length; without it every step is the point itself."""
    mq = load_script("mqar")
    D, G, T = 6, 20, sequence_length(6, 20, 16)
    data, seen = torch.Generator().manual_seed(0), set()
    for _ in range(60):
        ids, pos, ans = mq.training_batch(VOCAB, D, G, {"batch": 2, "mix": mix}, 16, T, data)
        assert ids.shape == (2, T)
        pairs = ans.shape[1]
        seen.add((pairs, int(pos[0, 0]) - 2 * pairs - 1))
    pairs_seen, gaps_seen = {p for p, _ in seen}, {g for _, g in seen}
    assert pairs_seen == (set(range(1, D + 1)) if "pairs" in mix else {D})
    assert gaps_seen <= set(range(G + 1)) and (len(gaps_seen) > 5 if "gap" in mix else gaps_seen == {G})


def test_deterministic_by_seed():
    a = make_batch(VOCAB, 8, 16, 4, 16, torch.Generator().manual_seed(3))
    b = make_batch(VOCAB, 8, 16, 4, 16, torch.Generator().manual_seed(3))
    c = make_batch(VOCAB, 8, 16, 4, 16, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_bad_task_is_refused():
    with pytest.raises(ValueError, match="at least as many keys"):
        make_batch(VOCAB, 21, 4, 1, 1, torch.Generator())
    with pytest.raises(ValueError, match="gap"):
        make_batch(VOCAB, 2, -1, 1, 1, torch.Generator())


def test_scorer_is_exact():
    ids, pos, ans = make_batch(VOCAB, 4, 8, 3, 16, torch.Generator().manual_seed(0))
    logits = torch.randn(3, ids.shape[1], VOCAB.size, generator=torch.Generator().manual_seed(1))
    # Make exactly the first two answers of every row the argmax, and the other two not.
    for b in range(3):
        for j in range(4):
            row = logits[b, pos[b, j]]
            row[ans[b, j]] = row.max() + 1.0 if j < 2 else row.min() - 1.0
    loss, acc = loss_and_accuracy(logits, pos, ans)
    assert acc.item() == 0.5
    picked = torch.stack([logits[b, pos[b]] for b in range(3)])
    expected = -torch.log_softmax(picked, -1).gather(-1, ans[..., None]).mean()
    torch.testing.assert_close(loss, expected)


def test_sweep_resumes_and_reports(tmp_path, capsys):
    """Two arms, one point, a few steps: runs are appended, a rerun trains nothing, the report holds
    a row per arm and the plot is written; two workers give the same runs; a different config does
    not reuse the runs."""
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar.json").read_text())
    cfg["train"].update(steps=4, eval_every=2)
    cfg["eval"].update(sequences=8, curve_sequences=8, batch=8)
    cfg["arms"] = {k: cfg["arms"][k] for k in ("lmm", "lmm-off")}
    path = tmp_path / "mqar.json"
    path.write_text(json.dumps(cfg))
    mq = load_script("mqar")
    args = ["--config", str(path), "--output", str(tmp_path / "out"), "--pairs", "4", "--gaps", "2", "--seeds", "0",
            "--threads", "1"]
    mq.main(args)  # in this process; the two-worker run below is the command line
    runs = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in runs] == ["lmm", "lmm-off"] and all(len(r["curve"]) == 2 for r in runs)
    capsys.readouterr()
    mq.main(args)
    assert "0 to train" in capsys.readouterr().err and len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    report = json.loads((tmp_path / "out.json").read_text())
    assert [r["arm"] for r in report["rows"]] == ["lmm", "lmm-off"]
    assert (tmp_path / "out.png").stat().st_size > 0 and "| lmm-off | floor | 4 | 2 |" in (tmp_path / "out.md").read_text()
    parallel = [sys.executable, str(ROOT / "bench" / "mqar.py"), *args, "--output", str(tmp_path / "par"), "--workers", "2"]
    par = subprocess.run(parallel, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert par.returncode == 0, par.stderr
    by_arm = {r["arm"]: r for r in map(json.loads, (tmp_path / "par.jsonl").read_text().splitlines())}
    for r in runs:  # two worker processes train the same runs to the same numbers
        assert (by_arm[r["arm"]]["accuracy"], by_arm[r["arm"]]["curve"]) == (r["accuracy"], r["curve"])
    changed = dict(cfg, train=dict(cfg["train"], steps=5))
    assert mq.config_hash(changed, "lmm") != report["config_hashes"]["lmm"]
    redefined = dict(cfg, arms=dict(cfg["arms"], lmm={"variant": "lmm", "role": "memory", "overrides": {"memory_depth": 1}}))
    assert mq.config_hash(redefined, "lmm") != report["config_hashes"]["lmm"]
    assert mq.config_hash(redefined, "lmm-off") == report["config_hashes"]["lmm-off"]
    resolve = mq.model_config  # a default changed in titans_megatron changes the key of every arm it reaches
    mq.model_config = lambda *a, **k: dataclasses.replace(resolve(*a, **k), memory_lr_max=0.5)
    assert mq.config_hash(cfg, "lmm") != report["config_hashes"]["lmm"]



def test_memory_defaults_do_not_rekey_arms_without_memory(monkeypatch):
    """A memory default changed in titans_megatron retrains the memory arms but not Transformer++."""
    mq = load_script("mqar")
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar.json").read_text())
    before = {arm: mq.config_hash(cfg, arm) for arm in ("transformer++", "lmm")}
    resolve = mq.model_config
    monkeypatch.setattr(mq, "model_config", lambda *a, **k: dataclasses.replace(resolve(*a, **k), memory_lr_max=0.5))
    assert mq.config_hash(cfg, "transformer++") == before["transformer++"]
    assert mq.config_hash(cfg, "lmm") != before["lmm"]


def test_gated_delta_net_defaults_rekey_only_its_arms(monkeypatch):
    """Gated DeltaNet's defaults (its gate initialisation, its widths) reach only the gdn arms' keys, so
    adding the variant left every committed Titans and Transformer++ run valid."""
    mq = load_script("mqar")
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar.json").read_text())
    arms = ("transformer++", "lmm", "gdn")
    before = {arm: mq.config_hash(cfg, arm) for arm in arms}
    resolve = mq.model_config
    for change in ({"gdn_dt_init": (1e-2, 1e-1)}, {"linear_conv_kernel_dim": 2}):
        monkeypatch.setattr(mq, "model_config", lambda *a, change=change, **k: dataclasses.replace(resolve(*a, **k), **change))
        after = {arm: mq.config_hash(cfg, arm) for arm in arms}
        assert after["transformer++"] == before["transformer++"] and after["lmm"] == before["lmm"], change
        assert after["gdn"] != before["gdn"], change

def test_config_errors_name_the_field(tmp_path):
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar.json").read_text())
    cfg["model"]["segment_length"] = 32
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    mq = load_script("mqar")
    with pytest.raises(SystemExit, match="window_size.*segment_length"):
        mq.main(["--config", str(path), "--output", str(tmp_path / "x")])
    cfg = json.loads((ROOT / "configs" / "bench" / "mqar.json").read_text())
    cfg["train"]["mix"] = ["gaps"]
    with pytest.raises(SystemExit, match="train.mix"):
        mq.check_config(cfg, "bad.json")


@pytest.mark.parametrize("name", ["mqar.json", "mqar_small.json", "mqar_ceiling.json", "mqar_screen.json", "mqar_confirm.json"])
def test_shipped_configs_hold_valid_arms(name):
    """Every arm of every shipped MQAR config makes a valid model config and recipe."""
    mq = load_script("mqar")
    cfg = json.loads((ROOT / "configs" / "bench" / name).read_text())
    mq.check_config(cfg, name)
    for arm in cfg["arms"].values():
        mq.model_config(cfg, arm, seq_length=64)
        mq.OptimSection(**dict(cfg["optim"], **arm.get("optim", {})))
