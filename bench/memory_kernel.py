"""The Triton memory kernels against their peers: forward+backward time, model TFLOP/s, bytes, memory.

Rows, all at the same B, T, H, d_h and input dtype, one batch of ``tokens_per_batch`` tokens:
  triton           titans_kernels.neural_memory(backend="triton"): the op alone (q, k, v, gates given)
  torch            the same op, backend="torch" (our reference implementation)
  titans-pytorch   titans_pytorch.NeuralMemory (the layer: its projections are included in its time)
  fla-gated-delta  flash-linear-attention's chunk_gated_delta_rule (a linear-memory peer)
  sdpa-causal      torch scaled_dot_product_attention, causal (FlashAttention backend on GPU)
  flash-attn       flash_attn_func, causal, when the package is installed

FLOP model (stated, not counted): the memory's forward is, per token and head,
  depth 2: 22 E d^2 + (4 + 4 E) C d   (E = 4: 88 d^2 + 20 C d)      depth 1: 10 d^2 + 4 C d
(the matmuls of the dual form: key pass, query pass of W and S, state update, and the C x C scores), and
forward+backward is 3x forward. Causal attention: 2 T d per token and head forward, 3.5x for
forward+backward (FlashAttention's convention). "% peak" divides by a bf16 (or the run's dtype) GEMM
measured in the same run. Bytes: the op's compulsory HBM traffic under the same model (inputs,
outputs, coefficient matrices, checkpoints and the backward's recomputed states), see ``bytes_model``.

Timing: per row, ``warmup`` steps (compilation), then ``repeats`` timed steps, each synchronised;
the median is reported. Peak memory: max_memory_allocated over one step after the warm-up, above what
was allocated before it (inputs included in the baseline). On CPU (the smoke config) the kernels run
under the Triton interpreter, peak memory is not measured, and the numbers only show the script works.

    python bench/memory_kernel.py --config configs/bench/memory_kernel.json --output bench/results/memory_kernel_gpu_h100
    python bench/memory_kernel.py --config configs/bench/memory_kernel_smoke.json   # CPU, end to end
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse
import datetime
import platform
import time

import torch
import torch.nn.functional as F

from bench.config import read_config  # noqa: E402
from bench.outputs import cpu_description, package_version, publish  # noqa: E402
from bench.timing import describe_error, matmul_peak, time_steps  # noqa: E402
from titans_kernels.memory_op.flops import memory_forward_flops  # noqa: E402

MEMORY_IMPLS = ("triton", "torch", "titans-pytorch")
ATTENTION_IMPLS = ("sdpa-causal", "flash-attn")


def load_config(path):
    required = ("device", "dtype", "tokens_per_batch", "T", "heads_x_head_dim", "depth", "expansion", "chunk",
                "warmup", "repeats", "impls", "matmul_peak_size")
    cfg = read_config(path, required, precision=False)
    unknown = [i for i in cfg["impls"] if i not in (*MEMORY_IMPLS, "fla-gated-delta", *ATTENTION_IMPLS)]
    if unknown:
        raise SystemExit(f"{path}: unknown impls {unknown}")
    return cfg


def step_flops(impl, cfg, T, H, d):
    tokens = cfg["tokens_per_batch"]
    if impl in ATTENTION_IMPLS:
        return 3.5 * 2 * T * d * tokens * H
    if impl == "fla-gated-delta":
        return None  # a different recurrence: compared by tokens/s only
    return 3 * memory_forward_flops(d, cfg["depth"], cfg["expansion"], cfg["chunk"]) * tokens * H


def bytes_model(cfg, T, H, d, dtype_bytes):
    """Compulsory HBM bytes of one forward+backward of the Triton op, per the kernels' design:
    forward reads q, k, v and the coefficients, writes out and a checkpoint per group; backward reads
    q, k, v, dout, coefficients and checkpoints, writes dq, dk, dv (fp32), the coefficient gradients,
    and writes + reads each recomputed chunk state once."""
    from titans_kernels.memory_op.triton_backend import group_chunks

    C, tokens = cfg["chunk"], cfg["tokens_per_batch"]
    E = cfg["expansion"] if cfg["depth"] == 2 else 1
    state = 4 * (2 * 2 * E * d * d if cfg["depth"] == 2 else 2 * d * d)   # fp32 W and S, per head
    chunks = -(-T // C)
    group = group_chunks(chunks)
    coef = 4 * (2 * C + 4)                                                  # G, Dm rows + 4 vectors
    per_token = (3 * d * dtype_bytes + coef + d * dtype_bytes               # forward in/out
                 + 4 * d * dtype_bytes + coef + 3 * d * 4 + coef)           # backward in/out
    per_sequence = (-(-chunks // group)) * state * 2 + chunks * state * 2    # checkpoints w+r, recompute w+r
    return tokens * H * per_token + (tokens // T) * H * per_sequence


def _dtype(name):
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def make_step(impl, cfg, T, H, d, device, dtype):
    """Inputs and a closure running one forward+backward of ``impl``."""
    B, C = cfg["tokens_per_batch"] // T, cfg["chunk"]
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device, dtype).requires_grad_()

    if impl in ("triton", "torch"):
        from titans_kernels import neural_memory

        q, k = (F.normalize(torch.randn(B, T, H, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
                for _ in range(2))
        v = rand(B, T, H, d)
        lr = (0.02 * torch.rand(B, T, H, generator=g)).to(device, dtype).requires_grad_()
        momentum, forget = ((s * torch.rand(B, T, H, generator=g)).to(device, dtype).requires_grad_() for s in (0.9, 0.1))
        dims = [d] + [cfg["expansion"] * d] * (cfg["depth"] - 1) + [d]
        weights = tuple((torch.randn(H, dims[i], dims[i + 1], generator=g) / dims[i] ** 0.5).to(device).requires_grad_()
                        for i in range(cfg["depth"]))
        dout = torch.randn(B, T, H, d, generator=g).to(device, dtype)

        def step():
            out, _ = neural_memory(q, k, v, lr, momentum, forget, weights, chunk_size=C, backend=impl)
            out.backward(dout)
        return step
    if impl == "titans-pytorch":
        from titans_pytorch import NeuralMemory

        layer = NeuralMemory(dim=H * d, heads=H, dim_head=d, chunk_size=C,
                             default_model_kwargs=dict(depth=cfg["depth"], expansion_factor=float(cfg["expansion"])))
        layer = layer.to(device)
        x = torch.randn(B, T, H * d, generator=g).to(device).requires_grad_()

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out, _ = layer(x)
            out.float().sum().backward()
        return step
    if impl == "fla-gated-delta":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        q, k = (F.normalize(torch.randn(B, T, H, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
                for _ in range(2))
        v = rand(B, T, H, d)
        gate = F.logsigmoid(torch.randn(B, T, H, generator=g) + 4).to(device).requires_grad_()
        beta = torch.rand(B, T, H, generator=g).to(device, dtype).requires_grad_()
        dout = torch.randn(B, T, H, d, generator=g).to(device, dtype)

        def step():
            out, _ = chunk_gated_delta_rule(q, k, v, gate, beta)
            out.backward(dout)
        return step
    if impl == "sdpa-causal":
        q, k, v = (rand(B, H, T, d) for _ in range(3))
        dout = torch.randn(B, H, T, d, generator=g).to(device, dtype)

        def step():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(dout)
        return step
    if impl == "flash-attn":
        from flash_attn import flash_attn_func

        q, k, v = (rand(B, T, H, d) for _ in range(3))
        dout = torch.randn(B, T, H, d, generator=g).to(device, dtype)

        def step():
            flash_attn_func(q, k, v, causal=True).backward(dout)
        return step
    raise ValueError(impl)


def run(cfg):
    device, dtype = torch.device(cfg["device"]), _dtype(cfg["dtype"])
    rows = []
    shapes = [(T, H, d) for H, d in cfg["heads_x_head_dim"] for T in cfg["T"]]
    total, start = len(shapes) * len(cfg["impls"]), time.time()
    for T, H, d in shapes:
        for impl in cfg["impls"]:
            row = {"impl": impl, "T": T, "H": H, "d": d, "B": cfg["tokens_per_batch"] // T}
            try:
                step = make_step(impl, cfg, T, H, d, device, dtype)
                seconds, peak = time_steps(step, cfg["warmup"], cfg["repeats"], device)
                flops = step_flops(impl, cfg, T, H, d)
                row.update(seconds=seconds, tokens_per_s=cfg["tokens_per_batch"] / seconds, peak_mib=peak,
                           tflops=None if flops is None else flops / seconds / 1e12)
                if impl == "triton":
                    row["gbytes_per_s"] = bytes_model(cfg, T, H, d, dtype.itemsize) / seconds / 1e9
            except Exception as e:  # one row's failure (missing package, OOM) must not lose the others
                row["error"] = describe_error(e)
            finally:
                step = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            done = len(rows)
            eta = (time.time() - start) / done * (total - done)
            status = row.get("error") or f"{row['tokens_per_s']:.0f} tok/s"
            print(f"[{done}/{total}, ETA {eta:.0f}s] {impl:16s} T={T:6d} H={H} d={d}: {status}", file=sys.stderr, flush=True)
    return rows


def targets(cfg, rows, peak_tflops):
    """The issue's targets (GPU, d_h 64, depth 2, bf16), each met / not met / n/a with its number."""
    def get(impl, T, H, d):
        return next((r for r in rows if (r["impl"], r["T"], r["H"], r["d"]) == (impl, T, H, d) and "error" not in r), None)

    out = []
    for H, d in cfg["heads_x_head_dim"]:
        ours = [get("triton", T, H, d) for T in cfg["T"]]
        ours = [r for r in ours if r]
        if not ours:
            continue
        def line(name, value, goal, fmt):
            verdict = "n/a" if value is None else ("met" if value >= goal else "not met")
            out.append(f"| {H}x{d} | {name} | {fmt.format(value) if value is not None else '-'} | {verdict} |")
        best = max(r["tflops"] for r in ours)
        line(">= 25% of bf16 GEMM peak (best T)", best / peak_tflops, 0.25, "{:.1%}")
        ratios = {}
        for peer in ("titans-pytorch", "fla-gated-delta"):
            vals = [r["tokens_per_s"] / p["tokens_per_s"] for r in ours if (p := get(peer, r["T"], H, d))]
            ratios[peer] = min(vals) if vals else None
        line(">= 20x titans-pytorch tokens/s (worst T)", ratios["titans-pytorch"], 20, "{:.1f}x")
        line(">= 0.5x fla gated delta tokens/s (worst T)", ratios["fla-gated-delta"], 0.5, "{:.2f}x")
        tps = [r["tokens_per_s"] for r in ours]
        flat = min(tps) / max(tps) if len(tps) > 1 else None
        line("tokens/s flat within 15% over T (min/max)", flat, 0.85, "{:.2f}")
        at8k = get("triton", 8192, H, d)
        attn = [p for impl in ATTENTION_IMPLS if (p := get(impl, 8192, H, d))]
        vs_attn = at8k["tokens_per_s"] / max(p["tokens_per_s"] for p in attn) if at8k and attn else None
        line(">= 1.0x causal FlashAttention fwd+bwd at 8K", vs_attn, 1.0, "{:.2f}x")
    return out


def report(cfg, rows, peak_tflops, config_path):
    device = torch.device(cfg["device"])
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_description()
    meta = {
        "command": "python bench/memory_kernel.py " + " ".join(sys.argv[1:]),
        "config": config_path, "date": datetime.date.today().isoformat(), "device": machine,
        "torch": torch.__version__, "triton": package_version("triton"), "titans_pytorch": package_version("titans-pytorch"),
        "fla": package_version("flash-linear-attention") or package_version("fla-core"), "flash_attn": package_version("flash-attn"),
        "python": platform.python_version(), "matmul_peak_tflops": peak_tflops,
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
    }
    lines = [f"# Triton memory kernels: forward+backward ({meta['date']})", "",
             f"- command: `{meta['command']}` (config `{config_path}`)",
             f"- device: {machine}; torch {meta['torch']}, triton {meta['triton']}, titans-pytorch "
             f"{meta['titans_pytorch']}, fla {meta['fla']}, flash-attn {meta['flash_attn']}",
             f"- {cfg['tokens_per_batch']} tokens per batch, {cfg['dtype']}, memory depth {cfg['depth']}, expansion "
             f"{cfg['expansion']}, chunk {cfg['chunk']}; median of {cfg['repeats']} steps after {cfg['warmup']} warm-up",
             f"- {cfg['dtype']} GEMM peak measured in this run: {peak_tflops:.1f} TFLOP/s"]
    if meta["interpreter"]:
        lines.append("- **smoke run: the Triton kernels ran under the interpreter on CPU; the numbers mean nothing**")
    lines += ["", "| H x d_h | T | B | impl | tokens/s | ms/step | model TFLOP/s | % peak | GB/s (model) | peak MiB | ours vs it |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    ours = {(r["T"], r["H"], r["d"]): r for r in rows if r["impl"] == "triton" and "error" not in r}
    for r in rows:
        head = f"| {r['H']}x{r['d']} | {r['T']} | {r['B']} | {r['impl']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | | |")
            continue
        mine = ours.get((r["T"], r["H"], r["d"]))
        vs = f"{mine['tokens_per_s'] / r['tokens_per_s']:.2f}x" if mine and r["impl"] != "triton" else "-"
        tf = "-" if r["tflops"] is None else f"{r['tflops']:.2f}"
        pct = "-" if r["tflops"] is None else f"{r['tflops'] / peak_tflops:.1%}"
        gbs = f"{r['gbytes_per_s']:.0f}" if "gbytes_per_s" in r else "-"
        pk = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"{head} {r['tokens_per_s']:.0f} | {1e3 * r['seconds']:.2f} | {tf} | {pct} | {gbs} | {pk} | {vs} |")
    goal_lines = targets(cfg, rows, peak_tflops)
    if goal_lines:
        lines += ["", "Targets (issue 4; meaningful on a GPU in bf16 only):", "",
                  "| H x d_h | target | ours | verdict |", "|---|---|---|---|", *goal_lines]
    return meta, "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/memory_kernel.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = p.parse_args()
    cfg = load_config(args.config)
    if cfg["device"] == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("triton was imported before TRITON_INTERPRET could be set; run with TRITON_INTERPRET=1")
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    elif not torch.cuda.is_available():
        raise SystemExit(f"{args.config}: device {cfg['device']!r} but no CUDA device is visible")
    peak = matmul_peak(cfg["matmul_peak_size"], torch.device(cfg["device"]), _dtype(cfg["dtype"]))
    rows = run(cfg)
    meta, table = report(cfg, rows, peak, args.config)
    publish(args.output, table, {"meta": meta, "config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
