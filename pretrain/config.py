"""The training configuration: sections of dataclasses, read from a JSON file, overridden on the
command line (``section.key=value``, the value parsed as JSON, else taken as a string). A file may
name a ``base`` file (relative to itself) whose sections it overrides key by key; the scaling configs
are ``configs/<size>_<variant>.json`` over ``configs/scaling/<size>.json`` over ``scaling/common.json``.

Every key is checked before any work: an unknown section or key, a value of the wrong type or out of
its field's range (``at_least`` / ``above`` / ``rule`` below), is a ``ConfigError`` naming it and what
was expected.
"""

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import List, Optional


class ConfigError(Exception):
    pass


def at_least(low, default):
    """A field whose values must be >= ``low`` (None passes where the field is Optional)."""
    return field(default=default, metadata={"rule": (lambda v: v >= low, f"a number >= {low}")})


def above(low, default):
    return field(default=default, metadata={"rule": (lambda v: v > low, f"a number > {low}")})


def rule(check, expected: str, default_factory):
    """A field checked by ``check(value)``; ``expected`` says what passes, for the error."""
    return field(default_factory=default_factory, metadata={"rule": (check, expected)})


@dataclass
class ModelSection:
    preset: str = "tiny"
    variant: str = "mag"
    overrides: dict = field(default_factory=dict)
    """TitansConfig fields over the preset (seq_length, window_size, ...)."""


@dataclass
class DataSection:
    dir: str = ""
    """data_prep/tokenize.py output (manifest.json, train/, val/)."""
    seed: int = 1234
    """Shuffle seed: the sample order is a function of (seed, epoch)."""
    prefetch: int = at_least(0, 4)
    """Micro-batches read ahead in a background thread (pretrain/prefetch.py), so that a step does not wait
    on a shard read; 0 reads each in the step."""


@dataclass
class OptimSection:
    lr: float = at_least(0, 3e-4)
    min_lr: float = at_least(0, 3e-5)
    betas: List[float] = rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)",
                              lambda: [0.9, 0.95])
    eps: float = above(0, 1e-8)
    weight_decay: float = at_least(0, 0.1)
    no_decay: List[str] = field(default_factory=lambda: ["norm", "bias", "linear_gates", "memory_init", "A_log"])
    """Parameters whose name contains one of these take no weight decay ([] decays everything). The
    default exempts norms, biases (the memory's gate_bias too), the memory's gate projection
    (linear_gates: theta, eta, alpha) and its initial weights, and Gated DeltaNet's decay rates (A_log,
    dt_bias; fla exempts both); LMM's and MAL's output gate (linear_gate, hidden x hidden) is a projection
    like any other and decays."""
    warmup_steps: int = at_least(0, 100)
    grad_clip: float = at_least(0, 1.0)
    """Clip the global gradient norm to this (0: no clipping)."""
    implementation: str = "auto"
    """megatron (Megatron-core DDP and optimizer), torch (torch AdamW, gradients averaged in one
    all-reduce), or auto: megatron on CUDA, torch on the CPU. Both write the same checkpoints."""
    distributed_optimizer: bool = True
    """megatron: shard the AdamW state over data-parallel ranks (ZeRO-1)."""
    overlap_grad_reduce: bool = True
    """megatron: reduce gradient buckets during the last micro-batch's backward."""
    bucket_size: Optional[int] = at_least(1, None)
    """megatron: elements per gradient bucket (None: Megatron's default)."""


@dataclass
class ScheduleSection:
    train_steps: Optional[int] = at_least(1, 1000)
    """Optimizer steps; or set train_tokens instead (whichever is set later in the config, its base
    files and the overrides wins, and clears the other)."""
    train_tokens: Optional[int] = at_least(1, None)
    """A token budget (the paper's 15B / 30B / 100B): steps = ceil(tokens / (global_batch x seq_length))."""
    global_batch: int = at_least(1, 8)
    """Sequences per optimizer step, over all data-parallel ranks (gradient accumulation fills it)."""
    micro_batch: int = at_least(1, 8)


    def steps(self, seq_length: int) -> int:
        if self.train_tokens is None:
            if self.train_steps is None:
                raise ConfigError("set schedule.train_steps or schedule.train_tokens")
            return self.train_steps
        return -(-self.train_tokens // (self.global_batch * seq_length))


@dataclass
class CheckpointSection:
    dir: str = ""
    interval: int = at_least(0, 100)
    """Save every this many steps (0: only at the end and on a stop)."""
    keep: int = at_least(0, 3)
    """The newest this many checkpoints are kept (0: all)."""
    init_from: str = ""
    """A checkpoint (a run folder with ``latest``, or one iter_NNNNNNN folder, any tensor-parallel size)
    whose weights start this run, Megatron's --finetune: used only while ``dir`` holds no checkpoint of
    its own (a requeued job resumes from its own); step, schedule and data position start at zero. The
    model may differ from the checkpoint's in what keeps parameter shapes (sequence length, window,
    segment, chunk, memory lr, ...); a shape or parameter that differs is refused by name. A Hugging Face
    folder eval_suite/export_hf.py wrote (or its copy from the Hub) works too: its weights only."""
    init_optimizer: bool = False
    """With ``init_from``: also take its AdamW moments (the parameter groups must match)."""
    async_save: bool = False
    """Write periodic checkpoints in the background: the state is copied to host memory (the step
    waits only for that copy), training goes on while it is written, and ``latest`` names it once
    complete. The save at a stop or at the end is always waited for."""


@dataclass
class LogSection:
    dir: str = ""
    """TensorBoard event files and metrics.jsonl (default: <checkpoint dir>/tensorboard)."""
    interval: int = at_least(1, 10)
    peak_tflops: Optional[float] = above(0, None)
    """One device's peak (bf16 dense) TFLOP/s for MFU (model FLOPs per token, titans_megatron/flops.py, x
    tokens/s over devices x peak); unset: from the device's name (H100, H200, A100, B200:
    pretrain/device_peak.py), and no MFU on CPU or an unknown card."""


@dataclass
class EvalSection:
    interval: int = at_least(0, 100)
    """Validation loss every this many steps (0: never)."""
    batches: int = at_least(1, 4)


@dataclass
class ParallelSection:
    tensor: int = at_least(1, 1)
    """Tensor-parallel size; data-parallel size = processes / (tensor x context)."""
    context: int = at_least(1, 1)
    """Context-parallel size: each sequence is split across this many ranks, each mixer running its heads'
    share on the whole sequence (docs/model.md, "Context parallelism"); heads must divide by tensor x
    context."""
    sequence: bool = False
    """Megatron sequence parallelism (needs tensor > 1)."""


@dataclass
class RunSection:
    seed: int = 0
    """Weight initialisation seed."""
    max_minutes: Optional[float] = above(0, None)
    """Save and stop after this long (for time-limited jobs)."""
    max_bad_steps: int = at_least(1, 5)
    """Consecutive non-finite steps (skipped) before the run aborts."""
    stop_at_step: Optional[int] = at_least(1, None)
    """Save and exit with the requeue status after this step, as a preemption would (demo, tests)."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU), bf16 (autocast), or fp32. Weights, gradients and
    optimizer state stay fp32 either way."""


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    eval: EvalSection = field(default_factory=EvalSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    run: RunSection = field(default_factory=RunSection)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_config(self, perform_initialization: bool = True):
        """The TitansConfig this run trains (preset, variant, overrides, parallel layout); its own checks
        raise ValueError naming the field."""
        from titans_megatron import TitansConfig  # megatron-core takes seconds to import: only when needed

        parallel = dict(tensor_model_parallel_size=self.parallel.tensor, sequence_parallel=self.parallel.sequence,
                        context_parallel_size=self.parallel.context)
        return TitansConfig.from_preset(self.model.preset, variant=self.model.variant,
                                        perform_initialization=perform_initialization,
                                        **{**parallel, **self.model.overrides})


CHOICES = {("run", "precision"): ("auto", "bf16", "fp32"), ("optim", "implementation"): ("auto", "megatron", "torch")}
EXCLUSIVE = {("schedule", "train_steps"): "train_tokens", ("schedule", "train_tokens"): "train_steps"}


def _check_type(where: str, value, annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return value
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
    expected = origin or annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {getattr(expected, '__name__', expected)}, got {value!r}")
    if expected is list and typing.get_args(annotation):
        (item,) = typing.get_args(annotation)
        return [_check_type(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    return value


def _section_of(config, name: str, source: str):
    sections = [f.name for f in dataclasses.fields(config)]
    if name not in sections:
        raise ConfigError(f"{source}: unknown section {name!r}; sections are {sections}")
    return getattr(config, name)


def _set(config, section: str, key: str, value, source: str):
    obj = _section_of(config, section, source)
    hints = typing.get_type_hints(type(obj))
    if key not in hints:
        raise ConfigError(f"{source}: unknown key {section}.{key}; {section} has {sorted(hints)}")
    value = _check_type(f"{source}: {section}.{key}", value, hints[key])
    check, expected = {f.name: f for f in dataclasses.fields(obj)}[key].metadata.get("rule", (None, None))
    if check is not None and value is not None and not check(value):
        raise ConfigError(f"{source}: {section}.{key} must be {expected}, got {value!r}")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{source}: {section}.{key} must be one of {list(choices)}, got {value!r}")
    if isinstance(getattr(obj, key), dict) and isinstance(value, dict):
        value = {**getattr(obj, key), **value}  # model.overrides: merged over the base file's
    setattr(obj, key, value)
    if (section, key) in EXCLUSIVE:
        setattr(obj, EXCLUSIVE[(section, key)], None)


def config_from_dict(data: dict, source: str = "config", config: Optional[TrainConfig] = None) -> TrainConfig:
    """Sections of ``data`` over ``config`` (defaults when None), checked key by key."""
    config = config or TrainConfig()
    for section, values in data.items():
        if section in ("description", "base"):
            continue
        if not isinstance(values, dict):
            _section_of(config, section, source)
            raise ConfigError(f"{source}: section {section!r} must be an object")
        for key, value in values.items():
            _set(config, section, key, value, source)
    return config


def _read_json(path: str, chain=()) -> list:
    """``path`` and the files its ``base`` names (relative to it), base first."""
    if path in chain:
        raise ConfigError(f"{path}: 'base' files form a cycle: {' -> '.join(chain + (path,))}")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file" + (f" (the base of {chain[-1]})" if chain else "")) from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of sections")
    base = data.get("base")
    if base is None:
        return [(path, data)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a path, got {base!r}")
    return _read_json(os.path.normpath(os.path.join(os.path.dirname(path), base)), chain + (path,)) + [(path, data)]


def load_config(path: Optional[str], overrides: List[str] = (), config=None) -> TrainConfig:
    """A config file (over the files its ``base`` chain names), then ``section.key=value`` overrides,
    over ``config`` (default: a TrainConfig; any dataclass of section dataclasses, as eval_suite's)."""
    config = config or TrainConfig()
    for source, data in _read_json(path) if path else []:
        config_from_dict(data, source, config)
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or "." not in name:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        section, key = name.split(".", 1)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        _set(config, section, key, value, "command line")
    return config
