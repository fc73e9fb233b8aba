"""Single needle in a haystack (S-NIAH), as RULER's niah_single tasks: prompts of an exact token length
with one needle at a chosen depth, greedy answers, exact-match scores.

Kinds (``KINDS``):

- ``passkey``: RULER's niah_single_1. A 7-digit number hidden in repeated noise ("The grass is green.
  The sky is blue. ...").
- ``number``: RULER's niah_single_2. A 7-digit number hidden in essay text.
- ``word``: a word value (an adjective-noun compound such as ``quiet-river``, RULER's word form) hidden
  in essay text.

Every needle reads "One of the special magic {numbers|words} for {key} is: {value}." with ``key`` an
adjective-noun compound. The prompt is RULER's single-needle template for a base model, the answer
prefix appended after the question::

    A special magic number is hidden within the following text. Make sure to memorize it. I will quiz
    you about the number afterwards.
    {haystack with the needle}
    What is the special magic number for {key} mentioned in the provided text? The special magic
    number for {key} mentioned in the provided text is

Essay text: the shipped corpus (``data_prep/corpus/python_docs.jsonl.gz``, PSF-licensed) by default, or
the user's file (``haystack``: plain UTF-8 text such as Paul Graham's essays, which RULER uses and we
cannot ship, or a ``.jsonl``/``.jsonl.gz`` of ``{"text": ...}``). Whitespace is collapsed, the text
split into sentences after ``.``, ``!`` or ``?``, and sentences over ``MAX_SENTENCE_WORDS`` words (code
listings, tables) dropped. Each sample starts at a random sentence and cycles through the text when
it is shorter than the prompt. Values and keys that occur in the text are redrawn, so the answer
appears in the prompt exactly once.

Length: ``length`` counts every token the model reads, BOS included; ``len(prompt_ids) == length``
exactly. Every distinct sentence is tokenized once and a prompt is the concatenation of token lists
(instruction, sentences, needle, question), linear in the length up to 1M tokens (2048 ... 1048576);
the haystack's last sentence is cut at the token that makes the length exact (RULER likewise cuts its
essay at a word count). ``prompt_text`` is ``decode(prompt_ids)``; tokenizing it again as one string
gives ``length`` within ``LENGTH_TOLERANCE`` tokens (the cut sentence may split differently).

Depth: the needle's relative position in the haystack, 0 (first) to 100 (last) percent, placed at the
sentence boundary nearest to that token position (within half a sentence).

Determinism: sample ``i`` of (kind, length, depth) draws from a generator seeded by ``seed`` and those
four, so the same seed gives identical prompts and answers.

Score (``exact_match``): RULER's ``postprocess_pred`` (control characters become newlines), then the
continuation split at whitespace into words, each trimmed of punctuation at its ends (``EDGE_PUNCTUATION``);
words left empty (punctuation alone, as the ``:`` of ``": 1234567."``, which a model copying the needle's
"is: {value}." writes) are skipped, and the first word left must equal the answer (case-insensitive).
Stricter than RULER's ``string_match_all`` (answer anywhere in the output): "1234567.", ": 1234567." and
":1234567" match 1234567; "12345678", "1234567-8" and "it is 1234567" do not.
"""

import gzip
import itertools
import os
import random
import re
import string
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

from titans_data_prep.corpus import CORPUS
from titans_eval_suite import jsonl
from titans_eval_suite.codec import Codec
from titans_eval_suite.errors import EvalInputError
from titans_eval_suite.model import EvalModel

KINDS = ("passkey", "number", "word")
DEFAULT_LENGTHS = (2048, 4096, 8192, 16384)
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)
NUMBER_DIGITS = 7  # RULER's numbers
# Longer "sentences" of the essay text are code listings and tables, not prose; dropping them also
# keeps sentence boundaries (the needle's places) close together.
MAX_SENTENCE_WORDS = 40
# Re-tokenizing prompt_text may differ from prompt_ids only around the one cut sentence.
LENGTH_TOLERANCE = 4
MAX_DRAWS = 1000  # redraws of a value or key found in the text before giving up
NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
# Keys and word values: adjective-noun compounds, as RULER's (wonderwords) words.
ADJECTIVES = ("amber", "brave", "calm", "dusty", "eager", "fancy", "gentle", "hollow", "icy", "jolly", "kind",
              "lazy", "mellow", "noisy", "odd", "proud", "quiet", "rapid", "shiny", "tidy", "upbeat", "vivid",
              "wary", "young", "zesty", "bold", "crisp", "fuzzy", "grumpy", "humble", "lucky", "silent")
NOUNS = ("apple", "badger", "canyon", "dolphin", "ember", "falcon", "garden", "harbor", "igloo", "jungle",
         "kettle", "lantern", "meadow", "nugget", "orchard", "pebble", "quarry", "river", "saddle", "tiger",
         "umbrella", "violin", "walrus", "yacht", "zebra", "biscuit", "candle", "feather", "glacier", "hammock",
         "island", "mitten")
WORDS = tuple(f"{a}-{n}" for a in ADJECTIVES for n in NOUNS)

HEAD = ("A special magic {type} is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type} afterwards.\n")
NEEDLE = "One of the special magic {type}s for {key} is: {value}."
TAIL = ("\nWhat is the special magic {type} for {key} mentioned in the provided text? "
        "The special magic {type} for {key} mentioned in the provided text is")
SENTENCE_END = re.compile(r"(?<=[.!?]) ")
CONTROL = re.compile(r"[\x00-\x1f]")  # RULER's postprocess_pred turns these into newlines
EDGE_PUNCTUATION = string.punctuation + "‘’“”«»…"


@dataclass
class Haystack:
    """Sentences of the filler text and their token ids (tokenized once, reused by every sample)."""

    source: str
    sentences: List[str]
    ids: List[List[int]]
    text: str  # every sentence, lower-cased: where a drawn value or key must not occur
    random_start: bool
    sep: str  # prepended to each piece before tokenizing (see _separator)

    @property
    def longest(self) -> int:
        return max(len(ids) for ids in self.ids)


@dataclass
class NeedleSample:
    kind: str
    length: int  # == len(prompt_ids)
    depth: float  # requested, percent
    index: int
    key: str
    answer: str
    prompt_text: str
    prompt_ids: List[int]
    needle_offset: int  # index in prompt_ids of the needle's first token
    haystack_start: int  # index in prompt_ids of the haystack's first token
    haystack_tokens: int  # the haystack's tokens, the needle's excluded

    @property
    def needle_depth(self) -> float:
        """Where the needle landed, percent of the haystack before it."""
        before = self.needle_offset - self.haystack_start
        return 100.0 * before / self.haystack_tokens if self.haystack_tokens else 0.0


def depth_key(depth: float) -> str:
    """The depth's key in results: 50 and 50.0 -> "50", 12.5 -> "12.5"."""
    return format(float(depth), "g")


def check(kinds: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
          haystack: Optional[str] = None) -> None:
    """Everything that can be checked without a tokenizer; raises EvalInputError."""
    if not kinds:
        raise EvalInputError(f"needle: no kinds; choose from {', '.join(KINDS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise EvalInputError(f"unknown needle kind {kind!r}; known: {', '.join(KINDS)}")
    if not lengths:
        raise EvalInputError("needle: no lengths")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise EvalInputError(f"needle length {length!r}: expected a positive number of tokens (2048 ... 1048576)")
    if not depths:
        raise EvalInputError("needle: no depths")
    for depth in depths:
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 100:
            raise EvalInputError(f"needle depth {depth!r}: expected a percentage in [0, 100]")
    if haystack is not None and not os.path.isfile(haystack):
        raise EvalInputError(f"needle haystack {haystack}: no such file")


def essay_documents(path: str) -> List[str]:
    """The texts of a .jsonl / .jsonl.gz of {"text": ...}, or the whole of a plain text file."""
    if not os.path.isfile(path):
        raise EvalInputError(f"needle haystack {path}: no such file")
    try:
        if not path.endswith((".jsonl", ".jsonl.gz")):
            with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
                return [f.read()]
        docs = []
        for number, row in jsonl.rows(path, "needle haystack"):
            if not isinstance(row.get("text"), str):
                raise EvalInputError(f"needle haystack: {path} line {number}: expected a field 'text'")
            docs.append(row["text"])
        return docs
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as e:  # OSError, EOFError, zlib: a corrupt .gz
        raise EvalInputError(f"needle haystack {path}: not readable UTF-8 text ({e})") from e


def essay_sentences(path: str) -> List[str]:
    """The sentences of an essay file that a haystack is made of (without a tokenizer: checked up front)."""
    sentences = [s for doc in essay_documents(path) for s in split_sentences(doc)
                 if len(s.split()) <= MAX_SENTENCE_WORDS]
    if not sentences:
        raise EvalInputError(f"needle haystack {path}: no sentences of at most {MAX_SENTENCE_WORDS} words")
    return sentences


def split_sentences(text: str) -> List[str]:
    return [s for s in SENTENCE_END.split(" ".join(text.split())) if s]


def _separator(model: Codec) -> str:
    """What to prepend to a piece so that concatenated token lists read as space-separated text: nothing
    for sentencepiece's dummy prefix (the project's tokenizers), a space otherwise."""
    return "" if model.decode(model.encode("a") + model.encode("b")) == "a b" else " "


def load_haystack(model: Codec, kind: str, path: Optional[str] = None) -> Haystack:
    """The noise for ``passkey``; the essay text (``path``, default the shipped corpus) for the others."""
    sep = _separator(model)
    if kind == "passkey":
        sentences, source = list(NOISE), "noise"
    else:
        source = str(path or CORPUS)
        sentences = essay_sentences(source)
    ids = [model.encode(sep + s) for s in sentences]
    return Haystack(source, sentences, ids, "\n".join(sentences).lower(), kind != "passkey", sep)


@dataclass
class _Layout:
    """A sample's draws and fixed pieces, known before its haystack is built."""

    key: str
    value: str
    head: List[int]
    needle: List[int]
    tail: List[int]
    budget: int  # haystack tokens
    start: int  # first sentence


def _rng(seed: int, kind: str, length: int, depth: float, index: int) -> random.Random:
    return random.Random(f"{seed}/{kind}/{length}/{depth_key(depth)}/{index}")  # str seeds: stable across runs


def _draw(rng: random.Random, pool, haystack: Haystack, avoid: str = ""):
    """A value from ``pool`` that occurs nowhere in the text and neither holds nor is held by ``avoid``."""
    for _ in range(MAX_DRAWS):
        value = pool(rng)
        if value not in haystack.text and not (avoid and (value in avoid or avoid in value)):
            return value
    raise EvalInputError(f"needle haystack {haystack.source}: every drawn needle occurs in the text")


def _layout(model: Codec, haystack: Haystack, kind: str, length: int, depth: float, seed: int,
            index: int) -> _Layout:
    rng = _rng(seed, kind, length, depth, index)
    key = _draw(rng, lambda r: r.choice(WORDS), haystack)
    if kind == "word":
        value = _draw(rng, lambda r: r.choice(WORDS), haystack, avoid=key)
    else:
        value = _draw(rng, lambda r: str(r.randrange(10 ** (NUMBER_DIGITS - 1), 10 ** NUMBER_DIGITS)), haystack)
    start = rng.randrange(len(haystack.ids)) if haystack.random_start else 0
    kind_word, sep = "word" if kind == "word" else "number", haystack.sep
    head = model.encode(HEAD.format(type=kind_word))
    needle = model.encode(sep + NEEDLE.format(type=kind_word, key=key, value=value))
    tail = model.encode(sep + TAIL.format(type=kind_word, key=key))
    budget = length - 1 - len(head) - len(needle) - len(tail)
    if budget < 0:
        raise EvalInputError(f"needle length {length} is too small for kind {kind!r}: the instruction, needle and "
                             f"question take {length - budget} tokens with this tokenizer")
    return _Layout(key, value, head, needle, tail, budget, start)


def _sample(model: EvalModel, haystack: Haystack, kind: str, length: int, depth: float, index: int,
            layout: _Layout) -> NeedleSample:
    pieces, ends, total = [], [0], 0
    for i in itertools.count(layout.start):  # whole sentences, the last cut to the exact budget
        if total >= layout.budget:
            break
        piece = haystack.ids[i % len(haystack.ids)][:layout.budget - total]
        pieces.append(piece)
        total += len(piece)
        ends.append(total)
    hay = list(itertools.chain.from_iterable(pieces))
    target = depth / 100 * layout.budget
    at = min(ends, key=lambda end: abs(end - target))  # the nearest sentence boundary (the earlier on a tie)
    hay_start = 1 + len(layout.head)
    ids = [model.bos_id] + layout.head + hay[:at] + layout.needle + hay[at:] + layout.tail
    assert len(ids) == length
    return NeedleSample(kind, length, depth, index, layout.key, layout.value, model.decode(ids), ids,
                        hay_start + at, hay_start, layout.budget)


def _haystacks(model: Codec, kinds: Sequence[str], path: Optional[str]) -> Dict[str, Haystack]:
    essay = load_haystack(model, "number", path) if {"number", "word"} & set(kinds) else None
    return {k: load_haystack(model, k) if k == "passkey" else essay for k in kinds}


def generate(model: EvalModel, kind: str, length: int, depth: float, samples: int = 1, seed: int = 0,
             haystack: Union[None, str, Haystack] = None) -> List[NeedleSample]:
    """``samples`` prompts for one (kind, length, depth); ``haystack`` a path (essay kinds) or a loaded
    Haystack."""
    check([kind], [length], [depth], haystack if isinstance(haystack, str) else None)
    if not isinstance(haystack, Haystack):
        haystack = load_haystack(model, kind, haystack)
    return [_sample(model, haystack, kind, length, depth, i, _layout(model, haystack, kind, length, depth, seed, i))
            for i in range(samples)]


def exact_match(generated: str, answer: str) -> bool:
    """The continuation's first word that is not punctuation alone, punctuation trimmed from its ends, is
    the answer (any case)."""
    words = [w for w in (w.strip(EDGE_PUNCTUATION) for w in CONTROL.sub("\n", generated).split()) if w]
    return bool(words) and words[0].lower() == answer.lower()


def plan(model: Codec, kinds: Sequence[str], lengths: Sequence[int], depths: Sequence[float], samples: int,
         seed: int = 0, haystack: Optional[str] = None):
    """(haystack per kind, layout per (kind, length, depth, sample)): every draw and fixed piece of every
    prompt, so all that can fail fails here. Needs the tokenizer only: eval_suite/run.py calls it with a
    checkpoint's Codec before any model is built; ``run`` with the model."""
    check(kinds, lengths, depths, haystack)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise EvalInputError(f"needle samples {samples!r}: expected a positive integer")
    stacks = _haystacks(model, kinds, haystack)
    layouts = {(k, n, d, i): _layout(model, stacks[k], k, n, d, seed, i)
               for k in kinds for n in lengths for d in depths for i in range(samples)}
    return stacks, layouts


def run(model: EvalModel, kinds: Sequence[str] = KINDS, lengths: Sequence[int] = DEFAULT_LENGTHS,
        depths: Sequence[float] = DEFAULT_DEPTHS, samples: int = 4, seed: int = 0, max_new_tokens: int = 12,
        haystack: Optional[str] = None, progress: bool = True) -> dict:
    """{"scores": {kind: {str(length): {depth_key(depth): accuracy}}}, "records": [one dict per sample]}.
    Every prompt's layout is checked before the first generation; prompts are built one at a time."""
    from tqdm import tqdm

    stacks, layouts = plan(model, kinds, lengths, depths, samples, seed, haystack)
    cells = [(k, n, d) for k in kinds for n in lengths for d in depths]
    scores: Dict[str, Dict[str, Dict[str, float]]] = {}
    records = []
    with tqdm(total=len(layouts), desc=f"needle ({model.name})", unit="sample", disable=not progress) as bar:
        for kind, length, depth in cells:
            bar.set_postfix(kind=kind, length=length, depth=depth_key(depth))
            correct = 0
            for i in range(samples):
                sample = _sample(model, stacks[kind], kind, length, depth, i, layouts[kind, length, depth, i])
                generated = model.decode(model.generate(sample.prompt_ids, max_new_tokens))
                ok = exact_match(generated, sample.answer)
                correct += ok
                records.append({"kind": kind, "length": length, "depth": depth, "sample": i, "key": sample.key,
                                "answer": sample.answer, "prompt_tokens": len(sample.prompt_ids),
                                "needle_depth": round(sample.needle_depth, 2), "generated": generated, "correct": ok})
                bar.update(1)
            scores.setdefault(kind, {}).setdefault(str(length), {})[depth_key(depth)] = correct / samples
    return {"scores": scores, "records": records}
