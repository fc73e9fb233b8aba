"""``model(ids, labels=...)``: Megatron's vocab-parallel cross-entropy equals the cross-entropy of the
gathered logits cut at vocab_size, padding columns included or not (tensor parallel 2 against one
process: tests/pretrain/test_distributed.py, vocabulary 600 padded to 640)."""

import pytest
import torch
import torch.nn.functional as F

from titans_megatron import build_model
from tests.titans_megatron.model_configs import small_config


@pytest.mark.parametrize("variant", ["transformer++", "mag"])
@pytest.mark.parametrize("vocab", [97, 128])  # padded to 128, and not padded
def test_token_losses_equal_cross_entropy_of_the_logits(variant, vocab):
    model = build_model(small_config(variant, vocab_size=vocab), seed=1)
    ids = torch.randint(0, vocab, (2, 65), generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    losses = model(ids[:, :-1], labels=ids[:, 1:])
    assert losses.dtype == torch.float32 and losses.shape == (2, 64)
    grads = torch.autograd.grad(losses.sum(), params)
    logits = model(ids[:, :-1])
    assert logits.shape[-1] == vocab
    ref = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(2, 64)
    ref_grads = torch.autograd.grad(ref.sum(), params)
    torch.testing.assert_close(losses, ref, rtol=1e-6, atol=1e-5)
    for g, r in zip(grads, ref_grads):  # fp32 sums in another order: a few ulps of the largest entries
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6 * max(1.0, r.abs().max().item()))


def test_labels_of_another_shape_are_refused():
    model = build_model(small_config("mag"), seed=1)
    with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \[2, 8\], got \[2, 7\]"):
        model(torch.zeros(2, 8, dtype=torch.long), labels=torch.zeros(2, 7, dtype=torch.long))
