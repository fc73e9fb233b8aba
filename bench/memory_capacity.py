"""What the memory stores: write D random unit key/value pairs, then G filler tokens, then read every key
back (argmax over the D values), through the op alone (no training), in float64.

Arms: the neural memory (depth 1 from zero, depth 2 at its random initialisation with expansion E) at
each learning rate theta of the config, with and without the step budget (titans_kernels/memory_op/
step_budget.py), beside the delta rule (Gated DeltaNet's update with beta 1, a d x d state: the linear
memory's size) as the reference. Fillers are ``unwritten`` (theta 0 there, as a trained gate would) or
``written`` (distinct random pairs written like the keys: interference). Momentum off, forgetting at
``forget``. The stability side of the same dial: one key through ``repeat_chunks`` whole chunks, the
largest output norm (values are unit norm; the raw step diverges there above theta 1/C).

    python bench/memory_capacity.py --config configs/bench/memory_capacity.json --output bench/results/memory_capacity_cpu
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import datetime  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.config import read_config  # noqa: E402
from bench.outputs import cpu_description, publish  # noqa: E402
from titans_kernels import neural_memory  # noqa: E402

REQUIRED = ("head_dim", "expansion", "chunk", "pairs", "gap", "fillers", "thetas", "budgets", "depths", "forget",
            "seeds", "repeat_chunks")


def unit(n, d, g):
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def task(cfg, pairs, filler, seed):
    """k, v [T, d] and which tokens are written: the D pairs, G fillers, the D keys again (read)."""
    g = torch.Generator().manual_seed(seed)
    d, G = cfg["head_dim"], cfg["gap"]
    keys, values, fk, fv = unit(pairs, d, g), unit(pairs, d, g), unit(G, d, g), unit(G, d, g)
    k = torch.cat([keys, fk, keys])
    v = torch.cat([values, fv, values])
    written = torch.zeros(len(k), dtype=torch.bool)
    written[:pairs] = True
    if filler == "written":
        written[pairs:pairs + G] = True
    return k, v, written, values, g


def memory_reads(cfg, depth, theta, budget, k, v, written, g):
    d, E = cfg["head_dim"], cfg["expansion"]
    if depth == 1:
        weights = (torch.zeros(1, d, d, dtype=torch.float64),)
    else:
        dims = [d] + [E * d] * (depth - 1) + [d]
        weights = tuple(torch.randn(1, dims[i], dims[i + 1], generator=g, dtype=torch.float64) / math.sqrt(dims[i])
                        for i in range(depth))
    lr = (written.double() * theta)[None, :, None]
    out, _ = neural_memory(k[None, :, None], k[None, :, None], v[None, :, None], lr, torch.zeros_like(lr),
                           torch.full_like(lr, cfg["forget"]), weights, chunk_size=cfg["chunk"], backend="torch",
                           step_budget=budget)
    return out[0, :, 0]


def delta_rule_reads(k, v, written):
    """S_t = S_{t-1} + beta (v_t - S_{t-1} k_t) k_t^T, beta 1 where written; read S_{t-1} + that write."""
    S = torch.zeros(k.shape[1], k.shape[1], dtype=torch.float64)
    out = []
    for t in range(len(k)):
        if written[t]:
            S = S + torch.outer(v[t] - S @ k[t], k[t])
        out.append(S @ k[t])
    return torch.stack(out)


def accuracy(reads, values):
    return (reads[-len(values):] @ values.T).argmax(-1).eq(torch.arange(len(values))).double().mean().item()


def repeated_key_peak(cfg, depth, theta, budget):
    g = torch.Generator().manual_seed(0)
    T = cfg["repeat_chunks"] * cfg["chunk"]
    k, v = unit(1, cfg["head_dim"], g).expand(T, -1), unit(1, cfg["head_dim"], g).expand(T, -1)
    out = memory_reads(cfg, depth, theta, budget, k, v, torch.ones(T, dtype=torch.bool), g)
    peak = out.norm(dim=-1).max().item()
    return peak if math.isfinite(peak) else math.inf


def arms(cfg):
    for depth, theta, budget in itertools.product(cfg["depths"], cfg["thetas"], cfg["budgets"]):
        yield f"depth {depth}", depth, theta, budget
    yield "delta rule", 0, 1.0, None


def fmt_theta(x):
    return f"1/{round(1 / x)}" if x < 1 and abs(1 / x - round(1 / x)) < 1e-9 else f"{x:g}"


def summary(accs):
    return f"{statistics.median(accs):.2f} ({min(accs):.2f}-{max(accs):.2f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/memory_capacity.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    args = p.parse_args()
    cfg = read_config(args.config, REQUIRED, precision=False)
    torch.set_num_threads(1)
    rows, start = [], time.time()
    cells = list(itertools.product(cfg["fillers"], list(arms(cfg)), cfg["pairs"]))
    for i, (filler, (name, depth, theta, budget), pairs) in enumerate(cells):
        accs = []
        for seed in cfg["seeds"]:
            k, v, written, values, g = task(cfg, pairs, filler, seed)
            with torch.no_grad():
                reads = delta_rule_reads(k, v, written) if depth == 0 else memory_reads(cfg, depth, theta, budget, k, v, written, g)
            accs.append(accuracy(reads, values))
        rows.append({"filler": filler, "arm": name, "depth": depth, "theta": theta, "budget": budget, "pairs": pairs,
                     "accuracy": accs})
        if (i + 1) % 20 == 0 or i + 1 == len(cells):
            rate = (i + 1) / (time.time() - start)
            print(f"{i + 1}/{len(cells)} cells, ETA {(len(cells) - i - 1) / rate:.0f}s", file=sys.stderr, flush=True)
    peaks = [{"depth": depth, "theta": theta, "budget": budget,
              "peak": repeated_key_peak(cfg, depth, theta, budget)}
             for name, depth, theta, budget in arms(cfg) if depth > 0]

    lines = [f"# What the memory stores: recall of D pairs after G fillers ({datetime.date.today().isoformat()})", "",
             f"- command: `python bench/memory_capacity.py {' '.join(sys.argv[1:])}`",
             f"- machine: {cpu_description()}, torch {torch.__version__}; float64, the `torch` (chunked) backend",
             f"- d_h {cfg['head_dim']}, chunk {cfg['chunk']}, expansion {cfg['expansion']}, G {cfg['gap']} fillers, "
             f"forget {cfg['forget']}, momentum off; {len(cfg['seeds'])} seeds: median (min-max) accuracy, chance 1/D",
             "- budget: the op's step_budget (none: theta as given); delta rule: beta 1, a d_h x d_h state", ""]
    for filler in cfg["fillers"]:
        lines += [f"## {filler} fillers", "", "| arm | theta | budget | " + " | ".join(f"D={D}" for D in cfg["pairs"]) + " |",
                  "|---|---|---|" + "---|" * len(cfg["pairs"])]
        for name, depth, theta, budget in arms(cfg):
            accs = [next(r["accuracy"] for r in rows if (r["filler"], r["arm"], r["theta"], r["budget"], r["pairs"]) ==
                         (filler, name, theta, budget, D)) for D in cfg["pairs"]]
            lines.append(f"| {name} | {'-' if depth == 0 else fmt_theta(theta)} | {budget if budget else '-'} | "
                         + " | ".join(summary(a) for a in accs) + " |")
        lines.append("")
    lines += [f"## One key through {cfg['repeat_chunks']} chunks: the largest output norm (values unit norm)", "",
              "| depth | budget | " + " | ".join(f"theta {fmt_theta(t)}" for t in cfg["thetas"]) + " |",
              "|---|---|" + "---|" * len(cfg["thetas"])]
    for depth, budget in itertools.product(cfg["depths"], cfg["budgets"]):
        cells_ = [next(p["peak"] for p in peaks if (p["depth"], p["theta"], p["budget"]) == (depth, t, budget))
                  for t in cfg["thetas"]]
        lines.append(f"| {depth} | {budget if budget else '-'} | " + " | ".join(f"{c:.3g}" for c in cells_) + " |")
    publish(args.output, "\n".join(lines) + "\n",
            {"config": cfg, "rows": rows, "repeated_key": [dict(p, peak=None if p["peak"] == math.inf else p["peak"]) for p in peaks]})


if __name__ == "__main__":
    main()
