"""BABILong qa1-qa5 from local files: BABILong's default prompts, greedy answers, BABILong's scorer.

Files (``eval_suite/download.py`` writes them on a connected machine, once)::

    DATA_DIR/babilong/<length>/<task>.jsonl

``length`` is BABILong's length name (0k, 1k, 2k, 4k, 8k, 16k, 32k, 64k, 128k, ...; the configs of
``RMT-team/babilong`` on the Hugging Face hub), ``task`` qa1 ... qa5, and each line one sample with the
dataset's fields ``{"input": the long context, "question": ..., "target": the one-word answer}``.

Prompt: BABILong's ``DEFAULT_TEMPLATE`` with its ``DEFAULT_PROMPTS`` (instruction, in-context examples,
post-prompt; the text of babilong/prompts.py in github.com/booydar/babilong), the setting of the
BABILong leaderboard, formatted as its ``get_formatted_input`` does (context stripped, the whole
stripped), then ``ANSWER_PREFIX`` ("\\nAnswer:", the form of the examples) so that a base model, which
has no chat template, answers instead of continuing the question (newlines shown as such)::

    {instruction}

    {examples}

    {post_prompt}

    <context>
    {context}
    </context>

    Question: {question}
    Answer:

The model reads ``BOS + tokens`` through EvalModel's streaming generation (memory constant in the
context length).

Score (``compare_answers``): BABILong's ``compare_answers`` for qa1-qa5: the output lower-cased and cut
at its first ``.`` and at ``<context>`` / ``<example>`` / ``question``; the task's labels (locations, or
qa5's names and objects; ``TASK_LABELS``) found in it as substrings, less those the question mentions;
correct when that set is exactly {target}. Two differences from the official code, both for base models
that keep writing after their answer: leading whitespace is stripped and the output is also cut at its
first newline (the official code would count labels from the next made-up line), and the cut at
"question" is applied after lower-casing (the official code splits at "Question" after lower-casing, so
never).
"""

import os
from typing import Dict, List, Optional, Sequence

from titans_eval_suite import jsonl
from titans_eval_suite.errors import EvalInputError
from titans_eval_suite.model import EvalModel

TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
FIELDS = ("input", "question", "target")
DEFAULT_LENGTHS = ("0k", "1k", "2k", "4k")
ANSWER_PREFIX = "\nAnswer:"

# babilong/metrics.py
TASK_LABELS = {
    "qa1": {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"},
    "qa2": {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"},
    "qa3": {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"},
    "qa4": {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"},
    "qa5": {"Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"},
}
OUTPUT_CUTS = (".", "<context>", "<example>", "question")  # the output is read up to the first of each

# babilong/prompts.py, verbatim (typos included: these strings define the benchmark's inputs)
TASK_TEMPLATE = "{instruction}\n\n{examples}\n\n{post_prompt}"
USER_TEMPLATE = "<context>\n{context}\n</context>\n\nQuestion: {question}"
DEFAULT_TEMPLATE = f"{TASK_TEMPLATE}\n\n{USER_TEMPLATE}"
DEFAULT_PROMPTS = {
    "qa1": {
        "instruction":
            "I will give you context with the facts about positions of different persons hidden in some random text "
            "and a question. You need to answer the question based only on the information from the facts. "
            "If a person was in different locations, use the latest location to answer the question.",
        "examples":
            "<example>\n"
            "Charlie went to the hallway. Judith come back to the kitchen. Charlie travelled to balcony. "
            "Where is Charlie?\n"
            "Answer: The most recent location of Charlie is balcony.\n"
            "</example>\n\n"
            "<example>\n"
            "Alan moved to the garage. Charlie went to the beach. Alan went to the shop. Rouse "
            "travelled to balcony. Where is Alan?\n"
            "Answer: The most recent location of Alan is shop.\n"
            "</example>",
        "post_prompt":
            "Always return your answer in the following format: "
            "The most recent location of ’person’ is ’location’. Do not write anything else after that.",
    },
    "qa2": {
        "instruction":
            "I give you context with the facts about locations and actions of different persons "
            "hidden in some random text and a question."
            "You need to answer the question based only on the information from the facts.\n"
            "If a person got an item in the first location and travelled to the second location "
            "the item is also in the second location. "
            "If a person dropped an item in the first location and moved to the second location "
            "the item remains in the first location.",
        "examples":
            "<example>\n"
            "Charlie went to the kitchen. Charlie got a bottle. Charlie moved to the balcony. "
            "Where is the bottle?\n"
            "Answer: The bottle is in the balcony.\n"
            "</example>\n"
            "<example>\n"
            "Alan moved to the garage. Alan got a screw driver. Alan moved to the kitchen. Where "
            "is the screw driver?\n"
            "Answer: The screw driver is in the kitchen.\n"
            "</example>",
        "post_prompt":
            "Always return your answer in the following format: The ’item’ is in ’location’. "
            "Do not write anything else after that.",
    },
    "qa3": {
        "instruction":
            "I give you context with the facts about locations and actions of different persons "
            "hidden in some random text and a question. "
            "You need to answer the question based only on the information from the facts.\n"
            "If a person got an item in the first location and travelled to the second location "
            "the item is also in the second location. "
            "If a person dropped an item in the first location and moved to the second location "
            "the item remains in the first location.",
        "examples":
            "<example>\n"
            "John journeyed to the bedroom. Mary grabbed the apple. Mary went back to the bathroom. "
            "Daniel journeyed to the bedroom. Daniel moved to the garden. Mary travelled to the kitchen. "
            "Where was the apple before the kitchen?\n"
            "Answer: Before the kitchen the apple was in the bathroom.\n"
            "</example>\n"
            "<example>\n"
            "John went back to the bedroom. John went back to the garden. John went back to the kitchen. "
            "Sandra took the football. Sandra travelled to the garden. Sandra journeyed to the bedroom. "
            "Where was the football before the bedroom?\n"
            "Answer: Before the bedroom the football was in the garden.\n"
            "</example>",
        "post_prompt":
            "Always return your answer in the following format: "
            "Before the $location_1$ the $item$ was in the $location_2$. Do not write anything else after that.",
    },
    "qa4": {
        "instruction":
            "I will give you context with the facts about different people, their location and actions, hidden in "
            "some random text and a question. "
            "You need to answer the question based only on the information from the facts.",
        "examples":
            "<example>\n"
            "The hallway is south of the kitchen. The bedroom is north of the kitchen. "
            "What is the kitchen south of?\n"
            "Answer: bedroom\n"
            "</example>\n"
            "<example>\n"
            "The garden is west of the bedroom. The bedroom is west of the kitchen. What is west of the bedroom?\n"
            "Answer: garden\n"
            "</example>",
        "post_prompt":
            "Your answer should contain only one word - location. Do not write anything else after that.",
    },
    "qa5": {
        "instruction":
            "I will give you context with the facts about locations and their relations hidden in some random text "
            "and a question. You need to answer the question based only on the information from the facts.",
        "examples":
            "<example>\n"
            "Mary picked up the apple there. Mary gave the apple to Fred. Mary moved to the bedroom. "
            "Bill took the milk there. Who did Mary give the apple to?\n"
            "Answer: Fred\n"
            "</example>\n"
            "<example>\n"
            "Jeff took the football there. Jeff passed the football to Fred. Jeff got the milk there. "
            "Bill travelled to the bedroom. Who gave the football?\n"
            "Answer: Jeff\n"
            "</example>\n"
            "<example>\n"
            "Fred picked up the apple there. Fred handed the apple to Bill. Bill journeyed to the bedroom. "
            "Jeff went back to the garden. What did Fred give to Bill?\n"
            "Answer: apple\n"
            "</example>",
        "post_prompt":
            "Your answer should contain only one word. Do not write anything else after that. "
            "Do not explain your answer.",
    },
}


def data_file(data_dir: str, length: str, task: str) -> str:
    return os.path.join(data_dir, "babilong", length, f"{task}.jsonl")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise EvalInputError(f"unknown BABILong task {task!r}; known: {', '.join(TASKS)}")


def read_samples(path: str, limit: Optional[int] = None) -> List[dict]:
    """The first ``limit`` samples (all when None) of one file, each checked."""
    if not os.path.isfile(path):
        raise EvalInputError(f"BABILong: {path} not found (expected JSON lines {{\"input\", \"question\", "
                             "\"target\"}; eval_suite/download.py writes them)")
    out = []
    for number, row in jsonl.rows(path, "BABILong", limit):
        for name in FIELDS:
            if not isinstance(row.get(name), str):
                raise EvalInputError(f"BABILong: {path} line {number}: missing field {name!r} (or not a string)")
        out.append({name: row[name] for name in FIELDS})
    if not out:
        raise EvalInputError(f"BABILong: {path} holds no samples")
    return out


def _check_names(data_dir: Optional[str], tasks: Sequence[str], lengths: Sequence[str]) -> None:
    if not data_dir:
        raise EvalInputError("BABILong reads local files: pass a data folder (eval_suite/download.py fills one)")
    if not tasks or not lengths:
        raise EvalInputError("BABILong: no tasks or no lengths")
    for task in tasks:
        _check_task(task)


def check(data_dir: Optional[str], tasks: Sequence[str], lengths: Sequence[str]) -> None:
    """Every file the run needs exists and every line of it is a sample; raises EvalInputError."""
    _check_names(data_dir, tasks, lengths)
    for length in lengths:
        for task in tasks:
            read_samples(data_file(data_dir, str(length), task))


def format_prompt(task: str, context: str, question: str) -> str:
    _check_task(task)
    prompt = DEFAULT_TEMPLATE.format(**DEFAULT_PROMPTS[task], context=context.strip(), question=question)
    return prompt.strip() + ANSWER_PREFIX


def preprocess_output(output: str) -> str:
    output = output.lower().strip().split("\n")[0]
    for cut in OUTPUT_CUTS:
        output = output.split(cut)[0]
    return output


def compare_answers(target: str, output: str, question: str, task: str) -> bool:
    """The target is the only label of the task in the output, labels the question mentions aside."""
    _check_task(task)
    output, labels = preprocess_output(output), {label.lower() for label in TASK_LABELS[task]}
    in_question = {label for label in labels if label in question.lower()}
    in_output = {label for label in labels if label in output} - in_question
    return in_output == {target.lower()}


def run(model: EvalModel, data_dir: str, tasks: Sequence[str] = TASKS, lengths: Sequence[str] = DEFAULT_LENGTHS,
        samples: Optional[int] = None, max_new_tokens: int = 16, progress: bool = True) -> dict:
    """{"scores": {task: {length: accuracy}}, "records": [one dict per sample]}; the first ``samples`` of each
    file (all when None). Every file is read and checked before the first generation."""
    from tqdm import tqdm

    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise EvalInputError(f"BABILong samples {samples!r}: expected a positive integer or None (all)")
    _check_names(data_dir, tasks, lengths)
    data = {(t, str(n)): read_samples(data_file(data_dir, str(n), t), samples) for t in tasks for n in lengths}
    scores: Dict[str, Dict[str, float]] = {}
    records = []
    total = sum(len(rows) for rows in data.values())
    with tqdm(total=total, desc=f"BABILong ({model.name})", unit="sample", disable=not progress) as bar:
        for (task, length), rows in data.items():
            bar.set_postfix(task=task, length=length)
            correct = 0
            for i, row in enumerate(rows):
                ids = [model.bos_id] + model.encode(format_prompt(task, row["input"], row["question"]))
                generated = model.decode(model.generate(ids, max_new_tokens))
                ok = compare_answers(row["target"], generated, row["question"], task)
                correct += ok
                records.append({"task": task, "length": length, "sample": i, "question": row["question"],
                                "target": row["target"], "prompt_tokens": len(ids), "generated": generated,
                                "correct": ok})
                bar.update(1)
            scores.setdefault(task, {})[length] = correct / len(rows)
    return {"scores": scores, "records": records}
