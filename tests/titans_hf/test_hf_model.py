"""The Hugging Face model computes what the Megatron model computes: logits per variant at lengths
within and past the training context, the streaming state, greedy generation, save/load and bf16."""

import pytest
import torch

import titans_hf
from titans_hf.convert import hf_state_dict, megatron_state_dict
from tests.titans_hf.pairs import HF_VARIANTS, ids, pair


@pytest.mark.parametrize("variant", HF_VARIANTS)
def test_logits_equal_the_megatron_model(variant):
    config, megatron, model = pair(variant)
    with torch.no_grad():
        for length in (1, 37, config.seq_length, 2 * config.seq_length + 11):  # past it: in pieces
            x = ids(config, length)
            torch.testing.assert_close(model(x).logits, megatron(x), rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"{variant} T={length}: {m}")


@pytest.mark.parametrize("variant", ["lmm", "mag", "mal-res", "mac", "transformer++", "gdn"])
def test_cache_is_the_streaming_state_and_pieces_equal_one_pass(variant):
    config, megatron, model = pair(variant)
    x = ids(config, 90, batch=1)
    with torch.no_grad():
        _, state = megatron.stream(x[:, :50])
        _, state = megatron.stream(x[:, 50:], state)
        first = model(x[:, :50], use_cache=True)
        second = model(x[:, 50:], cache=first.cache, use_cache=True)
        whole = model(x).logits
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), whole, rtol=1e-5, atol=1e-5)
    cache = second.cache
    assert isinstance(cache, titans_hf.TitansCache) and cache.get_seq_length() == 90
    assert sorted(cache.state) == sorted(state)

    def flat(x, prefix=""):
        if isinstance(x, dict):
            for k, v in x.items():
                yield from flat(v, f"{prefix}{k}.")
        elif isinstance(x, (tuple, list)):
            for i, v in enumerate(x):
                yield from flat(v, f"{prefix}{i}.")
        else:
            yield prefix, x

    ours, theirs = dict(flat(cache.state)), dict(flat(state))
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        else:
            assert ours[name] == value, name


@pytest.mark.parametrize("variant", ["mag", "mac", "mal", "gdn"])
def test_greedy_generate_equals_the_streaming_api(variant):
    config, megatron, model = pair(variant)
    prompt = ids(config, 2 * config.seq_length + 5, batch=1)  # a prompt longer than the context
    with torch.no_grad():
        expected, state, logits = [], None, None
        for start in range(0, prompt.shape[1], config.seq_length):
            logits, state = megatron.stream(prompt[:, start:start + config.seq_length], state)
        for _ in range(12):
            token = int(logits[0, -1].argmax())
            expected.append(token)
            logits, state = megatron.stream(torch.tensor([[token]]), state)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    assert out[0, prompt.shape[1]:].tolist() == expected


def test_cache_stays_the_same_size_however_long_generation_runs():
    config, _, model = pair("mag")
    with torch.no_grad():
        out = model(ids(config, 40, batch=1), use_cache=True)
        sizes = []
        for step in range(3 * config.window_size):
            out = model(torch.tensor([[step % config.vocab_size]]), cache=out.cache, use_cache=True)
            sizes.append(out.cache.numel())
    # past the window it only cycles with the memory chunk under way (its inputs wait for a chunk's end)
    later = sizes[config.window_size:]
    assert all(a == b for a, b in zip(later, later[config.memory_chunk_size:]))
    assert max(later) == max(later[-config.memory_chunk_size:])


def test_save_and_load_round_trip_and_bf16(tmp_path):
    config, megatron, model = pair("mac")
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded = titans_hf.TitansForCausalLM.from_pretrained(tmp_path / "m").eval()
    x = ids(config, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
        half = titans_hf.TitansForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16).eval()
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
        got = half(x).logits
    assert torch.isfinite(got).all()
    # bf16 follows fp32 within bf16's rounding: the same top token at most positions
    agree = (got.argmax(-1) == model(x).logits.argmax(-1)).float().mean()
    assert agree > 0.8, float(agree)


def test_auto_classes_load_our_model(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    _, _, model = pair("lmm")
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "TitansHFConfig"
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)).__name__ == "TitansForCausalLM"


def test_names_round_trip():
    config, megatron, _ = pair("mal-res")
    state = megatron.state_dict()
    back = megatron_state_dict(hf_state_dict(state, config), config)
    expected = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
    assert sorted(back) == sorted(expected)
    for name, tensor in expected.items():
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            assert torch.equal(back[name][:config.vocab_size], tensor[:config.vocab_size])
            assert not back[name][config.vocab_size:].any()
        else:
            assert torch.equal(back[name], tensor), name


def test_padding_and_unknown_variant_are_refused():
    config, _, model = pair("mag")
    x = ids(config, 8)
    with pytest.raises(ValueError, match="padded inputs"):
        model(x, attention_mask=torch.tensor([[0] * 2 + [1] * 6, [1] * 8]))
    with pytest.raises(ValueError, match="no Hugging Face model"):
        titans_hf.TitansHFConfig(variant="rwkv")


@pytest.mark.parametrize("variant", ["mac", "gdn"])
def test_labels_give_the_training_loss_and_gradients(variant):
    """transformers' loss (labels shifted inside) is the mean next-token loss of the Megatron model, and
    it back-propagates into every parameter (fine-tuning with transformers' tools works)."""
    config, megatron, model = pair(variant)
    x = ids(config, 40)
    out = model(x, labels=x)
    with torch.no_grad():
        expected = megatron(x[:, :-1], labels=x[:, 1:]).mean()
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
