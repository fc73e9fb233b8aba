"""eval_suite/run.py end to end on two tiny trained checkpoints (Titans-MAG and Transformer++): every
output written and consistent with its sources, and bad inputs refused before any model work."""

import json
import subprocess
import sys

import pytest

from titans_eval_suite import report
from titans_eval_suite import run as evaluation
from tests.helpers import ROOT

TASKS_DIR = ROOT / "tests" / "eval_suite" / "tasks"
FAST = ["--set", "needle.lengths=[256,320]", "--set", "needle.depths=[0,100]", "--set", "needle.samples=1",
        "--set", "needle.kinds=[\"passkey\",\"number\"]", "--set", "babilong.lengths=[\"0k\"]",
        "--set", "babilong.tasks=[\"qa1\"]", "--set", "babilong.samples=3", "--set", "harness.limit=4",
        "--set", f"harness.include_path={json.dumps(str(TASKS_DIR))}"]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "eval_suite" / "run.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)  # the shipped task YAMLs name their data files from here


@pytest.fixture(scope="module")
def evaluated(checkpoints, babilong_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    harness_task = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))[0]
    # an iteration folder given alone (named after its run and step); spaces and a trailing comma in --tasks
    proc = run("--checkpoint", checkpoints["mag"], "--checkpoint", checkpoints["transformer++"] / "iter_0000008",
               "--data-dir", babilong_dir, "--output", out, "--tasks",
               f"wikitext103, lambada,needle , babilong,{harness_task},", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), harness_task


def test_results_hold_every_task_for_every_checkpoint(evaluated, checkpoints):
    out, results, harness_task = evaluated
    assert [c["variant"] for c in results["checkpoints"]] == ["mag", "transformer++"]
    assert [c["name"] for c in results["checkpoints"]] == ["mag", "transformerpp@8"]
    assert [c["log_dir"] for c in results["checkpoints"]] == [str(checkpoints[v] / "tensorboard")
                                                             for v in ("mag", "transformer++")]  # absolute
    for c in results["checkpoints"]:
        r = c["results"]
        assert r["wikitext103"]["word_perplexity"] > 1 and 0 <= r["lambada"]["accuracy"] <= 1
        assert set(r["needle"]) == {"passkey", "number"} and set(r["needle"]["passkey"]) == {"256", "320"}
        assert set(r["babilong"]) == {"qa1"} and 0 <= r["babilong"]["qa1"]["0k"] <= 1
        assert harness_task in r["harness"]
        assert c["step"] == 8 and c["parameters"] > 0
        assert (out / f"samples_{report.slug(c['name'])}.json").is_file()


def test_report_has_a_row_per_checkpoint_with_the_values(evaluated):
    out, results, _ = evaluated
    text = (out / "report.md").read_text()
    for c in results["checkpoints"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {report.label(c)} |") and "|" in line)
        assert f"{c['results']['wikitext103']['word_perplexity']:.2f}" in row
        assert f"{c['results']['lambada']['accuracy'] * 100:.2f}" in row
    assert "S-NIAH-PK 256" in text and "## BABILong" in text


def test_figures_are_images(evaluated):
    import matplotlib.image

    out, results, _ = evaluated
    for c in results["checkpoints"]:
        assert matplotlib.image.imread(out / f"needle_{report.slug(c['name'])}.png").ndim == 3
    assert matplotlib.image.imread(out / "loss_curves.png").ndim == 3


def test_loss_curves_read_the_tensorboard_events(checkpoints):
    """The event files hold what the trainer logged (metrics.jsonl is the same records as JSON)."""
    log_dir = checkpoints["mag"] / "tensorboard"
    scalars = report.read_scalars(str(log_dir))
    logged = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("train/loss", "loss"), ("val/loss", "val_loss")):
        expected = [(r["step"], r[key]) for r in logged if key in r]
        assert [s for s, _ in scalars[tag]] == [s for s, _ in expected]
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in expected], rel=1e-6)  # float32 events


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/run"], "checkpoint /nonexistent/run: no such folder"),
    (["--tasks", "wikitext103"], "pass --data-dir"),
    # test_harness.py's include_path: lm-eval's task index (seconds) is built once for both
    (["--tasks", "needle,hellaswagg", "--set", f"harness.include_path={json.dumps(str(TASKS_DIR))}"], "hellaswagg"),
    (["--tasks", "needle", "--set", "needle.kinds=[\"passkey\",\"haystack\"]"], "haystack"),
    (["--tasks", "needle", "--set", "needle.lenghts=[256]"], "unknown key needle.lenghts"),
])
def test_bad_inputs_fail_before_any_model_work(checkpoints, capsys, args, message):
    """eval_suite/run.py's main in this process (the command line itself runs in ``evaluated``)."""
    full = args if "--checkpoint" in args else ["--checkpoint", checkpoints["mag"], *args]
    assert evaluation.main(list(map(str, full))) == 2
    out, err = capsys.readouterr()
    assert message in err, err[-2000:]
    assert "== " not in out  # no checkpoint was loaded


def test_wrong_data_format_is_named(checkpoints, tmp_path, capsys):
    (tmp_path / "lambada_openai").mkdir()
    (tmp_path / "lambada_openai" / "test.jsonl").write_text('{"passage": "no text field here"}\n')
    assert evaluation.main(["--checkpoint", str(checkpoints["mag"]), "--tasks", "lambada", "--data-dir", str(tmp_path),
                            "--output", str(tmp_path / "out")]) == 2
    assert "test.jsonl line 1: expected a field 'text'" in capsys.readouterr().err


def test_task_names_are_stripped():
    assert evaluation.task_names(" needle, lambada,,") == ["needle", "lambada"]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "needle", "--set", "needle.samples=0"], "needle.samples must be a number >= 1, got 0"),
    (["--tasks", "needle", "--set", "needle.lengths=[256,64]"], "(iter_0000008): needle length 64 is too small"),
    (["--tasks", "wikitext103", "--set", "perplexity.stride=33"], "perplexity.stride 33: more than the training "
                                                                  "context of checkpoint"),
    (["--tasks", "needle", "--output", "{file}"], "--output {file}: exists and is not a folder"),
    (["--tasks", "needle", "--checkpoint", "{missing}"], "checkpoint {missing}: its 'latest' names 'iter_0000099'"),
    (["--tasks", "babilong", "--set", "babilong.samples=0"], "babilong.samples must be a number >= 1"),
    (["--tasks", "needle", "--set", "needle.haystack=\"{bad}\"", "--set", "needle.kinds=[\"word\"]"],
     "needle haystack: {bad} line 1: not UTF-8"),
])
def test_inputs_fail_before_any_model_is_built(checkpoints, eval_data, tmp_path, capsys, args, message):
    """In-process: main refuses with exit 2 before EvalModel.load, whose absence shows in stdout."""
    paths = {"file": tmp_path / "results", "missing": tmp_path / "run", "bad": tmp_path / "hay.jsonl"}
    paths["file"].write_text("")
    paths["missing"].mkdir()
    (paths["missing"] / "latest").write_text("iter_0000099")
    paths["bad"].write_bytes(b"\xff\xfe")
    args = [a.format(**paths) for a in args]
    output = [] if "--output" in args else ["--output", str(tmp_path / "out")]
    code = evaluation.main(["--checkpoint", str(checkpoints["mag"]), "--data-dir", str(eval_data), *output, *args])
    captured = capsys.readouterr()
    assert code == 2 and "error: " in captured.err and message.format(**paths) in captured.err, captured.err
    assert "== " not in captured.out


def test_a_late_failure_keeps_what_finished(checkpoints, mag, tmp_path, monkeypatch, capsys):
    """A failure after the checks (here: the second checkpoint's BABILong) writes the first checkpoint's
    results and the second's finished task, and says why the second is incomplete."""
    import copy

    from titans_eval_suite.errors import EvalInputError

    def evaluate(model, config, data_dir, harness_tasks, out, log=print):
        out["needle"] = {"scores": {"passkey": {"256": {"0": 1.0}}}, "records": [{"sample": 0}]}
        if model.name != "mag":
            raise EvalInputError("BABILong: a file went missing")
        return out

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    monkeypatch.setattr(evaluation.EvalModel, "load", lambda path, batch_size, checked: copy.copy(mag))
    out = tmp_path / "out"
    code = evaluation.main(["--checkpoint", str(checkpoints["mag"]), "--checkpoint", str(checkpoints["mag"]),
                            "--tasks", "needle", "--output", str(out)])
    assert code == 2 and "error: BABILong: a file went missing" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())["checkpoints"]
    assert [c["name"] for c in results] == ["mag", "mag-2"] and "error" not in results[0]
    assert results[1]["error"] == "BABILong: a file went missing"
    assert all(c["results"]["needle"] == {"passkey": {"256": {"0": 1.0}}} for c in results)
    assert (out / "samples_mag-2.json").is_file() and "mag-2 is incomplete" in (out / "report.md").read_text()


def test_log_dir_is_absolute(checkpoints, mag, monkeypatch):
    """results.json's path is absolute: so is log_dir, found from a relative --checkpoint."""
    monkeypatch.chdir(checkpoints["mag"].parent)
    assert evaluation.find_log_dir("mag/iter_0000008", mag) == str(checkpoints["mag"] / "tensorboard")
