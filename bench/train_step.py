"""Training throughput per variant against Transformer++: tokens/s per device and MFU of one optimizer
step, every model trained by the training loop's own code (titans_pretrain.language_model.language_model_loss, the
AdamW groups of titans_pretrain.optim, the clipping of titans_pretrain.distributed) at the preset's size, where each
variant's block count keeps the parameter count within 10% of the others (README preset table).

One process, one device. A step: forward + backward over ``micro_batch`` sequences of random token ids
(throughput does not depend on the text), gradient clipping, AdamW. Median of ``repeats`` steps after
``warmup`` (the first compiles the Triton kernels). MFU = model FLOPs per token (titans_megatron/flops.py:
6 x matmul parameters + attention over the keys each query sees + the memory's dual-form matmuls) x
tokens/s over the peak: the card's bf16 dense figure (``peak_tflops`` in the config, else detected from
its name: pretrain/device_peak.py), and always a GEMM of the run's dtype measured in the same run.

    python bench/train_step.py --config configs/bench/train_step.json --output bench/results/train_step_gpu_h100
    python bench/train_step.py --config configs/bench/train_step_smoke.json   # CPU, tiny preset, end to end
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.config import config_device, read_config  # noqa: E402
from bench.outputs import cpu_description, package_version, publish  # noqa: E402
from bench.timing import describe_error, matmul_peak, time_steps  # noqa: E402
from titans_pretrain.device_peak import peak_tflops  # noqa: E402

BASELINE = "transformer++"
REQUIRED = ("device", "precision", "preset", "variants", "seq_length", "micro_batch", "warmup", "repeats",
            "matmul_peak_size")
# The targets, on a GPU in bf16: Transformer++ MFU, and each variant's tokens/s over Transformer++.
TARGET_BASELINE_MFU = 0.40
TARGET_RATIO = {"mag": 0.7}


def load_config(path):
    cfg = read_config(path, REQUIRED)
    if BASELINE not in cfg["variants"]:
        raise SystemExit(f"{path}: variants must include {BASELINE!r}, the baseline every ratio is against")
    return cfg


def make_step(variant, cfg, device, layout):
    from titans_pretrain import optim as optim_
    from titans_pretrain.config import OptimSection
    from titans_pretrain.language_model import language_model_loss
    from titans_megatron import TitansConfig, build_model
    from titans_megatron.flops import matmul_parameters, training_flops_per_token

    config = TitansConfig.from_preset(cfg["preset"], variant=variant, seq_length=cfg["seq_length"],
                                      **cfg.get("overrides", {}))
    model = build_model(config).to(device)
    optim = OptimSection()  # implementation auto: Megatron-core's DDP and optimizer on CUDA, as in training
    opt = optim_.build(model, config, optim, layout)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (cfg["micro_batch"], config.seq_length + 1), generator=g)
    batch = {"tokens": tokens.to(device), "loss_mask": torch.ones(tokens.shape[0], config.seq_length, device=device)}

    def step():
        opt.zero_grad()
        language_model_loss(opt.model, batch, cfg["precision"]).backward()
        opt.step(opt.reduce_gradients())

    info = {"parameters": sum(p.numel() for p in model.parameters()), "layers": config.num_layers,
            "flops_per_token": training_flops_per_token(config, matmul_parameters(model))}
    return step, info


def run(cfg, device):
    from titans_pretrain.distributed import init_distributed

    layout = init_distributed(1)
    rows, start = [], time.time()
    tokens = cfg["micro_batch"] * cfg["seq_length"]
    for variant in cfg["variants"]:
        row = {"variant": variant}
        step = None
        try:
            step, info = make_step(variant, cfg, device, layout)
            seconds, peak = time_steps(step, cfg["warmup"], cfg["repeats"], device)
            row.update(info, seconds=seconds, tokens_per_s=tokens / seconds, peak_mib=peak,
                       model_tflops=info["flops_per_token"] * tokens / seconds / 1e12)
        except Exception as e:  # one variant's failure (out of memory) must not lose the others
            row["error"] = describe_error(e)
        finally:
            step = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        done = len(rows)
        eta = (time.time() - start) / done * (len(cfg["variants"]) - done)
        status = row.get("error") or f"{row['tokens_per_s']:,.0f} tok/s, {row['model_tflops']:.2f} TFLOP/s"
        print(f"[{done}/{len(cfg['variants'])}, ETA {eta:.0f}s] {variant:14s} {status}", file=sys.stderr, flush=True)
    return rows


def targets(rows, peak, applicable):
    """Each target met / not met, or n/a where the run cannot show it (CPU, fp32, a failed row)."""
    by = {r["variant"]: r for r in rows if "error" not in r}
    base = by.get(BASELINE)
    out = []

    def line(name, value, goal, fmt):
        verdict = "n/a" if value is None or not applicable else ("met" if value >= goal else "not met")
        out.append(f"| {name} | {fmt.format(value) if value is not None else '-'} | {verdict} |")

    line(f"{BASELINE} MFU >= {TARGET_BASELINE_MFU:.0%}", base and base["model_tflops"] / peak, TARGET_BASELINE_MFU,
         "{:.1%}")
    for variant, goal in TARGET_RATIO.items():
        value = by[variant]["tokens_per_s"] / base["tokens_per_s"] if base and variant in by else None
        line(f"{variant} tokens/s >= {goal}x {BASELINE}", value, goal, "{:.2f}x")
    return out


def report(cfg, rows, measured_peak, config_path, device):
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_description()
    nominal = peak_tflops(device, cfg.get("peak_tflops"))
    peak = nominal or measured_peak
    meta = {"command": "python bench/train_step.py " + " ".join(sys.argv[1:]), "config": config_path,
            "date": datetime.date.today().isoformat(), "device": machine, "torch": torch.__version__,
            "triton": package_version("triton"), "megatron_core": package_version("megatron-core"),
            "python": platform.python_version(), "matmul_peak_tflops": measured_peak, "peak_tflops": nominal}
    dtype = "bf16" if cfg["precision"] == "bf16" else "fp32"
    lines = [f"# Training step per variant against {BASELINE} ({meta['date']})", "",
             f"- command: `{meta['command']}` (config `{config_path}`)",
             f"- device: {machine}; torch {meta['torch']}, triton {meta['triton']}, megatron-core {meta['megatron_core']}",
             f"- preset {cfg['preset']}, sequence length {cfg['seq_length']}, micro-batch {cfg['micro_batch']}, "
             f"{cfg['precision']} ({'autocast, fp32 weights' if dtype == 'bf16' else 'fp32'}); forward + backward + "
             f"clipping + AdamW; median of {cfg['repeats']} steps after {cfg['warmup']} warm-up",
             f"- {dtype} GEMM measured in this run: {measured_peak:.1f} TFLOP/s"
             + (f"; MFU is over the card's {nominal:.0f} TFLOP/s" if nominal else "; MFU is over that GEMM"), ""]
    if device.type != "cuda":
        lines += ["**CPU smoke run: the tiny preset at toy sizes; the numbers show the script works, not the "
                  "speed of the models.**", ""]
    lines += [f"| variant | blocks | parameters | tokens/s | vs {BASELINE} | model TFLOP/s | MFU | % of measured GEMM "
              "| peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    base = next((r for r in rows if r["variant"] == BASELINE and "error" not in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | | | {r['error']} | | | | | |")
            continue
        vs = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        pk = "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        lines.append(f"| {r['variant']} | {r['layers']} | {r['parameters']:,} | {r['tokens_per_s']:,.0f} | {vs} | "
                     f"{r['model_tflops']:.2f} | {r['model_tflops'] / peak:.1%} | {r['model_tflops'] / measured_peak:.1%} "
                     f"| {pk} |")
    lines += ["", "Targets (issue 6; meaningful on a GPU in bf16 at 340M / 4K only):", "", "| target | measured | verdict |",
              "|---|---|---|", *targets(rows, peak, device.type == "cuda" and cfg["precision"] == "bf16")]
    return meta, "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/train_step.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = p.parse_args()
    cfg = load_config(args.config)
    device = config_device(args.config, cfg)
    from titans_pretrain.config import ConfigError
    from titans_pretrain.language_model import check_training_precision

    try:
        check_training_precision(cfg["precision"], device)
    except ConfigError as e:
        raise SystemExit(f"{args.config}: {e}") from None
    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32
    measured = matmul_peak(cfg["matmul_peak_size"], device, dtype)
    rows = run(cfg, device)
    meta, table = report(cfg, rows, measured, args.config, device)
    publish(args.output, table, {"meta": meta, "config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
