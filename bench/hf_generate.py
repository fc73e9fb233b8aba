"""Greedy generation with the Hugging Face model (``TitansForCausalLM.generate``, its ``TitansCache``)
against our own streaming generation (``TitansLM.stream`` token by token, as eval_suite does), per
variant and prompt length, measured in the same run.

One process, one device, inference mode. Random-initialised weights converted to the Hugging Face
model (titans_hf.convert) and random prompt ids: speed does not depend on either. Per (variant,
prompt length P): median seconds of ``repeats`` calls (after ``warmup``) of prefill + ``new_tokens``
greedy tokens on each path, tokens/s (new tokens over the whole call), the Hugging Face path's
tokens/s over ours, whether both generated the same tokens, and the bytes of the Hugging Face cache at
the end (constant in P for the Titans variants and Gated DeltaNet; Transformer++ keeps every key and
value). ``precision`` bf16: the Hugging Face model holds bf16 weights (``dtype=torch.bfloat16``, how
users load it), ours runs under bf16 autocast over fp32 weights (eval_suite's precision); tokens may
then differ after a near tie.

    python bench/hf_generate.py --config configs/bench/hf_generate.json --output bench/results/hf_generate_gpu_h100
    python bench/hf_generate.py --config configs/bench/hf_generate_smoke.json   # CPU, tiny preset, end to end
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
from bench.memory_usage import state_bytes  # noqa: E402
from bench.outputs import cpu_description, package_version, publish  # noqa: E402
from bench.timing import describe_error, time_steps  # noqa: E402

REQUIRED = ("device", "precision", "preset", "variants", "seq_length", "prompt_lengths", "new_tokens", "warmup",
            "repeats")
PATHS = ("hf", "ours")


def build(variant, cfg, device):
    """(our model, the Hugging Face model holding its weights)."""
    from titans_hf import TitansForCausalLM
    from titans_hf.convert import hf_config, hf_state_dict
    from titans_megatron import TitansConfig, build_model

    config = TitansConfig.from_preset(cfg["preset"], variant=variant, seq_length=cfg["seq_length"],
                                      **cfg.get("overrides", {}))
    ours = build_model(config).to(device).eval()
    hf = TitansForCausalLM(hf_config(config))
    hf.load_state_dict(hf_state_dict(ours.state_dict(), config), strict=True)
    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32
    return ours, hf.to(device=device, dtype=dtype).eval(), {"parameters": sum(p.numel() for p in hf.parameters())}


def measure(ours, hf, prompt_length, cfg, device, row):
    from titans_pretrain.language_model import autocast

    n, piece = cfg["new_tokens"], cfg["seq_length"]
    g = torch.Generator().manual_seed(prompt_length)
    prompt = torch.randint(0, ours.config.vocab_size, (1, prompt_length), generator=g).to(device)
    kept = {}

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, eos_token_id=None, pad_token_id=0, return_dict_in_generate=True)
        kept["hf"], kept["cache_bytes"] = out.sequences[0, prompt_length:].tolist(), state_bytes(out.cache.state)

    def run_ours():
        tokens, state = [], None
        with torch.inference_mode(), autocast(cfg["precision"], device):
            for start in range(0, prompt_length, piece):
                logits, state = ours.stream(prompt[:, start:start + piece], state)
            for _ in range(n):
                tokens.append(int(logits[0, -1].float().argmax()))
                if len(tokens) < n:
                    logits, state = ours.stream(torch.tensor([[tokens[-1]]], device=device), state)
        kept["ours"] = tokens

    for name, step in zip(PATHS, (run_hf, run_ours)):
        try:
            seconds, peak = time_steps(step, cfg["warmup"], cfg["repeats"], device)
            row.update({f"{name}_seconds": seconds, f"{name}_tokens_per_s": n / seconds, f"{name}_peak_mib": peak})
        except Exception as e:
            row[f"{name}_error"] = describe_error(e)
    if "hf_error" not in row and "ours_error" not in row:
        row["hf_over_ours"] = row["hf_tokens_per_s"] / row["ours_tokens_per_s"]
        row["same_tokens"] = kept["hf"] == kept["ours"]
        row["cache_bytes"] = kept["cache_bytes"]


def run(cfg, device):
    rows, start = [], time.time()
    total = len(cfg["variants"]) * len(cfg["prompt_lengths"])
    for variant in cfg["variants"]:
        models = None
        try:
            *models, info = build(variant, cfg, device)
        except Exception as e:
            info = {f"{p}_error": describe_error(e) for p in PATHS}
        for length in cfg["prompt_lengths"]:
            row = {"variant": variant, "prompt_length": length, **info}
            if models:
                measure(*models, length, cfg, device, row)
            rows.append(row)
            eta = (time.time() - start) / len(rows) * (total - len(rows))
            status = ", ".join(row.get(f"{p}_error") or f"{p} {row[f'{p}_tokens_per_s']:,.1f} tok/s" for p in PATHS)
            print(f"[{len(rows)}/{total}, ETA {eta:.0f}s] {variant:14s} P={length:<7d} {status}", file=sys.stderr, flush=True)
        models = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _row(r):
    cells = [r["variant"], f"{r['prompt_length']:,}"]
    cells += [r.get(f"{p}_error") or f"{r[f'{p}_tokens_per_s']:,.1f}" for p in PATHS]
    cells.append(f"{r['hf_over_ours']:.2f}x" if "hf_over_ours" in r else "-")
    cells.append(("yes" if r["same_tokens"] else "no") if "same_tokens" in r else "-")
    cells.append(f"{r['cache_bytes'] / 2**20:,.2f}" if "cache_bytes" in r else "-")
    return "| " + " | ".join(cells) + " |"


def report(cfg, rows, config_path, device):
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_description()
    meta = {"command": "python bench/hf_generate.py " + " ".join(sys.argv[1:]), "config": config_path,
            "date": datetime.date.today().isoformat(), "device": machine, "torch": torch.__version__,
            "transformers": package_version("transformers"), "python": platform.python_version()}
    lines = [f"# Generation: the Hugging Face model against our streaming API ({meta['date']})", "",
             f"- command: `{meta['command']}` (config `{config_path}`)",
             f"- device: {machine}; torch {meta['torch']}, transformers {meta['transformers']}",
             f"- preset {cfg['preset']}, training context {cfg['seq_length']} (prompts read in pieces of it), "
             f"{cfg['new_tokens']} greedy tokens after each prompt, batch 1, {cfg['precision']} "
             f"({'Hugging Face: bf16 weights; ours: autocast over fp32 weights' if cfg['precision'] == 'bf16' else 'fp32'}),"
             f" median of {cfg['repeats']} calls after {cfg['warmup']} warm-up",
             "- tokens/s: new tokens over the whole call (prefill included); random weights and prompts",
             "- cache MiB: the Hugging Face model's TitansCache after the call", ""]
    if device.type != "cuda":
        lines += ["**CPU smoke run: the tiny preset at toy sizes; the numbers show the script works, not the "
                  "speed of the models.**", ""]
    lines += ["| variant | prompt | HF tokens/s | ours tokens/s | HF / ours | same tokens | cache MiB |",
              "|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in rows]
    return meta, "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/hf_generate.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--variants", nargs="+", help="only these variants (default: the config's)")
    args = p.parse_args()
    cfg = read_config(args.config, REQUIRED)
    if args.variants:
        cfg["variants"] = args.variants
    device = config_device(args.config, cfg)
    rows = run(cfg, device)
    meta, table = report(cfg, rows, args.config, device)
    publish(args.output, table, {"meta": meta, "config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
