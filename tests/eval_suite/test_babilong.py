"""BABILong: the prompt is BABILong's default template, the scorer is BABILong's compare_answers (one
label, the target), ``run`` reads local files and can pass and fail, and bad files are named."""

import json
import re

import pytest

from titans_eval_suite import babilong
from titans_eval_suite.errors import EvalInputError

QA1 = [{"input": f"Mary moved to the {place}. John went to the garden. Some noise here.", "question": "Where is Mary?",
        "target": place} for place in ("bathroom", "hallway", "kitchen")]
QA5 = [{"input": f"Fred picked up the {thing} there. Fred gave the {thing} to Bill.",
        "question": "What did Fred give to Bill?", "target": thing} for thing in ("apple", "milk", "football")]


def write(root, length, task, rows):
    path = root / "babilong" / length / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data_dir(tmp_path):
    for length in ("0k", "1k"):
        write(tmp_path, length, "qa1", QA1)
        write(tmp_path, length, "qa5", QA5)
    return tmp_path


@pytest.mark.parametrize("task, target, output, question, expected", [
    ("qa1", "bathroom", " The most recent location of Mary is bathroom.", "Where is Mary?", True),
    ("qa1", "bathroom", "BATHROOM", "Where is Mary?", True),
    ("qa1", "bathroom", "\n bathroom\nJohn went to the kitchen.", "Where is Mary?", True),  # read to the newline
    ("qa1", "bathroom", "bathroom. Then the kitchen", "Where is Mary?", True),  # read to the period
    ("qa1", "bathroom", "The most recent location of Mary is kitchen.", "Where is Mary?", False),  # wrong label
    ("qa1", "bathroom", "bathroom or kitchen", "Where is Mary?", False),  # two labels
    ("qa1", "bathroom", "Mary is somewhere", "Where is Mary?", False),  # no label
    ("qa1", "bathroom", "", "Where is Mary?", False),
    ("qa2", "garden", "The football is in the garden.", "Where is the football?", True),
    ("qa3", "office", "Before the kitchen the apple was in the office.", "Where was the apple before the kitchen?",
     True),  # the question's label does not count
    ("qa4", "bedroom", "bedroom", "What is the kitchen south of?", True),
    ("qa5", "apple", "Fred gave the apple", "What did Fred give to Bill?", True),
    ("qa5", "apple", "apple and milk", "What did Fred give to Bill?", False),
    ("qa5", "Bill", "bill", "Who did Fred give the apple to?", True),
])
def test_compare_answers(task, target, output, question, expected):
    assert babilong.compare_answers(target, output, question, task) is expected


def test_the_prompt_is_the_default_template():
    prompt = babilong.format_prompt("qa1", "  Mary moved to the office.\n", "Where is Mary?")
    assert prompt.startswith(babilong.DEFAULT_PROMPTS["qa1"]["instruction"] + "\n\n<example>\n")
    assert prompt.endswith("Do not write anything else after that.\n\n<context>\nMary moved to the office.\n"
                           "</context>\n\nQuestion: Where is Mary?\nAnswer:")


def test_run_on_the_tiny_model(mag, data_dir):
    result = babilong.run(mag, str(data_dir), ["qa1", "qa5"], ["0k", "1k"], samples=2, max_new_tokens=6,
                          progress=False)
    json.dumps(result)
    assert result["scores"].keys() == {"qa1", "qa5"}
    assert all(by_length.keys() == {"0k", "1k"} and all(0 <= v <= 1 for v in by_length.values())
               for by_length in result["scores"].values())
    records = result["records"]
    assert len(records) == 8  # 2 tasks x 2 lengths x the first 2 samples
    for r in records:
        assert r["correct"] == babilong.compare_answers(r["target"], r["generated"], r["question"], r["task"])


class Oracle:
    """Answers each question from a table (``wrong``: with another label of the task)."""

    def __init__(self, model, wrong=False):
        self.model, self.wrong, self.name = model, wrong, "oracle"
        self.bos_id, self.eos_id = model.bos_id, model.eos_id
        self.encode, self.decode = model.encode, model.decode

    def generate(self, prompt, max_new_tokens, stop=()):
        text = self.decode(prompt)
        context = re.search(r"<context>\n(.*)\n</context>", text, re.S).group(1)
        target = next(r["target"] for r in QA1 + QA5 if r["input"] == context)
        answer = {"bathroom": "kitchen", "hallway": "office", "kitchen": "garden", "apple": "milk",
                  "milk": "apple", "football": "milk"}[target] if self.wrong else target
        return self.encode(f" {answer}.\nQuestion: where is everyone?")


@pytest.mark.parametrize("wrong, expected", [(False, 1.0), (True, 0.0)])
def test_the_pipeline_can_pass_and_fail(mag, data_dir, wrong, expected):
    result = babilong.run(Oracle(mag, wrong), str(data_dir), ["qa1", "qa5"], ["0k"], progress=False)
    assert result["scores"] == {"qa1": {"0k": expected}, "qa5": {"0k": expected}}
    assert len(result["records"]) == 6


def test_bad_inputs_are_named(mag, tmp_path):
    missing = tmp_path / "babilong" / "2k" / "qa1.jsonl"
    with pytest.raises(EvalInputError, match=re.escape(f"{missing} not found")):
        babilong.check(str(tmp_path), ["qa1"], ["2k"])
    with pytest.raises(EvalInputError, match=re.escape(f"{missing} not found")):
        babilong.run(mag, str(tmp_path), ["qa1"], ["2k"], progress=False)
    with pytest.raises(EvalInputError, match="unknown BABILong task 'qa7'; known: qa1, qa2, qa3, qa4, qa5"):
        babilong.check(str(tmp_path), ["qa1", "qa7"], ["0k"])
    path = write(tmp_path, "0k", "qa1", [QA1[0], "{not json\n"])
    with pytest.raises(EvalInputError, match=re.escape(f"{path} line 2: not JSON")):
        babilong.check(str(tmp_path), ["qa1"], ["0k"])
    path = write(tmp_path, "0k", "qa2", [{"input": "Mary moved to the office.", "question": "Where is Mary?"}])
    with pytest.raises(EvalInputError, match=re.escape(f"{path} line 1: missing field 'target'")):
        babilong.run(mag, str(tmp_path), ["qa2"], ["0k"], progress=False)
    path = write(tmp_path, "0k", "qa3", ["\n"])
    with pytest.raises(EvalInputError, match=re.escape(f"{path} holds no samples")):
        babilong.check(str(tmp_path), ["qa3"], ["0k"])
    with pytest.raises(EvalInputError, match="pass a data folder"):
        babilong.check(None, ["qa1"], ["0k"])
