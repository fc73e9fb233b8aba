"""WikiText-103 and LAMBADA perplexity equal a direct computation from the model's logits, the
windows cover every token once within the context, and bad files are named."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

from titans_eval_suite import perplexity
from titans_eval_suite.errors import EvalInputError


def logprobs(model, inputs, n_targets, targets):
    """log p of ``targets`` from the last ``n_targets`` positions of one forward over ``inputs``."""
    with torch.no_grad():
        logp = F.log_softmax(model.model(torch.tensor([inputs])).float(), -1)[0, -n_targets:]
    return logp.gather(-1, torch.tensor(targets)[:, None]).sum().item()


@pytest.mark.parametrize("n, length, stride", [(1, 8, 8), (7, 8, 8), (50, 8, 8), (50, 8, 3), (50, 8, 1), (23, 32, 0)])
def test_windows_cover_every_target_once_within_the_context(n, length, stride):
    covered = []
    for s, a, b in perplexity.windows(n, length, stride):
        covered += range(a, b)
        if stride:
            assert b - 1 - s <= length and (s == 0 or b - 1 - s == length)  # as much context as fits
    assert covered == list(range(1, n + 1))


def test_articles_split_at_top_level_headings(eval_data):
    articles = perplexity.wikitext_articles(str(eval_data / perplexity.WIKITEXT_FILE))
    assert len(articles) == 3 and all(a.startswith(f" = Article {i} = ") for i, a in enumerate(articles))
    assert all("= = Section = =" in a for a in articles)


def test_every_article_is_heading_to_last_text_line(tmp_path):
    """wiki.test.raw starts with a blank line: the first article is cut like every other one."""
    path = tmp_path / "test.txt"
    path.write_text(" \n = A = \n \n a b . \n \n = = S = = \n c \n \n = B = \n \n d e . \n \n", encoding="utf-8")
    assert perplexity.wikitext_articles(str(path)) == [" = A = \n \n a b . \n \n = = S = = \n c ",
                                                       " = B = \n \n d e . "]


@pytest.mark.parametrize("text", [" = A = \n \n a b . ", "a  b\tc\n", "word"])
def test_word_count_is_lm_evals(text):
    """lm-eval's wikitext process_results: len(re.split(r"\\s+", page)) on the page as it is."""
    assert perplexity.word_count(text) == len(re.split(r"\s+", text))


@pytest.mark.parametrize("stride", [None, 5, 0])
def test_wikitext_equals_a_direct_computation(mag, eval_data, stride):
    result = perplexity.wikitext(mag, str(eval_data), stride=stride, progress=False)
    step = mag.max_length if stride is None else stride
    total, tokens, words = 0.0, 0, 0
    for text in perplexity.wikitext_articles(str(eval_data / perplexity.WIKITEXT_FILE)):
        seq = [mag.bos_id] + mag.encode(text)
        assert len(seq) > 2 * mag.max_length  # the articles need several windows
        if step == 0:
            total += logprobs(mag, seq[:-1], len(seq) - 1, seq[1:])
        else:
            for a in range(1, len(seq), step):
                b = min(a + step, len(seq))
                total += logprobs(mag, seq[max(0, b - 1 - mag.max_length):b - 1], b - a, seq[a:b])
        tokens += len(seq) - 1
        words += len(re.split(r"\s+", text))  # lm-eval's word count
    assert result["tokens"] == tokens and result["words"] == words
    assert result["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-4)
    assert result["token_perplexity"] == pytest.approx(math.exp(-total / tokens), rel=1e-4)


def test_lambada_equals_a_direct_computation(mag, eval_data):
    result = perplexity.lambada(mag, str(eval_data), progress=False)
    texts = [json.loads(x)["text"] for x in (eval_data / perplexity.LAMBADA_FILE).read_text().splitlines()]
    total, correct = 0.0, 0
    for text in texts:
        whole = mag.encode(text)
        n = len(mag.encode(text.rsplit(" ", 1)[0]))
        seq = [mag.bos_id] + whole
        with torch.no_grad():
            logp = F.log_softmax(mag.model(torch.tensor([seq[:-1]])).float(), -1)[0, n:]
        target = torch.tensor(whole[n:])
        total += logp.gather(-1, target[:, None]).sum().item()
        correct += bool((logp.argmax(-1) == target).all())
    assert result["examples"] == len(texts)
    assert result["perplexity"] == pytest.approx(math.exp(-total / len(texts)), rel=1e-4)
    assert result["accuracy"] == correct / len(texts)


def test_bad_files_are_named(mag, tmp_path):
    with pytest.raises(EvalInputError, match="wikitext103/test.txt not found"):
        perplexity.wikitext(mag, str(tmp_path))
    (tmp_path / "lambada_openai").mkdir()
    path = tmp_path / "lambada_openai" / "test.jsonl"
    path.write_text('{"text": "a fine passage of words"}\n{"txt": "oops"}\n')
    with pytest.raises(EvalInputError, match="test.jsonl line 2: expected a field 'text'"):
        perplexity.lambada(mag, str(tmp_path))
    path.write_text('{"text": "a fine passage"}\nnot json\n')
    with pytest.raises(EvalInputError, match="line 2: not JSON"):
        perplexity.lambada(mag, str(tmp_path))
    (tmp_path / "wikitext103").mkdir()
    (tmp_path / "wikitext103" / "test.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(EvalInputError, match="not UTF-8"):
        perplexity.wikitext(mag, str(tmp_path))
