"""Multi-query associative recall (MQAR, Zoology: Arora, Eyuboglu et al. 2023) with a gap.

Zoology's task: D key-value pairs, keys and values from disjoint vocabularies (each key and each
value at most once per sequence), then every key asked again later; loss and accuracy only at the
positions whose next token is an answer. What tests Titans is the gap: G filler tokens (from a third,
disjoint vocabulary) between the last pair and the first query, so that with G beyond the attention
window (MAG/MAL) or segment (MAC) only a memory written while reading can answer.

    [BOS] k1 v1 .. kD vD  f f .. f (G)  q1 f q2 f .. qD f  [f .. f: padding to a multiple of pad_to]

The queries ask every key once in a random order. As in Zoology, the answer is only a label at its
query's position, never an input: with answers as inputs, a model can score H_D / D (0.34 at D = 8)
without binding any key to its value, by naming a value of the pairs not yet answered (measured: a
2-layer Transformer++ plateaued there). Zoology spreads its queries with power-law gaps among random
tokens; here they are every other position, so that every query is at least G tokens from its pair
(G is the experiment's variable).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BOS = 0


@dataclass(frozen=True)
class Vocab:
    """Token id ranges: BOS, then keys, values and filler, disjoint."""

    keys: int
    values: int
    filler: int

    @property
    def key0(self) -> int:
        return 1

    @property
    def value0(self) -> int:
        return 1 + self.keys

    @property
    def filler0(self) -> int:
        return 1 + self.keys + self.values

    @property
    def size(self) -> int:
        return 1 + self.keys + self.values + self.filler

    @classmethod
    def from_task(cls, task: dict) -> "Vocab":
        return cls(task["key_vocab"], task["value_vocab"], task["filler_vocab"])


def sequence_length(pairs: int, gap: int, pad_to: int) -> int:
    """1 + 4D + G rounded up to a multiple of ``pad_to`` (MAC's segment, the memory's chunk)."""
    n = 1 + 4 * pairs + gap
    return -(-n // pad_to) * pad_to


def make_batch(vocab: Vocab, pairs: int, gap: int, batch: int, pad_to: int, generator: torch.Generator,
               length: int | None = None):
    """ids [B, T]; answer_pos [B, D] (positions whose next token is an answer: the queries); answers [B, D].
    ``length`` pads with filler to a longer T (a training mixture's fewer-pair sequences at the full length)."""
    if pairs > min(vocab.keys, vocab.values):
        raise ValueError(f"{pairs} pairs need at least as many keys ({vocab.keys}) and values ({vocab.values})")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    T = sequence_length(pairs, gap, pad_to)
    if length is not None:
        if length < T:
            raise ValueError(f"length {length} is shorter than the {T} tokens {pairs} pairs and gap {gap} need")
        T = length
    ids = vocab.filler0 + torch.randint(0, vocab.filler, (batch, T), generator=generator)
    ids[:, 0] = BOS
    keys = vocab.key0 + torch.rand(batch, vocab.keys, generator=generator).argsort(dim=1)[:, :pairs]
    values = vocab.value0 + torch.rand(batch, vocab.values, generator=generator).argsort(dim=1)[:, :pairs]
    ids[:, 1:1 + 2 * pairs:2], ids[:, 2:2 + 2 * pairs:2] = keys, values
    order = torch.rand(batch, pairs, generator=generator).argsort(dim=1)
    q0 = 1 + 2 * pairs + gap
    answer_pos = (q0 + 2 * torch.arange(pairs)).expand(batch, -1)
    answers = values.gather(1, order)
    ids[:, q0:q0 + 2 * pairs:2] = keys.gather(1, order)  # each followed by filler, not its answer
    return ids, answer_pos.contiguous(), answers


def answer_logits(logits: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits -> [B, D, V] at the answer positions, fp32."""
    return logits.gather(1, answer_pos[..., None].expand(-1, -1, logits.shape[-1])).float()


def loss_and_accuracy(logits: torch.Tensor, answer_pos: torch.Tensor, answers: torch.Tensor):
    """Cross-entropy over the whole vocabulary at the answer positions only, and the fraction of
    answers that are the argmax over the whole vocabulary (as Zoology scores)."""
    picked = answer_logits(logits, answer_pos)
    loss = F.cross_entropy(picked.flatten(0, 1), answers.flatten())
    accuracy = (picked.argmax(-1) == answers).float().mean()
    return loss, accuracy
