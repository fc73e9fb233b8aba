"""Forward+backward throughput and peak memory of the neural-memory op against its peers.

Rows (same heads, d_h, depth, expansion and chunk; one batch of B x T tokens):
  torch           titans_kernels.neural_memory(backend="torch"): the op alone (q, k, v, gates given)
  torch+proj      the op inside the projections titans-pytorch's NeuralMemory also runs (RMSNorm,
                  q/k/v, gates, per-head norm, output), for a like-for-like layer comparison
  sequential      the token-loop oracle (T x parameter-count memory: small T only)
  titans-pytorch  titans_pytorch.NeuralMemory (PyPI), which takes every gradient of a chunk-sized
                  batch at its start weights but does not run the paper's chunk recurrence

Each (row, T) runs alone in its own process (as a user would run it: allocator state matters on
CPU), in several interleaved rounds so that speed drifts of a shared machine hit every row alike;
tokens/s is the median over all timed steps. Peak memory is the high-water mark of the first
forward+backward (CUDA: max_memory_allocated; CPU: peak RSS minus RSS before the call).

    python bench/memory_op.py --output bench/results/memory_op_cpu   # writes .md and .json
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.outputs import cpu_description, package_version, write_report  # noqa: E402
from bench.timing import sync  # noqa: E402
from titans_kernels import neural_memory  # noqa: E402


def op_inputs(cfg, device):
    B, T, H, d, E = cfg.batch, cfg.T, cfg.heads, cfg.head_dim, cfg.expansion
    g = torch.Generator().manual_seed(0)

    def leaf(x):
        return x.to(device).requires_grad_()

    q, k = (leaf(F.normalize(torch.randn(B, T, H, d, generator=g), dim=-1)) for _ in range(2))
    v = leaf(torch.randn(B, T, H, d, generator=g))
    lr = leaf(0.1 * torch.rand(B, T, H, generator=g))
    momentum, forget = leaf(torch.rand(B, T, H, generator=g)), leaf(0.1 * torch.rand(B, T, H, generator=g))
    dims = [d] + [E * d] * (cfg.depth - 1) + [d]
    weights = tuple(leaf(torch.randn(H, dims[i], dims[i + 1], generator=g) / dims[i] ** 0.5) for i in range(cfg.depth))
    return q, k, v, lr, momentum, forget, weights


class ProjectedMemory(nn.Module):
    """The projections around the op that titans-pytorch's NeuralMemory also computes."""

    def __init__(self, cfg, backend):
        super().__init__()
        H, d, E = cfg.heads, cfg.head_dim, cfg.expansion
        self.H, self.d, self.chunk, self.backend = H, d, cfg.chunk, backend
        dim = H * d
        self.norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.gates = nn.Linear(dim, 3 * H)
        self.head_norm = nn.RMSNorm(d)
        self.out = nn.Linear(dim, dim, bias=False)
        dims = [d] + [E * d] * (cfg.depth - 1) + [d]
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(H, dims[i], dims[i + 1]) / dims[i] ** 0.5)
                                        for i in range(cfg.depth))

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.H, self.d).unbind(2)
        lr, momentum, forget = torch.sigmoid(self.gates(x)).view(B, T, 3, self.H).unbind(2)
        y, _ = neural_memory(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, 0.1 * lr, momentum, forget,
                             tuple(self.weights), chunk_size=self.chunk, backend=self.backend)
        return self.out(self.head_norm(y).reshape(B, T, -1))


def make_step(impl, cfg, device):
    """A closure running one forward+backward of ``impl``."""
    if impl in ("torch", "sequential"):
        q, k, v, lr, momentum, forget, weights = op_inputs(cfg, device)

        def step():
            out, (W, S) = neural_memory(q, k, v, lr, momentum, forget, weights, chunk_size=cfg.chunk, backend=impl)
            out.sum().backward()
        return step
    x = torch.randn(cfg.batch, cfg.T, cfg.heads * cfg.head_dim, device=device, requires_grad=True)
    if impl == "torch+proj":
        layer = ProjectedMemory(cfg, "torch").to(device)

        def step():
            layer(x).sum().backward()
        return step
    if impl == "titans-pytorch":
        from titans_pytorch import NeuralMemory

        layer = NeuralMemory(dim=cfg.heads * cfg.head_dim, heads=cfg.heads, dim_head=cfg.head_dim, chunk_size=cfg.chunk,
                             default_model_kwargs=dict(depth=cfg.depth, expansion_factor=float(cfg.expansion))).to(device)

        def step():
            out, _ = layer(x)
            out.sum().backward()
        return step
    raise ValueError(f"unknown implementation {impl!r}")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(cfg):
    """One implementation alone in this process: peak memory of its first forward+backward (which is
    also the warm-up), then the times of ``repeats`` more."""
    device = torch.device(cfg.device)
    step = make_step(cfg.impls[0], cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    step()
    sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"peak_mib": peak / 2**20, "times": times}))


def machine_description(device):
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{cpu_description()}, torch threads {torch.get_num_threads()}"


def _worker(args, T, impl):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--T", str(T), "--impls", impl,
           *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
             ("batch", "heads", "head_dim", "depth", "expansion", "chunk", "repeats", "device"))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1]), None
    if proc.returncode < 0:
        return None, f"killed by signal {-proc.returncode} (out of memory?)"
    return None, (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]


def run_all(args):
    """Every (T, impl) in its own process, in ``rounds`` interleaved passes: a drift in the speed of a
    shared machine spreads over every row instead of landing on one."""
    rows = {(T, impl): {"impl": impl, "T": T, "times": [], "peak_mib": []}
            for T in args.T for impl in args.impls if not (impl == "sequential" and T > args.sequential_max_T)}
    start, total = time.time(), len(rows) * args.rounds
    for r in range(args.rounds):
        for i, ((T, impl), row) in enumerate(rows.items()):
            if "error" in row:
                continue
            res, err = _worker(args, T, impl)
            if res is None:
                row["error"] = err
            else:
                row["times"].extend(res["times"])
                row["peak_mib"].append(res["peak_mib"])
            done = r * len(rows) + i + 1
            eta = (time.time() - start) / done * (total - done)
            print(f"[{done}/{total}, ETA {eta:.0f}s] {impl:15s} T={T:5d} "
                  + (f"{args.batch * T / min(res['times']):9.0f} tok/s (best of this run)" if res else err),
                  file=sys.stderr, flush=True)
    for row in rows.values():
        if "error" not in row:
            row["seconds"] = statistics.median(row["times"])
            row["tokens_per_s"] = args.batch * row["T"] / row["seconds"]
            row["tokens_per_s_best"] = args.batch * row["T"] / min(row["times"])
            row["peak_mib"] = max(row["peak_mib"])
    return list(rows.values())


def report(args, rows):
    by = {(r["impl"], r["T"]): r for r in rows}
    meta = {
        "command": "python bench/memory_op.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "device": args.device, "machine": machine_description(args.device),
        "torch": torch.__version__, "python": platform.python_version(),
        "shape": dict(batch=args.batch, heads=args.heads, head_dim=args.head_dim, depth=args.depth,
                      expansion=args.expansion, chunk=args.chunk),
        "repeats": args.repeats, "rounds": args.rounds,
        "timing": "each row alone in its own process (warm-up, then `repeats` timed steps), all rows run in "
                  "`rounds` interleaved passes; median over all timed steps; peak memory of the warm-up step",
    }
    meta["titans_pytorch"] = package_version("titans-pytorch")
    lines = [f"# neural-memory op: forward+backward ({meta['date']})", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']} ({args.device})",
             f"- torch {meta['torch']}, titans-pytorch {meta['titans_pytorch']}, python {meta['python']}",
             f"- shape: B={args.batch}, heads {args.heads}, d_h {args.head_dim}, depth {args.depth}, "
             f"expansion {args.expansion}, chunk {args.chunk}; {meta['timing']}", "",
             "tokens/s: median over all timed steps (best step in brackets); ratios likewise.", "",
             "| T | impl | tokens/s | peak MiB | vs titans-pytorch |", "|---|---|---|---|---|"]
    for T in args.T:
        peer = by.get(("titans-pytorch", T), {})
        for impl in args.impls:
            r = by.get((impl, T))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {T} | {impl} | {r['error']} | | |")
                continue
            ratio = (f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x "
                     f"({r['tokens_per_s_best'] / peer['tokens_per_s_best']:.2f}x)") if "tokens_per_s" in peer else "-"
            lines.append(f"| {T} | {impl} | {r['tokens_per_s']:.0f} ({r['tokens_per_s_best']:.0f}) | {r['peak_mib']:.0f} | {ratio} |")
    return meta, "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--impls", nargs="+", default=["torch", "torch+proj", "sequential", "titans-pytorch"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per process, after the warm-up")
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over all rows")
    p.add_argument("--sequential-max-T", type=int, default=1024, help="the oracle keeps T x params: skip beyond")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.T = args.T[0]
        return worker(args)
    rows = run_all(args)
    meta, table = report(args, rows)
    print(table)
    if args.output:
        write_report(args.output, table, {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
