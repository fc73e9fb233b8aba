"""The lm-evaluation-harness adapter on the tiny MAG checkpoint, offline: its log-likelihoods equal
EvalModel.score and a direct log-softmax of one forward (contexts beyond the training context
included), rolling log-likelihood is the whole document's, generation stops where lm-eval's HF adapter
would cut, lm-eval runs the shipped task YAMLs end to end with results recomputable from the adapter,
and a misspelled task is named before any model work."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.models.utils import postprocess_generated_text

from titans_eval_suite.harness import TitansHarnessLM, check_tasks, run_tasks, task_metrics
from titans_eval_suite.errors import EvalInputError
from titans_eval_suite.settings import LOCAL_TASKS
from tests.helpers import ROOT

TASKS = ROOT / "tests" / "eval_suite" / "tasks"  # their data_files are relative to ROOT
ABS = 1e-4
LONG = ("Water is a chemical substance. It is the main part of the oceans, lakes and rivers of the Earth, and the "
        "fluids of most living things. In the ocean, water covers most of the surface of")


@pytest.fixture(scope="module")
def lm(mag):
    return TitansHarnessLM(model=mag)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def instances(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def direct(mag, ids):
    """log p(ids[i] | ids[:i]) for i >= 1 and whether each is the argmax, from one whole forward."""
    with torch.no_grad():
        logp = F.log_softmax(mag.model(torch.tensor([ids[:-1]])).float(), -1)[0]
    target = torch.tensor(ids[1:])
    return logp.gather(-1, target[:, None])[:, 0].tolist(), (logp.argmax(-1) == target).tolist()


def read(name):
    return [json.loads(line) for line in (TASKS / name).read_text().splitlines()]


def test_loglikelihood_equals_score_and_a_direct_forward(lm, mag):
    pairs = [("", " The history of science"), ("Water is a chemical", " substance."), (LONG, " the planet"),
             ("A library is a", " collection of books.")]
    got = lm.loglikelihood(instances("loglikelihood", pairs), disable_tqdm=True)
    assert len(mag.encode(LONG)) > mag.max_length  # streamed, not truncated
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        whole = [mag.bos_id] + mag.encode(context + continuation)
        n = 1 + len(mag.encode(context))
        scored = mag.score([(whole[:n], whole[n:])])[0]
        logprobs, argmax = direct(mag, whole)
        assert logprob == pytest.approx(sum(scored.logprobs), abs=ABS)
        assert logprob == pytest.approx(sum(logprobs[n - 1:]), abs=ABS)
        assert greedy == all(argmax[n - 1:])


def test_is_greedy_and_empty_continuations(lm, mag):
    context = [mag.bos_id] + mag.encode("Water is a chemical")
    greedy = mag.generate(context, 2)
    assert greedy
    other = (greedy[0] + 1) % mag.tokenizer.GetPieceSize()
    got = lm._loglikelihood_tokens([(None, context, greedy), (None, context, [other]), (None, context, [])],
                                   disable_tqdm=True)
    assert [g for _, g in got] == [True, False, True] and got[2][0] == 0.0
    assert got[1][0] == pytest.approx(direct(mag, context + [other])[0][-1], abs=ABS)


def test_rolling_is_the_whole_document(lm, mag):
    docs = [d["text"] for d in read("titans_test_text.jsonl")] + [""]
    assert max(len(mag.encode(d)) for d in docs) > 2 * mag.max_length  # several training contexts long
    got = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(d,) for d in docs]), disable_tqdm=True)
    for doc, total in zip(docs, got):
        expected = sum(direct(mag, [mag.bos_id] + mag.encode(doc))[0]) if doc else 0.0
        assert total == pytest.approx(expected, abs=ABS)


SCRIPT = "blue sky. Then more\n\nQuestion: next"


def scripted(mag, calls):
    """EvalModel.generate's contract over a fixed continuation (the tiny model only repeats newlines)."""
    tokens = mag.encode(SCRIPT)

    def generate(prompt, max_new_tokens, stop=()):
        calls.append(set(stop))
        out = []
        for t in tokens[:max_new_tokens]:
            if t in stop or t == mag.eos_id:
                break
            out.append(t)
        return out
    return generate


@pytest.mark.parametrize("until", [["."], ["\n"], ["\n\n"], ["Question"], [" Then", "."], ["more\n"], ["e"], []])
def test_generation_is_cut_where_lm_eval_cuts(lm, mag, monkeypatch, until):
    """Equal to generating max_gen_toks and cutting at the first stop string (HF's adapter), also where
    generation stopped early at a piece that is exactly a stop string."""
    calls = []
    monkeypatch.setattr(mag, "generate", scripted(mag, calls))
    max_gen = len(mag.encode(SCRIPT)) - 1
    kwargs = {"until": until, "max_gen_toks": max_gen}
    [text] = lm.generate_until(instances("generate_until", [("Answer:", kwargs)]), disable_tqdm=True)
    assert text == postprocess_generated_text(mag.decode(mag.encode(SCRIPT)[:max_gen]), until, None)
    if until:
        assert len(text) < len(SCRIPT) - 1
    if until == ["."]:
        assert calls[0] and text == "blue sky"  # stopped at the "." piece


def test_generation_on_the_model(lm, mag):
    prompt = "Question: What colour is the sky?\nAnswer:"
    ids = mag.generate([mag.bos_id] + mag.encode(prompt), 4)
    [text] = lm.generate_until(instances("generate_until", [(prompt, {"until": [], "max_gen_toks": 4})]),
                               disable_tqdm=True)
    assert text == mag.decode(ids)
    assert lm._stop_ids(["\n\n"]) == [] and lm._stop_ids(["\n"]) == lm._pieces_by_text["\n"]
    with pytest.raises(EvalInputError, match="sampling"):
        lm.generate_until(instances("generate_until", [(prompt, {"do_sample": True, "temperature": 1.0})]),
                          disable_tqdm=True)


def test_simple_evaluate_runs_the_shipped_tasks(checkpoints, lm, offline):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model="titans", model_args=f"checkpoint={checkpoints['mag']},batch_size=3",
                                  tasks=["titans_test_mc", "titans_test_rolling", "titans_test_gen"],
                                  task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
                                  bootstrap_iters=0, log_samples=True)
    results, samples = out["results"], out["samples"]
    assert out["config"]["checkpoint"] == "mag"

    # multiple choice: every choice scored alone, so lm-eval's request order cannot matter
    docs, correct, correct_norm = read("titans_test_mc.jsonl"), 0, 0
    for doc, sample in zip(docs, sorted(samples["titans_test_mc"], key=lambda s: s["doc_id"])):
        lls = [lm.loglikelihood(instances("loglikelihood", [(doc["question"], " " + c)]), disable_tqdm=True)[0][0]
               for c in doc["choices"]]
        assert [r[0] for r in sample["filtered_resps"]] == pytest.approx(lls, abs=ABS)
        correct += max(range(len(lls)), key=lambda i: lls[i]) == doc["label"]
        correct_norm += max(range(len(lls)), key=lambda i: lls[i] / len(doc["choices"][i])) == doc["label"]
    assert results["titans_test_mc"]["acc,none"] == pytest.approx(correct / len(docs))
    assert results["titans_test_mc"]["acc_norm,none"] == pytest.approx(correct_norm / len(docs))

    texts = [d["text"] for d in read("titans_test_text.jsonl")]
    lls = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    words = sum(len(re.split(r"\s+", t)) for t in texts)  # lm-eval's word count
    assert results["titans_test_rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / words),
                                                                                  rel=ABS)

    prompts = read("titans_test_gen.jsonl")
    kwargs = {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False}
    texts = lm.generate_until(instances("generate_until", [(p["prompt"], kwargs) for p in prompts]),
                              disable_tqdm=True)
    assert sorted(s["filtered_resps"][0] for s in samples["titans_test_gen"]) == sorted(texts)
    assert results["titans_test_gen"]["exact_match,none"] == pytest.approx(
        sum(t == p["answer"] for t, p in zip(texts, prompts)) / len(prompts))


def test_run_tasks_reports_the_paper_metrics_first(mag, offline):
    out = run_tasks(mag, ["titans_test_mc"], include_path=str(TASKS), limit=4, bootstrap_iters=0)
    task = out["titans_test_mc"]
    assert task["acc"] == task["lm_eval"]["results"]["acc,none"] and 0 <= task["acc_norm"] <= 1
    assert task["lm_eval"]["n-samples"]["effective"] == 4
    json.dumps(out)  # results.json-ready
    metrics = task_metrics({"acc,none": 0.5, "acc_norm,none": 0.25, "exact_match,strict": 1.0, "alias": "x"},
                           ["acc_norm"])
    assert list(metrics) == ["acc_norm", "acc", "exact_match,strict"]


def test_unknown_tasks_are_named_before_any_model_work():
    with pytest.raises(EvalInputError, match=r"'hellaswagg' \(close: hellaswag.*'titans_test_mcc' \(close: titans_"):
        run_tasks(object(), ["piqa", "hellaswagg", "titans_test_mcc"], include_path=str(TASKS))
    with pytest.raises(EvalInputError, match="no such folder"):
        run_tasks(object(), ["piqa"], include_path=str(TASKS / "missing"))
    # the caller's own tasks are offered too: eval_suite/run.py's needle, wikitext103, ...
    with pytest.raises(EvalInputError, match=r"'needl' \(close: needle.*neither a local task \(wikitext103, "):
        check_tasks(["titans_test_mc", "needl"], str(TASKS), LOCAL_TASKS)


@pytest.mark.parametrize("task, message", [
    ("titans_test_missing_data", r"'titans_test_missing_data': its data cannot be loaded \(FileNotFoundError: .*"
                                 r"no_such_file.jsonl"),
    ("titans_test_sampling", "'titans_test_sampling' asks for sampling"),
])
@pytest.mark.slow  # lm-eval builds its task index (~35 s)
def test_tasks_that_cannot_run_are_named_before_any_model_work(offline, task, message):
    """check_tasks builds lm-eval's task objects, so a dataset that cannot be loaded fails here."""
    with pytest.raises(EvalInputError, match=f"lm-evaluation-harness task {message}"):
        run_tasks(object(), ["titans_test_mc", task], include_path=str(TASKS))


def test_built_tasks_are_reused(mag, offline):
    """eval_suite/run.py builds the tasks once (check_tasks) and runs every checkpoint on them: the same
    results as from the names, run after run."""
    built = check_tasks(["titans_test_mc", "titans_test_gen"], str(TASKS))
    assert [t.task_name for t in built] == ["titans_test_mc", "titans_test_gen"]
    runs = [run_tasks(mag, tasks, include_path=str(TASKS), limit=3, bootstrap_iters=0)
            for tasks in (built, built, ["titans_test_mc", "titans_test_gen"])]
    assert runs[0] == runs[1] == runs[2]


def test_command_line(checkpoints, tmp_path):
    """`python -m titans_eval_suite.harness` is lm-eval's command line with the model registered."""
    proc = subprocess.run([sys.executable, "-m", "titans_eval_suite.harness", "run", "--model", "titans", "--model_args",
                           f"checkpoint={checkpoints['mag']}", "--tasks", "titans_test_mc", "--include_path",
                           str(TASKS), "--limit", "2", "--output_path", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"titans_test_mc.*acc", proc.stdout)
    assert list(tmp_path.rglob("results_*.json"))
