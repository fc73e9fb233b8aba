"""S-NIAH: prompts are deterministic by seed, exactly as long as asked, hold the needle once at the asked
depth; the scorer is exact; ``run`` can pass (a model that reads the needle scores 1) and fail; bad
inputs are named."""

import json
import re

import pytest

from titans_eval_suite import needle
from titans_eval_suite.codec import Codec
from titans_eval_suite.errors import EvalInputError

LENGTHS = (256, 384, 512)  # the tiny tokenizer needs about 200 tokens for the instruction, needle and question
DEPTHS = (0, 12.5, 50, 100)


@pytest.fixture(scope="module")
def essay(mag):
    return needle.load_haystack(mag, "number")


def samples(mag, essay, kind, length, depth, n=2, seed=0):
    return needle.generate(mag, kind, length, depth, samples=n, seed=seed,
                           haystack=None if kind == "passkey" else essay)


def test_prompts_are_deterministic_by_seed(mag, essay):
    for kind in needle.KINDS:
        a, b = samples(mag, essay, kind, 256, 50, n=3), samples(mag, essay, kind, 256, 50, n=3)
        assert [(s.prompt_ids, s.prompt_text, s.answer, s.key) for s in a] == \
               [(s.prompt_ids, s.prompt_text, s.answer, s.key) for s in b]
        other = samples(mag, essay, kind, 256, 50, n=3, seed=1)
        assert all(x.answer != y.answer and x.prompt_ids != y.prompt_ids for x, y in zip(a, other))
        assert len({s.answer for s in a}) == 3  # samples of one cell differ too


@pytest.mark.parametrize("kind", needle.KINDS)
def test_prompt_length_needle_and_depth(mag, essay, kind):
    haystack = needle.load_haystack(mag, "passkey") if kind == "passkey" else essay
    for length in LENGTHS:
        for depth in DEPTHS:
            for s in samples(mag, essay, kind, length, depth):
                assert len(s.prompt_ids) == length and s.prompt_ids[0] == mag.bos_id
                # the text, tokenized again as one string, within the documented tolerance (+1: BOS)
                assert abs(len(mag.encode(s.prompt_text)) + 1 - length) <= needle.LENGTH_TOLERANCE
                assert s.prompt_text.count(s.answer) == 1
                assert re.fullmatch(r"\d{7}" if kind != "word" else r"[a-z]+-[a-z]+", s.answer)
                # the needle's tokens sit where the sample says
                kind_word = "word" if kind == "word" else "number"
                ids = mag.encode(needle.NEEDLE.format(type=kind_word, key=s.key, value=s.answer))
                assert s.prompt_ids[s.needle_offset:s.needle_offset + len(ids)] == ids
                assert s.prompt_text.rstrip().endswith(f"The special magic {kind_word} for {s.key} mentioned in the "
                                                       "provided text is")
                # the layout: BOS, instruction, haystack with the needle, question
                head = mag.encode(needle.HEAD.format(type=kind_word))
                tail = mag.encode(needle.TAIL.format(type=kind_word, key=s.key))
                assert s.prompt_ids[1:1 + len(head)] == head and s.prompt_ids[-len(tail):] == tail
                assert s.haystack_start == 1 + len(head) and s.haystack_tokens == length - 1 - len(head) - len(ids) \
                    - len(tail)
                # at the sentence boundary nearest the asked depth: within half the longest sentence
                before = s.needle_offset - s.haystack_start
                assert abs(before - depth / 100 * s.haystack_tokens) <= haystack.longest / 2
                text_before = mag.decode(s.prompt_ids[s.haystack_start:s.needle_offset])
                assert before in (0, s.haystack_tokens) or text_before.rstrip()[-1] in ".!?"


def test_depth_is_precise_in_short_sentences(mag, tmp_path):
    """A user's plain-text haystack of short sentences: the needle lands within a few tokens of the depth."""
    path = tmp_path / "essays.txt"
    path.write_text("".join(f"The {a} cat sat on the {b} mat.\n" for a in ("red", "big", "old")
                            for b in ("blue", "flat", "wide")) * 5)
    haystack = needle.load_haystack(mag, "word", str(path))
    assert haystack.source == str(path) and len(haystack.sentences) == 45
    for depth in (0, 10, 25, 50, 75, 90, 100):
        for s in needle.generate(mag, "word", 512, depth, samples=2, haystack=str(path)):
            assert abs(s.needle_depth - depth) <= 100 * haystack.longest / 2 / s.haystack_tokens
            assert "cat sat on the" in s.prompt_text and s.prompt_text.count(s.answer) == 1


def test_a_million_tokens_is_linear_work(mag, essay):
    """2**20 tokens: exact length, one needle (the shipped corpus is repeated to fill it)."""
    s, = needle.generate(mag, "number", 2 ** 20, 40, haystack=essay)
    assert len(s.prompt_ids) == 2 ** 20 and s.prompt_text.count(s.answer) == 1
    assert abs(s.needle_depth - 40) <= 100 * essay.longest / 2 / s.haystack_tokens


@pytest.mark.parametrize("generated, answer, expected", [
    ("1234567", "1234567", True),
    (" 1234567.", "1234567", True),
    ("\n1234567\nWhat is", "1234567", True),
    ("**1234567**, as asked", "1234567", True),
    ("quiet-river.", "quiet-river", True),
    ("Quiet-River", "quiet-river", True),
    ("12345678", "1234567", False),  # a superstring
    ("123456", "1234567", False),  # a prefix
    ("1234567-8", "1234567", False),
    ("1,234,567", "1234567", False),
    ("is 1234567", "1234567", False),  # not the first word: RULER would accept it
    ("quiet river", "quiet-river", False),
    ("quiet-rivers", "quiet-river", False),
    ("", "1234567", False),
    ("\n\n", "1234567", False),
    # punctuation-only words before the answer are skipped (a model copying "is: {value}." writes ": ")
    (": 6476798.", "6476798", True),
    (":1234567.", "1234567", True),
    (" - quiet-river", "quiet-river", True),
    (": : 1234567", "1234567", True),
    (":", "1234567", False),
    (": is 1234567", "1234567", False),
    (": 12345678.", "1234567", False),
])
def test_exact_match(generated, answer, expected):
    assert needle.exact_match(generated, answer) is expected


def test_run_on_the_tiny_model(mag):
    kinds, lengths, depths = needle.KINDS, [256, 320], [0, 100]
    result = needle.run(mag, kinds, lengths, depths, samples=1, seed=0, max_new_tokens=8, progress=False)
    json.dumps(result)
    assert set(result["scores"]) == set(kinds)
    for kind in kinds:
        assert set(result["scores"][kind]) == {"256", "320"}
        for length in lengths:
            assert set(result["scores"][kind][str(length)]) == {"0", "100"}
            assert all(0 <= v <= 1 for v in result["scores"][kind][str(length)].values())
    records = result["records"]
    assert len(records) == len(kinds) * len(lengths) * len(depths)
    for r in records:
        assert r["correct"] == needle.exact_match(r["generated"], r["answer"])
        assert r["prompt_tokens"] == r["length"]


class Reader:
    """A model that finds the needle in its prompt and answers with it after ``prefix`` (``wrong``: a
    superstring)."""

    def __init__(self, model, wrong=False, prefix=" "):
        self.model, self.wrong, self.prefix, self.name = model, wrong, prefix, "reader"
        self.bos_id, self.eos_id = model.bos_id, model.eos_id
        self.encode, self.decode = model.encode, model.decode

    def generate(self, prompt, max_new_tokens, stop=()):
        text = self.decode(prompt)
        key = re.search(r"What is the special magic \w+ for (\S+) mentioned", text).group(1)
        value = re.search(rf"One of the special magic \w+s for {re.escape(key)} is: (\S+)\.", text).group(1)
        return self.encode(f"{self.prefix}{value}{'0' if self.wrong else ''}. That is all.")[:max_new_tokens]


@pytest.mark.parametrize("wrong, prefix, expected", [(False, " ", 1.0), (True, " ", 0.0),
                                                     (False, ": ", 1.0)])  # copies the needle's "is: {value}."
def test_the_pipeline_can_pass_and_fail(mag, wrong, prefix, expected):
    result = needle.run(Reader(mag, wrong, prefix), needle.KINDS, [256], [0, 50, 100], samples=2, max_new_tokens=32,
                        progress=False)
    assert all(v == expected for by_length in result["scores"].values() for by_depth in by_length.values()
               for v in by_depth.values())
    assert all(r["correct"] is (not wrong) for r in result["records"])


def test_bad_inputs_are_named(mag, tmp_path):
    with pytest.raises(EvalInputError, match="unknown needle kind 'haystack'; known: passkey, number, word"):
        needle.run(mag, ["passkey", "haystack"], [256], [50], progress=False)
    with pytest.raises(EvalInputError, match="needle length 100 is too small for kind 'number'"):
        needle.generate(mag, "number", 100, 50)
    with pytest.raises(EvalInputError, match="too small"):  # found before any generation
        needle.run(mag, ["passkey"], [512, 64], [50], samples=1, progress=False)
    for depth in (-1, 100.5):
        with pytest.raises(EvalInputError, match=r"needle depth .*\[0, 100\]"):
            needle.run(mag, ["passkey"], [256], [depth], progress=False)
    with pytest.raises(EvalInputError, match="needle length 0"):
        needle.check(["passkey"], [0], [50])
    missing = tmp_path / "essays.txt"
    with pytest.raises(EvalInputError, match=re.escape(f"needle haystack {missing}: no such file")):
        needle.run(mag, ["word"], [256], [50], haystack=str(missing), progress=False)
    bad = tmp_path / "essays.jsonl"
    bad.write_text('{"text": "One. Two."}\nnot json\n')
    with pytest.raises(EvalInputError, match=re.escape(f"{bad} line 2: not JSON")):
        needle.generate(mag, "number", 256, 50, haystack=str(bad))


def test_plan_needs_the_tokenizer_only(mag):
    """eval_suite/run.py checks every layout with a checkpoint's tokenizer before building its model: the
    same layouts as ``run`` makes with the model, and the same errors."""
    codec = Codec(mag.tokenizer)
    args = (["passkey", "word"], [256, 320], [0, 50], 2, 3)
    assert needle.plan(codec, *args)[1] == needle.plan(mag, *args)[1]
    with pytest.raises(EvalInputError, match="needle length 64 is too small for kind 'passkey'"):
        needle.plan(codec, ["passkey"], [512, 64], [50], 1)
