"""A checkpoint ready to evaluate: the model in this process (saved at any tensor-parallel size), its
tokenizer, and the three things every task needs: log-probabilities of tokens, greedy generation, and
text <-> ids.

Long inputs go through ``model.stream`` in pieces of the training context, so the state a Titans model
carries between pieces stays the same size however long the input (Transformer++ keeps its keys and
values, as full attention must). Inputs within the training context are scored in padded batches by
one forward: the model is causal, so right padding leaves the real positions' logits unchanged.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from titans_eval_suite.checkpoint import inspect
from titans_eval_suite.codec import Codec
from titans_eval_suite.errors import EvalInputError


@dataclass
class Scored:
    """Log-probabilities of ``target`` tokens given what precedes each, and whether each is the argmax."""

    logprobs: List[float]
    greedy: List[bool]


class EvalModel(Codec):
    """``EvalModel.load(checkpoint_dir)``; ``name`` labels it in reports (eval_suite/checkpoint.py's
    ``Checkpoint.name``)."""

    def __init__(self, model, model_config, config, tokenizer, name: str, step: int, batch_size: int = 8):
        super().__init__(tokenizer)
        self.model, self.model_config, self.config = model, model_config, config
        self.name, self.step, self.batch_size = name, step, batch_size
        self.device = next(model.parameters()).device
        self.max_length = model_config.seq_length
        self.variant = model_config.variant

    @classmethod
    def load(cls, checkpoint_dir: str, tokenizer: Optional[str] = None, batch_size: int = 8,
             checked=None) -> "EvalModel":
        """``checked``: the folder's ``titans_eval_suite.checkpoint.inspect`` (made here when None)."""
        from titans_pretrain.checkpoint import CheckpointError
        from titans_pretrain.checkpoint import load_model

        checked = checked or inspect(checkpoint_dir, tokenizer)
        try:
            config, model_config, model, saved = load_model(checked.folder)
        except (FileNotFoundError, CheckpointError) as e:  # what inspect cannot see: the files' contents
            message = str(e)
            if message.startswith(checked.folder):  # pretrain's messages start with the folder: name it once
                message = message[len(checked.folder):].lstrip(": ")
            raise EvalInputError(f"{checked.label}: {message}") from e
        return cls(model, model_config, config, checked.codec.tokenizer, checked.name, saved.step, batch_size)

    # scoring

    def _autocast(self):
        from titans_pretrain.language_model import autocast

        return autocast(self.config.run.precision, self.device)

    @torch.no_grad()
    def score(self, requests: Sequence[Tuple[Sequence[int], Sequence[int]]]) -> List[Scored]:
        """For each (context, target): log p(target_i | context, target_<i) and whether each target token
        is the greedy choice. The context must hold at least one token (start documents with BOS)."""
        out: List[Optional[Scored]] = [None] * len(requests)
        short = []
        for i, (context, target) in enumerate(requests):
            if not context or not target:
                raise ValueError(f"request {i}: context and target must be non-empty")
            if len(context) + len(target) - 1 <= self.max_length:
                short.append(i)
            else:
                out[i] = self._score_streaming(list(context), list(target))
        short.sort(key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))  # similar lengths per batch
        for start in range(0, len(short), self.batch_size):
            batch = short[start:start + self.batch_size]
            for i, scored in zip(batch, self._score_batch([requests[i] for i in batch])):
                out[i] = scored
        return out

    def _targets(self, logits: torch.Tensor, target: List[int]) -> Scored:
        logp = F.log_softmax(logits.float(), dim=-1)
        ids = torch.tensor(target, device=logp.device)
        picked = logp.gather(-1, ids[:, None])[:, 0]
        return Scored(picked.tolist(), (logp.argmax(-1) == ids).tolist())

    def _score_batch(self, requests) -> List[Scored]:
        seqs = [list(c) + list(t) for c, t in requests]
        width = max(len(s) for s in seqs) - 1
        tokens = torch.full((len(seqs), width), self.eos_id, dtype=torch.long)
        for row, s in enumerate(seqs):
            tokens[row, :len(s) - 1] = torch.tensor(s[:-1])
        with self._autocast():
            logits = self.model(tokens.to(self.device))
        out = []
        for row, (context, target) in enumerate(requests):
            first = len(context) - 1  # the logits at position p predict token p + 1
            out.append(self._targets(logits[row, first:first + len(target)], list(target)))
        return out

    def _score_streaming(self, context: List[int], target: List[int]) -> Scored:
        seq = context + target
        inputs, state, logprobs, greedy = seq[:-1], None, [], []
        first = len(context) - 1
        for start in range(0, len(inputs), self.max_length):
            piece = inputs[start:start + self.max_length]
            with self._autocast():
                logits, state = self.model.stream(torch.tensor([piece], device=self.device), state)
            lo, hi = max(first, start), start + len(piece)
            if hi > lo:
                scored = self._targets(logits[0, lo - start:hi - start], seq[lo + 1:hi + 1])
                logprobs += scored.logprobs
                greedy += scored.greedy
        return Scored(logprobs, greedy)

    # generation

    @torch.no_grad()
    def generate(self, prompt: Sequence[int], max_new_tokens: int, stop: Sequence[int] = ()) -> List[int]:
        """Greedy continuation of ``prompt`` through the streaming state: the prompt in pieces of the
        training context, then one token at a time; ends at EOS, a ``stop`` token or ``max_new_tokens``."""
        prompt = list(prompt)
        if not prompt:
            raise ValueError("generation needs a non-empty prompt (start with BOS)")
        state, logits = None, None
        for start in range(0, len(prompt), self.max_length):
            with self._autocast():
                logits, state = self.model.stream(torch.tensor([prompt[start:start + self.max_length]],
                                                               device=self.device), state)
        out, stops = [], {self.eos_id, *stop}
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].float().argmax())
            if token in stops:
                break
            out.append(token)
            with self._autocast():
                logits, state = self.model.stream(torch.tensor([[token]], device=self.device), state)
        return out
