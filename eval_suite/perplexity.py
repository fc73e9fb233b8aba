"""Perplexity on WikiText-103 and LAMBADA (openai), from local files.

Files (``eval_suite/download.py`` writes them on a connected machine, once):

- ``DATA_DIR/wikitext103/test.txt``: the raw WikiText-103 test split (``wiki.test.raw``, the rows of
  ``wikitext-103-raw-v1`` concatenated), UTF-8. Articles start at top-level headings (`` = Title = ``)
  and are scored as separate documents: each is its lines from its first non-blank one (the heading)
  to its last non-blank one, joined by newlines (blank lines before the first heading and between
  articles belong to none).
- ``DATA_DIR/lambada_openai/test.jsonl``: one ``{"text": ...}`` per line (the 5,153 passages of
  ``EleutherAI/lambada_openai``); the target is the last word.

WikiText: each article is ``BOS + tokens``; its tokens are scored in blocks of ``stride`` with as much
preceding context as fits the training context (``stride`` = the context: disjoint windows, the
convention of lm-evaluation-harness's rolling log-likelihood and of the paper's table; smaller strides
give each token more context; ``stride`` 0 streams the whole article through the memory, the
Titans-native reading). Reported: word perplexity exp(-log-likelihood / words), words counted as
lm-evaluation-harness's wikitext task counts a page's, ``len(re.split(r"\\s+", article))`` on the
article as scored (no stripping: an edge space counts an empty piece, in lm-eval too), token
perplexity, and bits per byte.

LAMBADA: context = the passage up to its last space, target = the space and the last word, as
lm-evaluation-harness's ``lambada_openai``; perplexity exp(-mean target log-likelihood) and accuracy
(every target token is the greedy choice).
"""

import math
import os
import re
from typing import Dict, List, Optional

from titans_eval_suite import jsonl
from titans_eval_suite.errors import EvalInputError
from titans_eval_suite.model import EvalModel

WIKITEXT_FILE = os.path.join("wikitext103", "test.txt")
LAMBADA_FILE = os.path.join("lambada_openai", "test.jsonl")
# A top-level WikiText heading: " = Title = " alone on its line (sub-headings have "= =" and more).
ARTICLE_HEADING = re.compile(r"^ ?= [^=].* = ?$")


def _trimmed(lines: List[str]) -> str:
    """The lines from the first non-blank one to the last, joined ("" when all are blank)."""
    body = [i for i, line in enumerate(lines) if line.strip()]
    return "\n".join(lines[body[0]:body[-1] + 1]) if body else ""


def wikitext_articles(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise EvalInputError(f"WikiText-103: {path} not found (expected the raw test split as UTF-8 text; "
                             "eval_suite/download.py writes it)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as e:
        raise EvalInputError(f"WikiText-103: {path} is not UTF-8 text ({e})") from e
    articles, current = [], []
    for line in lines:
        if ARTICLE_HEADING.match(line):
            articles.append(_trimmed(current))
            current = []
        current.append(line)
    articles = [a for a in articles + [_trimmed(current)] if a]
    if not articles:
        raise EvalInputError(f"WikiText-103: {path} holds no text")
    return articles


def word_count(text: str) -> int:
    """lm-evaluation-harness's wikitext word count, on the text as it is (a leading or trailing space
    makes an empty first or last piece, which lm-eval counts too)."""
    return len(re.split(r"\s+", text))


def windows(n_targets: int, length: int, stride: int):
    """(context start, target start, target end) over a sequence seq[0..n_targets] whose targets are
    seq[1..n_targets]: targets in blocks of ``stride``, each with the longest context such that context
    and target minus one fit ``length`` model inputs. ``stride`` 0: one block, the whole sequence."""
    if stride == 0:
        return [(0, 1, n_targets + 1)]
    out = []
    for a in range(1, n_targets + 1, stride):
        b = min(a + stride, n_targets + 1)
        out.append((max(0, b - 1 - length), a, b))
    return out


def wikitext(model: EvalModel, data_dir: str, stride: Optional[int] = None, limit: Optional[int] = None,
             progress: bool = True) -> Dict[str, float]:
    articles = wikitext_articles(os.path.join(data_dir, WIKITEXT_FILE))[:limit]
    stride = model.max_length if stride is None else stride
    if stride < 0 or stride > model.max_length and stride != 0:
        raise EvalInputError(f"perplexity stride {stride}: expected 0 (stream whole articles) or 1..{model.max_length}")
    requests, owner = [], []
    for i, text in enumerate(articles):
        seq = [model.bos_id] + model.encode(text)
        for s, a, b in windows(len(seq) - 1, model.max_length, stride):
            requests.append((seq[s:a], seq[a:b]))
            owner.append(i)
    total = sum(sum(s.logprobs) for s in _scored(model, requests, progress, "WikiText-103"))
    tokens = sum(len(t) for _, t in requests)
    words = sum(word_count(a) for a in articles)
    nbytes = sum(len(a.encode("utf-8")) for a in articles)
    return {"word_perplexity": math.exp(-total / words), "token_perplexity": math.exp(-total / tokens),
            "bits_per_byte": -total / nbytes / math.log(2), "articles": len(articles), "tokens": tokens,
            "words": words, "stride": stride}


def lambada_examples(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise EvalInputError(f"LAMBADA: {path} not found (expected JSON lines {{\"text\": ...}}; "
                             "eval_suite/download.py writes it)")
    out = []
    for number, row in jsonl.rows(path, "LAMBADA"):
        text = row.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise EvalInputError(f"LAMBADA: {path} line {number}: expected a field 'text' holding a passage "
                                 "of several words")
        out.append(text.strip())
    if not out:
        raise EvalInputError(f"LAMBADA: {path} holds no passages")
    return out


def lambada(model: EvalModel, data_dir: str, limit: Optional[int] = None, progress: bool = True) -> Dict[str, float]:
    texts = lambada_examples(os.path.join(data_dir, LAMBADA_FILE))[:limit]
    requests = []
    for text in texts:
        context = text.rsplit(" ", 1)[0]
        # the target's tokens are those the whole passage has beyond its context's length, as
        # lm-evaluation-harness splits a pair
        whole, n = model.encode(text), len(model.encode(context))
        n = min(n, len(whole) - 1)
        requests.append(([model.bos_id] + whole[:n], whole[n:]))
    scored = _scored(model, requests, progress, "LAMBADA")
    return {"perplexity": math.exp(-sum(sum(s.logprobs) for s in scored) / len(scored)),
            "accuracy": sum(all(s.greedy) for s in scored) / len(scored), "examples": len(scored)}


def _scored(model: EvalModel, requests, progress: bool, what: str):
    """EvalModel.score in slices, with a progress bar (long evaluations)."""
    from tqdm import tqdm

    out, step = [], max(1, model.batch_size * 8)
    with tqdm(total=len(requests), desc=f"{what} ({model.name})", unit="window", disable=not progress) as bar:
        for start in range(0, len(requests), step):
            out += model.score(requests[start:start + step])
            bar.update(min(step, len(requests) - start))
    return out
