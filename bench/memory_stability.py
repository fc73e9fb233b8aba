"""Stability map of the memory's update: the largest stable learning rate theta.

For each momentum eta, chunk size, memory depth and form of the update (``literal``: the op receives
theta, the spec's formula; ``ema``: it receives theta * (1 - eta), memory_momentum_ema), bisect (in log
space) the largest constant theta for which the memory stays bounded over a stream of tokens, in
float64 through the chunked op (chunk 1 is the exact online recurrence). Two streams: ``repeated`` (one
unit key and value over and over: every gradient of a chunk points the same way, the worst case of
repetitive text) and ``random`` (fresh random unit keys and values). No forgetting (alpha = 0), the
memory's own initialisation; bounded means every output is finite and below ``blowup`` times the
largest of the initial outputs and the values.

For depth 1 and the repeated stream the bound is known: the error obeys heavy-ball momentum on a
curvature of 2, stable for 2 theta' C-sum below 2 (1 + eta) at chunk 1 (theta' the rate the op
receives), and theta < 1 / C at eta = 0; the table prints it beside the measured value as a check.

    python bench/memory_stability.py --config configs/bench/memory_stability.json --output bench/results/memory_stability
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse
import datetime
import itertools
import math
import time

import torch
import torch.nn.functional as F

from bench.config import read_config  # noqa: E402
from bench.outputs import cpu_description, write_report  # noqa: E402
from titans_kernels import neural_memory  # noqa: E402

REQUIRED = ("head_dim", "expansion", "tokens", "batch", "streams", "momentum", "chunk", "depth", "forms",
            "theta_range", "bisection_steps", "blowup", "seed")


def stream(kind: str, batch: int, tokens: int, d: int, generator):
    """q, k, v [B, T, 1, d] (queries = keys: the memory reads what it writes)."""
    if kind == "repeated":
        k = F.normalize(torch.randn(batch, 1, 1, d, generator=generator, dtype=torch.float64), dim=-1).expand(-1, tokens, -1, -1)
        v = F.normalize(torch.randn(batch, 1, 1, d, generator=generator, dtype=torch.float64), dim=-1).expand(-1, tokens, -1, -1)
    elif kind == "random":
        k = F.normalize(torch.randn(batch, tokens, 1, d, generator=generator, dtype=torch.float64), dim=-1)
        v = F.normalize(torch.randn(batch, tokens, 1, d, generator=generator, dtype=torch.float64), dim=-1)
    else:
        raise ValueError(f"unknown stream {kind!r}; streams: repeated, random")
    return k.contiguous(), k.contiguous(), v.contiguous()


def initial_weights(depth: int, d: int, expansion: int, generator):
    """The memory layer's initialisation (titans_megatron/branches.py): N(0, 1 / fan_in)."""
    dims = [d] + [expansion * d] * (depth - 1) + [d]
    return tuple(torch.randn(1, dims[i], dims[i + 1], generator=generator, dtype=torch.float64) / math.sqrt(dims[i])
                 for i in range(depth))


def bounded(theta, eta, chunk, form, q, k, v, weights, blowup) -> bool:
    B, T = q.shape[:2]
    rate = theta * (1 - eta) if form == "ema" else theta
    lr = torch.full((B, T, 1), rate, dtype=torch.float64)
    momentum = torch.full((B, T, 1), eta, dtype=torch.float64)
    forget = torch.zeros(B, T, 1, dtype=torch.float64)
    with torch.no_grad():
        out, _ = neural_memory(q, k, v, lr, momentum, forget, weights, chunk_size=chunk, backend="torch")
        start, _ = neural_memory(q[:, :1], k[:, :1], v[:, :1], lr[:, :1] * 0, momentum[:, :1], forget[:, :1], weights,
                                 chunk_size=1, backend="torch")
    scale = max(start.abs().max().item(), v.abs().max().item())
    return bool(torch.isfinite(out).all()) and out.abs().max().item() < blowup * scale


def largest_stable_theta(cfg, eta, chunk, depth, form, kind) -> float:
    g = torch.Generator().manual_seed(cfg["seed"])
    q, k, v = stream(kind, cfg["batch"], cfg["tokens"], cfg["head_dim"], g)
    weights = initial_weights(depth, cfg["head_dim"], cfg["expansion"], g)
    lo, hi = (math.log(x) for x in cfg["theta_range"])
    if not bounded(math.exp(lo), eta, chunk, form, q, k, v, weights, cfg["blowup"]):
        return 0.0
    if bounded(math.exp(hi), eta, chunk, form, q, k, v, weights, cfg["blowup"]):
        return math.inf
    for _ in range(cfg["bisection_steps"]):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bounded(math.exp(mid), eta, chunk, form, q, k, v, weights, cfg["blowup"]) else (lo, mid)
    return math.exp(lo)


def known_bound(eta, chunk, depth, form, kind):
    """The analytic bound on theta for depth 1 and the repeated stream (None elsewhere)."""
    if depth != 1 or kind != "repeated":
        return None
    scale = (1 - eta) if form == "ema" else 1.0
    if chunk == 1:
        return (1 + eta) / scale  # heavy ball: 2 theta' < 2 (1 + eta)
    if eta == 0:
        return 1 / chunk
    return None


def fmt(x):
    return "unbounded" if x == math.inf else ("-" if x is None else f"{x:.4g}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/memory_stability.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = p.parse_args()
    cfg = read_config(args.config, REQUIRED, precision=False)
    cells = list(itertools.product(cfg["streams"], cfg["depth"], cfg["chunk"], cfg["momentum"], cfg["forms"]))
    rows, start = [], time.time()
    for i, (kind, depth, chunk, eta, form) in enumerate(cells):
        theta = largest_stable_theta(cfg, eta, chunk, depth, form, kind)
        rows.append({"stream": kind, "depth": depth, "chunk": chunk, "momentum": eta, "form": form, "theta": theta,
                     "known": known_bound(eta, chunk, depth, form, kind)})
        rate = (i + 1) / (time.time() - start)
        print(f"{kind} depth {depth} chunk {chunk} eta {eta} {form}: theta* {fmt(theta)}  "
              f"({i + 1}/{len(cells)}, ETA {(len(cells) - i - 1) / rate:.0f}s)", file=sys.stderr, flush=True)
    lines = [f"# Largest stable memory learning rate theta ({datetime.date.today().isoformat()})", "",
             f"- command: `python bench/memory_stability.py {' '.join(sys.argv[1:])}`",
             f"- machine: {cpu_description()}, torch {torch.__version__}; float64, the `torch` (chunked) backend",
             f"- d_h {cfg['head_dim']}, expansion {cfg['expansion']}, {cfg['tokens']} tokens, {cfg['batch']} streams, "
             f"alpha = 0; bounded: finite and below {cfg['blowup']}x the initial outputs / values; bisection over "
             f"theta in {cfg['theta_range']} ({cfg['bisection_steps']} halvings in log space)",
             "- `literal`: the op receives theta (the spec); `ema`: theta * (1 - eta) (memory_momentum_ema)", ""]
    for kind in cfg["streams"]:
        header = [f"{form} eta={eta}" for eta in cfg["momentum"] for form in cfg["forms"]]
        lines += [f"## {kind} stream", "", "| depth | chunk | " + " | ".join(header) + " |",
                  "|---|---|" + "---|" * len(header)]
        for depth, chunk in itertools.product(cfg["depth"], cfg["chunk"]):
            cells_ = []
            for eta in cfg["momentum"]:
                for form in cfg["forms"]:
                    r = next(r for r in rows if (r["stream"], r["depth"], r["chunk"], r["momentum"], r["form"]) ==
                             (kind, depth, chunk, eta, form))
                    cells_.append(fmt(r["theta"]) + ("" if r["known"] is None else f" (known {fmt(r['known'])})"))
            lines.append(f"| {depth} | {chunk} | " + " | ".join(cells_) + " |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    if args.output:
        write_report(args.output, table, {"config": cfg, "rows": [dict(r, theta=None if r["theta"] == math.inf else r["theta"])
                                                                    for r in rows]})


if __name__ == "__main__":
    main()
