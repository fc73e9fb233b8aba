"""EvalModel: scores equal a direct log-softmax of one forward, streaming equals batching, greedy
generation equals an argmax loop over whole forwards, and bad checkpoints are named."""

import random

import pytest
import torch
import torch.nn.functional as F

from titans_eval_suite.errors import EvalInputError

from titans_eval_suite.model import EvalModel


def direct(model, context, target):
    seq = torch.tensor([context + target])
    with torch.no_grad():
        logp = F.log_softmax(model.model(seq[:, :-1]).float(), -1)[0]
    rows = logp[len(context) - 1:]
    return rows.gather(-1, torch.tensor(target)[:, None])[:, 0].tolist(), (rows.argmax(-1) == torch.tensor(target)).tolist()


def random_requests(n, seed, longest):
    rng = random.Random(seed)
    return [([1] + [rng.randrange(3, 600) for _ in range(rng.randrange(0, longest))],
             [rng.randrange(3, 600) for _ in range(rng.randrange(1, 6))]) for _ in range(n)]


def test_scores_equal_a_direct_computation(mag):
    """Batched (padded) within the context and streamed beyond it (32 tokens), at random lengths."""
    requests = random_requests(12, 0, 70)
    assert any(len(c) + len(t) - 1 > mag.max_length for c, t in requests)
    for (context, target), scored in zip(requests, mag.score(requests)):
        logprobs, greedy = direct(mag, context, target)
        assert scored.logprobs == pytest.approx(logprobs, abs=1e-4)
        assert scored.greedy == greedy


def test_streaming_equals_batching(mag):
    for context, target in random_requests(6, 1, 25):
        a, b = mag._score_streaming(context, target), mag._score_batch([(context, target)])[0]
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4) and a.greedy == b.greedy


def test_generation_is_the_argmax_loop(mag):
    prompt = [1] + list(range(40, 85))  # longer than the context: the prompt is streamed in pieces
    ours = mag.generate(prompt, 6, stop=())
    seq = list(prompt)
    for _ in range(len(ours)):
        with torch.no_grad():
            seq.append(int(mag.model(torch.tensor([seq]))[0, -1].argmax()))
    assert ours == seq[len(prompt):]


def test_bad_checkpoints_are_named(tmp_path, checkpoints):
    with pytest.raises(EvalInputError, match="no such folder"):
        EvalModel.load(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvalInputError, match="neither a run folder with 'latest' nor an iter_NNNNNNN folder"):
        EvalModel.load(str(tmp_path / "empty"))
    with pytest.raises(EvalInputError, match="tokenizer .*no such file"):
        EvalModel.load(str(checkpoints["mag"]), tokenizer=str(tmp_path / "tok.model"))
