"""Context parallelism: the longest sequence a fixed per-rank memory budget trains at each context-
parallel size, and the all-to-all's share of the step.

For each context-parallel size cp of the config, ``torchrun`` starts cp processes (gloo on CPU, NCCL on
GPU); each builds the preset's model at every sequence length L of the config and times a training
step's forward and backward (titans_pretrain.language_model.language_model_loss: each rank feeds its L / cp
positions) of ``micro_batch`` random sequences: median of ``repeats`` after ``warmup``, the peak memory of
one step per rank (CUDA: ``max_memory_allocated`` above what was allocated before it; CPU: the resident
set's peak increase, VmHWM after /proc/self/clear_refs, heap trimmed first), and the seconds spent in
context parallelism's all-to-alls in one more step (titans_megatron.context_parallel.to_heads /
to_sequence, timed with a device sync around each call; the share this adds to the step is small but not
zero) and their share of that step. A length whose step fails (out of memory) is recorded as that row's
error. The longest L whose largest per-rank peak is within ``budget_mib`` is each cp's answer.

    python bench/context_parallel.py --config configs/bench/context_parallel.json --output bench/results/context_parallel_gpu_h100
    python bench/context_parallel.py --config configs/bench/context_parallel_smoke.json   # CPU, end to end
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.config import config_device, read_config  # noqa: E402
from bench.memory_usage import rss_peak_mib, trim_heap  # noqa: E402
from bench.outputs import cpu_description, package_version, publish  # noqa: E402
from bench.timing import describe_error, sync, time_steps  # noqa: E402

REQUIRED = ("device", "precision", "preset", "variant", "contexts", "lengths", "micro_batch", "budget_mib",
            "warmup", "repeats")


class AllToAllTimer:
    """Wraps titans_megatron.context_parallel's all-to-alls: seconds spent in them since ``reset``."""

    def __init__(self, device):
        from titans_megatron import context_parallel

        self.device, self.seconds = device, 0.0
        for name in ("to_heads", "to_sequence"):
            setattr(context_parallel, name, self._timed(getattr(context_parallel, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - t0
            return out
        return timed


def worker(cfg, out_path):
    """One rank of a torchrun launch: every length at this launch's context-parallel size."""
    import torch.distributed as dist

    from titans_pretrain.distributed import init_distributed
    from titans_pretrain.language_model import language_model_loss
    from titans_megatron import TitansConfig, build_model

    context = int(os.environ["WORLD_SIZE"])
    layout = init_distributed(1, context)
    device = layout.device
    timer = AllToAllTimer(device) if context > 1 else argparse.Namespace(seconds=0.0)  # cp 1: no all-to-all
    rows = []
    for length in cfg["lengths"]:
        row = {"context": context, "length": length}
        try:
            config = TitansConfig.from_preset(cfg["preset"], variant=cfg["variant"], seq_length=length,
                                              context_parallel_size=context, **cfg.get("overrides", {}))
            model = build_model(config).to(device)
            g = torch.Generator().manual_seed(length)
            batch = {"tokens": torch.randint(0, config.vocab_size, (cfg["micro_batch"], length + 1), generator=g),
                     "loss_mask": torch.ones(cfg["micro_batch"], length)}

            def step():
                model.zero_grad(set_to_none=True)
                language_model_loss(model, batch, cfg["precision"]).backward()

            seconds, peak = time_steps(step, cfg["warmup"], cfg["repeats"], device)
            if device.type != "cuda":
                peak = rss_peak_mib(step)
            # the share within one step of its own (a sub-interval of it, so at most 1): set against the
            # timed steps' median, a slower extra step on a busy machine could read over 100%
            timer.seconds = 0.0
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            row.update(step_seconds=seconds, peak_mib=peak, all_to_all_seconds=timer.seconds,
                       all_to_all_share=timer.seconds / (time.perf_counter() - t0),
                       tokens_per_s=cfg["micro_batch"] * length / seconds)
            model = None
        except Exception as e:  # out of memory at a long length: the other lengths still run
            row["error"] = describe_error(e)
        every = [None] * dist.get_world_size() if dist.is_initialized() else [row]
        if dist.is_initialized():
            dist.all_gather_object(every, row)
        if layout.is_main:
            rows.append(merge(every))
            print(f"cp={context} L={length}: " + (rows[-1].get("error") or
                  f"{rows[-1]['step_seconds']:.2f} s/step, peak {rows[-1]['peak_mib']:.0f} MiB per rank"),
                  file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if layout.is_main:
        with open(out_path, "w") as f:
            json.dump(rows, f)


def merge(per_rank):
    """One row from every rank's: the largest peak and all-to-all time, the slowest step."""
    errors = [r["error"] for r in per_rank if "error" in r]
    row = {k: per_rank[0][k] for k in ("context", "length")}
    if errors:
        return {**row, "error": errors[0]}
    tokens = per_rank[0]["tokens_per_s"] * per_rank[0]["step_seconds"]  # the step's tokens, every rank's together
    peaks = [r["peak_mib"] for r in per_rank if r["peak_mib"] is not None]
    row.update(step_seconds=max(r["step_seconds"] for r in per_rank), peak_mib=max(peaks) if peaks else None,
               all_to_all_seconds=max(r["all_to_all_seconds"] for r in per_rank),
               all_to_all_share=max(r["all_to_all_share"] for r in per_rank))
    row["tokens_per_s"] = tokens / row["step_seconds"]
    return row


def run(config_path, cfg):
    rows = []
    for context in cfg["contexts"]:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={context}",
                   os.path.abspath(__file__), "--config", config_path, "--worker", out]
            env = {**os.environ, "OMP_NUM_THREADS": str(cfg.get("threads_per_rank", 1)),
                   "PYTHONPATH": os.path.dirname(_here)}
            proc = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE)
            if proc.returncode or not os.path.exists(out):
                rows += [{"context": context, "length": n, "error": f"torchrun exited with {proc.returncode}"}
                         for n in cfg["lengths"]]
                continue
            with open(out) as f:
                rows += json.load(f)
    return rows


def longest(rows, context, budget):
    fits = [r["length"] for r in rows if r["context"] == context and "error" not in r
            and r["peak_mib"] is not None and r["peak_mib"] <= budget]
    return max(fits) if fits else None


def report(cfg, rows, config_path, device):
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_description()
    meta = {"command": "python bench/context_parallel.py " + " ".join(sys.argv[1:]), "config": config_path,
            "date": datetime.date.today().isoformat(), "device": machine, "torch": torch.__version__,
            "megatron_core": package_version("megatron-core"), "python": platform.python_version(),
            "longest_within_budget": {str(c): longest(rows, c, cfg["budget_mib"]) for c in cfg["contexts"]}}
    memory = ("torch.cuda.max_memory_allocated of one step above what was allocated before it" if device.type == "cuda"
              else "CPU: the resident set's peak increase of one step (VmHWM after /proc/self/clear_refs), heap trimmed"
              + (" first" if trim_heap() else " (not possible here: may undercount)"))
    lines = [f"# Context parallelism: memory per rank and the all-to-all's share ({meta['date']})", "",
             f"- command: `{meta['command']}` (config `{config_path}`)",
             f"- device: {machine}; torch {meta['torch']}, megatron-core {meta['megatron_core']}",
             f"- {cfg['variant']} at the {cfg['preset']} preset {cfg.get('overrides', {})}, forward + backward of "
             f"{cfg['micro_batch']} sequence(s) per step, {cfg['precision']}, median of {cfg['repeats']} steps "
             f"after {cfg['warmup']}; one process per context-parallel rank",
             f"- peak memory per rank: {memory}; the row shows the largest over the ranks",
             "- all-to-all share: seconds in to_heads / to_sequence (synchronised) over those of the step they "
             "were timed in (one more step after the timed ones); the row shows the largest over the ranks",
             f"- longest sequence within {cfg['budget_mib']:,} MiB per rank: "
             + ", ".join(f"cp {c}: {meta['longest_within_budget'][str(c)] or 'none'}" for c in cfg["contexts"]), ""]
    if device.type != "cuda":
        lines += [f"**CPU run: {max(cfg['contexts'])} ranks share this machine's cores, so times (and the "
                  "all-to-all share) say little about a GPU cluster; memory per rank is what the split saves.**", ""]
    lines += ["| cp | L | step s | tokens/s | peak MiB per rank | all-to-all share |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['context']} | {r['length']:,} | {r['error']} | | | |")
            continue
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        lines.append(f"| {r['context']} | {r['length']:,} | {r['step_seconds']:.2f} | {r['tokens_per_s']:,.0f} | {peak} | "
                     f"{100 * r['all_to_all_share']:.1f}% |")
    return meta, "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/context_parallel.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one rank of a torchrun launch writes its rows here
    args = p.parse_args()
    cfg = read_config(args.config, REQUIRED)
    if args.worker:
        return worker(cfg, args.worker)
    device = config_device(args.config, cfg)
    rows = run(os.path.abspath(args.config), cfg)
    meta, table = report(cfg, rows, args.config, device)
    publish(args.output, table, {"meta": meta, "config": cfg, "rows": rows})


if __name__ == "__main__":
    main()
