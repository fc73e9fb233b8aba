"""Checkpoint pieces in one process: an exact round trip of model and AdamW state for every variant,
and clear errors when the pieces do not fit the model."""

import pytest
import torch

from titans_pretrain import resharding
from titans_megatron import TitansConfig, build_model

VARIANTS = ["transformer++", "lmm", "mag", "mal", "mac", "gdn"]


def trained(variant, seed):
    config = TitansConfig.from_preset("tiny", variant=variant, seq_length=64, vocab_size=300, segment_length=32,
                                      window_size=32, num_memory_tokens=4, num_persistent_tokens=2)
    model = build_model(config, seed=seed)
    optimizer = torch.optim.AdamW([{"params": [p for n, p in model.named_parameters() if "norm" not in n]},
                                   {"params": [p for n, p in model.named_parameters() if "norm" in n],
                                    "weight_decay": 0.0}], lr=1e-3)
    model(torch.randint(0, 300, (1, 64), generator=torch.Generator().manual_seed(seed))).square().mean().backward()
    optimizer.step()
    return config, model, optimizer


def roundtrip(obj, tmp_path, name):
    torch.save(obj, tmp_path / name)
    return torch.load(tmp_path / name, weights_only=True, mmap=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_and_optimizer_round_trip_exactly(variant, tmp_path):
    _, model, optimizer = trained(variant, seed=1)
    _, other, other_opt = trained(variant, seed=2)
    resharding.load_model(other, [roundtrip(resharding.model_pieces(model), tmp_path, "m.pt")])
    resharding.load_optimizer(other, other_opt, [roundtrip(resharding.optimizer_pieces(model, optimizer), tmp_path, "o.pt")])
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    mine, theirs = optimizer.state_dict(), other_opt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys()
    for i, state in mine["state"].items():
        for key, value in state.items():
            assert torch.equal(value, theirs["state"][i][key]), (i, key)


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    _, model, _ = trained("mag", seed=1)
    pieces = resharding.model_pieces(model)
    name, shape, offset, data = pieces["pieces"][0]
    wrong = {**pieces, "pieces": [(name, (shape[0] + 1,) + shape[1:], offset, data)] + pieces["pieces"][1:]}
    with pytest.raises(resharding.ReshardError, match=f"{name}: the checkpoint's full shape"):
        resharding.load_model(model, [wrong])
    half = {**pieces, "pieces": [(name, shape, offset, data[: shape[0] // 2])] + pieces["pieces"][1:]}
    with pytest.raises(resharding.ReshardError, match=f"{name}: the checkpoint covers"):
        resharding.load_model(model, [half])
    with pytest.raises(resharding.ReshardError, match="unknown checkpoint format"):
        resharding.load_model(model, [{"format": "something else", "pieces": []}])


def test_optimizer_groups_must_hold_the_same_parameters():
    _, model, optimizer = trained("mag", seed=1)
    saved = resharding.optimizer_pieces(model, optimizer)
    saved["groups"][0]["params"] = saved["groups"][0]["params"][1:]
    with pytest.raises(resharding.ReshardError, match="holds other parameters"):
        resharding.load_optimizer(model, optimizer, [saved])
