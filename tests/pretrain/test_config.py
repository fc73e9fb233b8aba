"""Config files: base chains, the train_steps / train_tokens pair, and the scaling-study configs."""

import json

import pytest

from titans_pretrain.config import ConfigError, load_config
from tests.helpers import ROOT

SIZES = {"170m": 15e9, "340m": 15e9, "400m": 15e9, "760m": 30e9, "1.3b": 100e9}
VARIANTS = ["transformer++", "lmm", "mag", "mal", "mac", "gdn"]


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def test_base_chain_overrides_key_by_key(tmp_path):
    write(tmp_path / "a" / "common.json", {"optim": {"lr": 1.0, "min_lr": 0.1}, "model": {"overrides": {"seq_length": 64}},
                                           "schedule": {"train_tokens": 6400, "global_batch": 10}})
    path = write(tmp_path / "b.json", {"base": "a/common.json", "optim": {"lr": 2.0},
                                       "model": {"overrides": {"vocab_size": 100}}})
    config = load_config(path)
    assert (config.optim.lr, config.optim.min_lr) == (2.0, 0.1)
    assert config.model.overrides == {"seq_length": 64, "vocab_size": 100}
    assert config.schedule.steps(64) == 10
    assert load_config(path, ["schedule.train_steps=3"]).schedule.steps(64) == 3  # the later one wins
    assert load_config(path, ["schedule.train_steps=3", "schedule.train_tokens=641"]).schedule.steps(64) == 2


def test_bad_base_chains(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.json: no such config file \(the base of .*b.json\)"):
        load_config(write(tmp_path / "b.json", {"base": "missing.json"}))
    write(tmp_path / "x.json", {"base": "y.json"})
    with pytest.raises(ConfigError, match="'base' files form a cycle"):
        load_config(write(tmp_path / "y.json", {"base": "x.json"}))
    with pytest.raises(ConfigError, match=r"c.json: unknown key optim.lrr"):
        load_config(write(tmp_path / "d.json", {"base": write(tmp_path / "c.json", {"optim": {"lrr": 1}})}))
    with pytest.raises(ConfigError, match="set schedule.train_steps or schedule.train_tokens"):
        load_config(None, ["schedule.train_steps=null"]).schedule.steps(64)
    with pytest.raises(ConfigError, match=r"run.precision must be one of \['auto', 'bf16', 'fp32'\], got 'fp8'"):
        load_config(None, ["run.precision=fp8"])


@pytest.mark.parametrize("size", list(SIZES))
def test_scaling_configs_follow_the_paper(size):
    from titans_megatron import TitansConfig

    for variant in VARIANTS:
        config = load_config(str(ROOT / "configs" / f"{size}_{variant}.json"))
        assert (config.model.preset, config.model.variant) == (size, variant)
        assert (config.optim.lr, config.optim.weight_decay, config.optim.betas) == (4e-4, 0.1, [0.9, 0.95])
        assert config.schedule.global_batch * 4096 == 128 * 4096
        model = TitansConfig.from_preset(size, variant=variant, perform_initialization=False, **config.model.overrides)
        assert (model.seq_length, model.vocab_size) == (4096, 32000)
        steps = config.schedule.steps(model.seq_length)
        assert steps * 128 * 4096 >= SIZES[size] > (steps - 1) * 128 * 4096


@pytest.mark.parametrize("override,message", [
    ("log.interval=0", "log.interval must be a number >= 1, got 0"),
    ("schedule.micro_batch=0", "schedule.micro_batch must be a number >= 1, got 0"),
    ("schedule.train_steps=-3", "schedule.train_steps must be a number >= 1, got -3"),
    ("run.max_minutes=0", "run.max_minutes must be a number > 0, got 0.0"),
    ('optim.betas=["a",0.95]', r"optim.betas\[0\]: expected float, got 'a'"),
    ("optim.betas=[0.9]", r"optim.betas must be two numbers in \[0, 1\), got \[0.9\]"),
    ("optim.betas=[0.9,1.0]", r"optim.betas must be two numbers in \[0, 1\)"),
])
def test_values_out_of_range(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(ROOT / "configs" / "tiny_mag.json"), [override])


def test_values_in_range_pass():
    config = load_config(str(ROOT / "configs" / "tiny_mag.json"),
                         ["optim.grad_clip=0", "checkpoint.keep=0", "eval.interval=0", "optim.betas=[0, 0.5]"])
    assert (config.optim.grad_clip, config.checkpoint.keep, config.optim.betas) == (0.0, 0, [0.0, 0.5])
