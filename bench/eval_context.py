"""Long-context evaluation per variant: tokens/s and peak memory of one full forward over L tokens
against streaming the same L tokens through ``model.stream`` in pieces of the training context (the
state carried between pieces), at each context length L of the config.

One process, one device, inference mode, the evaluation's precision (eval_suite: bf16 autocast over
fp32 weights, or fp32). Random token ids and random-initialised weights: speed and memory do not
depend on either. Per (variant, L): median seconds of ``repeats`` calls after ``warmup`` of each path
(bench/timing.py), streaming tokens/s over the full forward's measured in the same run, the peak
memory of one call of each (CUDA: ``max_memory_allocated`` above what was allocated before the call;
CPU: the resident set's peak increase, ``bench.memory_usage.rss_peak_mib``), the bytes of the state
carried between pieces at the end of the stream (constant in L for the Titans variants; Transformer++
keeps every key and value), and whether the last piece's logits match the full forward's last positions
(||stream - full|| / ||full|| <= ``logits_tolerance``). A path that fails (out of memory: the full
forward at long L) is recorded as that path's error; the other still runs.

    python bench/eval_context.py --config configs/bench/eval_context.json --output bench/results/eval_context_gpu_h100
    python bench/eval_context.py --config configs/bench/eval_context_smoke.json   # CPU, tiny preset, end to end

``--variants mag transformer++`` runs a subset (one output per call), e.g. to fit a device's time limit.
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
from bench.memory_usage import rss_peak_mib, state_bytes, trim_heap  # noqa: E402
from bench.outputs import cpu_description, package_version, publish  # noqa: E402
from bench.timing import describe_error, time_steps  # noqa: E402

REQUIRED = ("device", "precision", "preset", "variants", "seq_length", "lengths", "batch", "warmup", "repeats",
            "logits_tolerance")
PATHS = ("full", "stream")


def load_config(path):
    cfg = read_config(path, REQUIRED)
    piece = cfg.get("piece_length", cfg["seq_length"])
    if not (isinstance(piece, int) and piece >= 1):
        raise SystemExit(f"{path}: piece_length must be a positive integer, got {piece!r}")
    if not cfg["lengths"] or not all(isinstance(n, int) and n >= 1 for n in cfg["lengths"]):
        raise SystemExit(f"{path}: lengths must be a non-empty list of positive integers, got {cfg['lengths']!r}")
    return cfg


def build(variant, cfg, device):
    from titans_megatron import TitansConfig, build_model

    config = TitansConfig.from_preset(cfg["preset"], variant=variant, seq_length=cfg["seq_length"],
                                      **cfg.get("overrides", {}))
    model = build_model(config).to(device).eval()
    info = {"parameters": sum(p.numel() for p in model.parameters()), "layers": config.num_layers}
    return model, info


def measure(model, length, cfg, device, row):
    """Time both paths at context ``length``, fill ``row``; a failing path records its error."""
    from titans_pretrain.language_model import autocast

    piece, batch = cfg.get("piece_length", cfg["seq_length"]), cfg["batch"]
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=g).to(device)
    last = length - (length - 1) // piece * piece  # tokens in the last piece
    kept = {}

    def full():
        with torch.inference_mode(), autocast(cfg["precision"], device):
            kept["full"] = model(ids)[:, -last:].clone()  # the whole [B, L, vocab] is freed on return

    def stream():
        state = None
        with torch.inference_mode(), autocast(cfg["precision"], device):
            for start in range(0, length, piece):
                logits, state = model.stream(ids[:, start:start + piece], state)
        kept["stream"], kept["state_bytes"] = logits, state_bytes(state)

    for name, step in zip(PATHS, (full, stream)):
        try:
            seconds, peak = time_steps(step, cfg["warmup"], cfg["repeats"], device)
            if device.type != "cuda":
                peak = rss_peak_mib(step)
            row.update({f"{name}_seconds": seconds, f"{name}_tokens_per_s": batch * length / seconds,
                        f"{name}_peak_mib": peak})
        except Exception as e:  # out of memory at long L must not lose the other path or the other rows
            kept.pop(name, None)
            row[f"{name}_error"] = describe_error(e)
        finally:
            if name in kept:
                kept[name] = kept[name].float().cpu()  # off the device before the other path's peak
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "state_bytes" in kept:
        row["state_bytes"] = kept["state_bytes"]
    if "full_error" not in row and "stream_error" not in row:
        row["stream_over_full"] = row["stream_tokens_per_s"] / row["full_tokens_per_s"]
        full_last, stream_last = kept["full"].double(), kept["stream"].double()
        row["logits_rel_err"] = float((stream_last - full_last).norm() / full_last.norm())
        row["logits_match"] = bool(row["logits_rel_err"] <= cfg["logits_tolerance"])
    row["logits_mib"] = batch * length * model.config.vocab_size * (2 if cfg["precision"] == "bf16" else 4) / 2**20


def run(cfg, device):
    rows, start = [], time.time()
    total = len(cfg["variants"]) * len(cfg["lengths"])
    for variant in cfg["variants"]:
        model = None
        try:
            model, info = build(variant, cfg, device)
        except Exception as e:  # a variant that cannot be built still gets its rows
            info = {"full_error": describe_error(e), "stream_error": describe_error(e)}
        for length in cfg["lengths"]:
            row = {"variant": variant, "length": length, **info}
            if model is not None:
                measure(model, length, cfg, device, row)
            rows.append(row)
            done = len(rows)
            eta = (time.time() - start) / done * (total - done)
            status = ", ".join(row.get(f"{p}_error") or f"{p} {row[f'{p}_tokens_per_s']:,.0f} tok/s" for p in PATHS)
            print(f"[{done}/{total}, ETA {eta:.0f}s] {variant:14s} L={length:<7d} {status}", file=sys.stderr, flush=True)
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _mib(value):
    return "-" if value is None else f"{value:,.1f}"


def _row(r):
    cells = [r["variant"], f"{r['length']:,}"]
    for p in PATHS:
        cells.append(r.get(f"{p}_error") or f"{r[f'{p}_tokens_per_s']:,.0f}")
    cells.append(f"{r['stream_over_full']:.2f}x" if "stream_over_full" in r else "-")
    for p in PATHS:
        cells.append("-" if f"{p}_error" in r else _mib(r[f"{p}_peak_mib"]))
    cells.append(f"{r['state_bytes'] / 2**20:,.2f}" if "state_bytes" in r else "-")
    if "logits_match" in r:
        cells.append(f"{'yes' if r['logits_match'] else 'NO'} ({r['logits_rel_err']:.1e})")
    else:
        cells.append("-")
    return "| " + " | ".join(cells) + " |"


def report(cfg, rows, config_path, device, memory_note):
    from titans_kernels.memory_op import resolve_backend as memory_backend
    from titans_core.attention_core import resolve_backend as attention_backend

    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_description()
    overrides = cfg.get("overrides", {})
    backends = (f"attention {attention_backend(overrides.get('attention_backend', 'auto'), device)}, "
                f"memory {memory_backend(overrides.get('memory_backend', 'auto'), device)}")
    meta = {"command": "python bench/eval_context.py " + " ".join(sys.argv[1:]), "config": config_path,
            "date": datetime.date.today().isoformat(), "device": machine, "torch": torch.__version__,
            "triton": package_version("triton"), "megatron_core": package_version("megatron-core"),
            "python": platform.python_version(), "backends": backends, "memory_measure": memory_note}
    piece = cfg.get("piece_length", cfg["seq_length"])
    lines = [f"# Long-context evaluation: streaming against one full forward ({meta['date']})", "",
             f"- command: `{meta['command']}` (config `{config_path}`)",
             f"- device: {machine}; torch {meta['torch']}, triton {meta['triton']}, megatron-core {meta['megatron_core']}",
             f"- preset {cfg['preset']}, training context {cfg['seq_length']}, streaming pieces of {piece} tokens, "
             f"batch {cfg['batch']}, {cfg['precision']} "
             f"({'autocast, fp32 weights' if cfg['precision'] == 'bf16' else 'fp32'}), inference mode; backends: "
             f"{backends}; median of {cfg['repeats']} calls after {cfg['warmup']} warm-up",
             "- random-initialised weights and random token ids: speed and memory do not depend on them; the "
             "logits check compares two computations of the same function",
             f"- peak memory: {memory_note}",
             f"- logits: ||stream - full|| / ||full|| over the last piece's positions; match if <= "
             f"{cfg['logits_tolerance']:g}. The full forward returns [B, L, vocab] logits "
             f"({_mib(rows[-1]['logits_mib']) if rows and 'logits_mib' in rows[-1] else '-'} MiB at L = "
             f"{cfg['lengths'][-1]:,}), which count in its peak; streaming holds one piece's", ""]
    if device.type != "cuda":
        lines += ["**CPU smoke run: the tiny preset at toy sizes; the numbers show the script works, not the "
                  "speed of the models.**", ""]
    lines += ["| variant | L | full tokens/s | stream tokens/s | stream / full | full peak MiB | stream peak MiB "
              "| state MiB | logits match (rel. err) |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in rows]
    return meta, "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/eval_context.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--variants", nargs="+", help="only these variants (default: the config's), e.g. to fit a time limit")
    args = p.parse_args()
    cfg = load_config(args.config)
    if args.variants:
        cfg["variants"] = args.variants
    device = config_device(args.config, cfg)
    if device.type == "cuda":
        memory_note = "torch.cuda.max_memory_allocated of one call above what was allocated before it (weights, inputs)"
    else:
        memory_note = ("CPU: peak resident-set increase of one call after the timed ones (VmHWM after "
                       "/proc/self/clear_refs, over VmRSS before; heap trimmed first "
                       + ("by glibc malloc_trim" if trim_heap() else "not possible here: may undercount")
                       + "); torch keeps no CPU allocation count, so this is the OS's view, not torch's")
    rows = run(cfg, device)
    meta, table = report(cfg, rows, args.config, device, memory_note)
    publish(args.output, table, {"meta": meta, "config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
