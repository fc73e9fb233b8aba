"""Checkpoint save and load at a preset's shapes, under torchrun at each layout of the config: the
previous format (Megatron's distributed optimizer gathers the AdamW state onto data-parallel rank 0,
which writes it with torch.save beside the model) against the sharded save (pretrain/checkpoint.py:
every rank writes its share through torch.distributed.checkpoint), each written with fsync.

Measured per layout: save and load wall time (every rank done), the peak host memory of each rank above
what it held before the operation (the kernel's VmHWM, reset before each) beside the bytes that rank
writes, and a training step's time (Megatron's optimizer path, the loop's loss) with no save, with a
blocking sharded save, and with an asynchronous save in flight (the host copy it makes first, then the
steps that run while it is written). Medians over ``repeats``; ratios against the previous format in the
same run.

    python bench/checkpoint.py --config configs/bench/checkpoint.json --output bench/results/checkpoint_cpu
    python bench/checkpoint.py --config configs/bench/checkpoint_smoke.json   # tiny preset, end to end
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.config import read_config  # noqa: E402
from bench.outputs import cpu_description, package_version, write_report  # noqa: E402

REQUIRED = ("preset", "variant", "seq_length", "micro_batch", "layouts", "repeats", "async_steps")
TARGET_SPEEDUP = 3.0  # the sharded save against the previous format with 4 ranks


def _rss_peak_reset() -> int:
    """Reset this process's peak resident set to its current size; returns that size in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status("VmRSS")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _fsync_tree(folder: str) -> None:
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def _legacy_save(folder: str, model, view, layout) -> None:
    """The format before the sharded one, as pretrain/checkpoint.py wrote it."""
    from titans_pretrain import resharding

    optimizer_pieces = resharding.optimizer_pieces(model, view)  # gathers the moments onto DP rank 0
    if layout.dp_rank == 0:
        torch.save(resharding.model_pieces(model), os.path.join(folder, f"model_tp{layout.tp_rank}.pt"))
        torch.save(optimizer_pieces, os.path.join(folder, f"optimizer_tp{layout.tp_rank}.pt"))
        _fsync_tree(folder)


def worker(cfg: dict, spec: dict, out: str) -> None:
    """One layout ``spec`` of the config: tensor, data, and optionally preset and previous ("save and load",
    "save" or "none": how much of the previous format to run)."""
    import torch.distributed as dist

    from titans_pretrain import checkpoint as ckpt
    from titans_pretrain import optim as optim_
    from titans_pretrain.config import config_from_dict
    from titans_pretrain.distributed import barrier, init_distributed
    from titans_pretrain.language_model import language_model_loss
    from titans_megatron import build_model

    tensor, preset = spec["tensor"], spec.get("preset", cfg["preset"])
    previous = spec.get("previous", "save and load")
    layout = init_distributed(tensor)
    config = config_from_dict({
        "model": {"preset": preset, "variant": cfg["variant"],
                  "overrides": {"seq_length": cfg["seq_length"], **cfg.get("overrides", {})}},
        "parallel": {"tensor": tensor}, "optim": {"implementation": "megatron", "distributed_optimizer": True}})
    model_config = config.model_config()
    model = build_model(model_config, seed=0)
    opt = optim_.build(model, model_config, config.optim, layout)
    generator = torch.Generator().manual_seed(layout.dp_rank)

    def step():
        opt.zero_grad()
        tokens = torch.randint(0, model_config.vocab_size, (cfg["micro_batch"], cfg["seq_length"] + 1),
                               generator=generator)
        with opt.micro_batch(last=True):
            language_model_loss(opt.model, {"tokens": tokens, "loss_mask": torch.ones_like(tokens[:, 1:])}).backward()
        opt.step(opt.reduce_gradients())

    step()  # AdamW's moments exist from here
    root = tempfile.mkdtemp(prefix="ckpt_bench_", dir=cfg.get("folder")) if layout.is_main else None
    root = _broadcast(root)
    results = {"rank": layout.rank, "tp_rank": layout.tp_rank, "dp_rank": layout.dp_rank, "params": 0}
    results["params"] = sum(p.numel() for p in model.parameters())

    def timed(name, fn):
        """fn on every rank between barriers: wall seconds (rank 0's clock) and this rank's peak extra RSS."""
        barrier(layout)
        before = _rss_peak_reset()
        start = time.perf_counter()
        fn()
        barrier(layout)
        seconds = time.perf_counter() - start
        results.setdefault(name, []).append({"seconds": seconds, "peak_extra_bytes": _status("VmHWM") - before})

    def legacy_folder(i):
        folder = os.path.join(root, f"legacy_{i}")
        if layout.is_main:
            os.makedirs(folder)
        barrier(layout)
        return folder

    from titans_pretrain import sharded_checkpoint as sharded
    from titans_pretrain import moments

    share = sharded.write_share(sharded.model_chunks(model) + sharded.moment_chunks(
        model, moments.slices(model, opt.checkpoint_state)), ckpt.checkpoint_group())
    results["share_bytes"] = sum(c.data.numel() * c.data.element_size() for c in share)
    config_dict = config.as_dict()
    for i in range(cfg["repeats"]):
        folder = legacy_folder(i)
        if previous != "none":
            timed("save_previous", lambda: _legacy_save(folder, model, opt.checkpoint_state, layout))
        timed("save_sharded", lambda: ckpt.save(os.path.join(root, f"sharded_{i}"), 1, model, opt.checkpoint_state,
                                                [{}], config_dict, layout, keep=0))
        sharded_folder = ckpt.iteration_dir(os.path.join(root, f"sharded_{i}"), 1)
        if previous == "save and load":
            timed("load_previous", lambda: ckpt.restore_legacy(folder, model, opt.checkpoint_state, tensor))
        timed("load_sharded", lambda: ckpt.restore_sharded(sharded_folder, model, opt.checkpoint_state))
        if layout.is_main:  # keep the disk's free space
            shutil.rmtree(folder)
            shutil.rmtree(os.path.join(root, f"sharded_{i}"))
        barrier(layout)

    def step_times(n):
        times = []
        for _ in range(n):
            barrier(layout)
            start = time.perf_counter()
            step()
            barrier(layout)
            times.append(time.perf_counter() - start)
        return times

    results["step_alone"] = step_times(cfg["async_steps"])
    results["step_with_blocking_save"] = []
    results["step_with_async_save"], results["async_copy_seconds"], results["async_steps_in_flight"] = [], [], []
    for i in range(cfg["repeats"]):
        barrier(layout)
        start = time.perf_counter()
        ckpt.save(os.path.join(root, f"blocking_{i}"), 1, model, opt.checkpoint_state, [{}], config_dict, layout, 0)
        results["step_with_blocking_save"].append(time.perf_counter() - start + statistics.median(step_times(1)))
        barrier(layout)
        start = time.perf_counter()
        pending = ckpt.save(os.path.join(root, f"async_{i}"), 1, model, opt.checkpoint_state, [{}], config_dict,
                            layout, 0, asynchronous=True)
        copy = time.perf_counter() - start
        in_flight = 0
        times = []
        for _ in range(cfg["async_steps"]):
            running = not pending.future.done()
            times += step_times(1)
            in_flight += running
        pending.wait()
        results["async_copy_seconds"].append(copy)
        results["step_with_async_save"].append(times)
        results["async_steps_in_flight"].append(in_flight)
        if layout.is_main:
            shutil.rmtree(os.path.join(root, f"blocking_{i}"))
            shutil.rmtree(os.path.join(root, f"async_{i}"))
    everyone = [None] * layout.world
    dist.all_gather_object(everyone, results)
    if layout.is_main:
        shutil.rmtree(root, ignore_errors=True)
        with open(out, "w") as f:
            json.dump({"layout": {"tensor": layout.tensor, "data": layout.data}, "preset": preset,
                       "ranks": everyone}, f)


def _broadcast(value):
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def summarise(run: dict) -> dict:
    ranks = run["ranks"]
    median = statistics.median

    def wall(name):  # rank 0's clock between barriers: the slowest rank
        return median(r["seconds"] for r in ranks[0][name])

    def peaks(name):
        return [max(x["peak_extra_bytes"] for x in r[name]) for r in ranks]

    save_prev = wall("save_previous") if "save_previous" in ranks[0] else None
    save_new = wall("save_sharded")
    step_alone = median(ranks[0]["step_alone"])
    in_flight = [t for times in ranks[0]["step_with_async_save"] for t in times]
    return {
        "layout": run["layout"], "preset": run["preset"], "ranks": len(ranks),
        "params": ranks[0]["params"] * run["layout"]["tensor"],
        "save_previous_s": save_prev, "save_sharded_s": save_new,
        "save_speedup": save_prev / save_new if save_prev is not None else None,
        "load_previous_s": wall("load_previous") if "load_previous" in ranks[0] else None,
        "load_sharded_s": wall("load_sharded"),
        "share_bytes": [r["share_bytes"] for r in ranks],
        "save_previous_peak_extra_bytes": peaks("save_previous") if save_prev is not None else None,
        "save_sharded_peak_extra_bytes": peaks("save_sharded"),
        "load_previous_peak_extra_bytes": peaks("load_previous") if "load_previous" in ranks[0] else None,
        "load_sharded_peak_extra_bytes": peaks("load_sharded"),
        "step_alone_s": step_alone, "step_with_blocking_save_s": median(ranks[0]["step_with_blocking_save"]),
        "async_copy_s": median(ranks[0]["async_copy_seconds"]),
        "step_with_async_save_s": median(in_flight) if in_flight else None,
        "async_steps_in_flight": ranks[0]["async_steps_in_flight"],
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


def markdown(cfg: dict, rows: list, meta: dict) -> str:
    lines = [f"# Checkpoint save and load: previous format against the sharded save ({meta['date']})", "",
             f"{cfg['variant']}, Megatron's distributed optimizer (fp32 AdamW), "
             f"{meta['device']}; command: `{meta['command']}`.", "",
             "| ranks (TP x DP) | preset | params | save previous (s) | save sharded (s) | speedup | load previous (s) "
             "| load sharded (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo = r["layout"]
        def seconds(key, unit=""):
            return "not run" if r[key] is None else f"{r[key]:.2f}{unit}"
        lines.append(f"| {r['ranks']} ({lo['tensor']} x {lo['data']}) | {r['preset']} | {r['params'] / 1e6:.0f}M | "
                     f"{seconds('save_previous_s')} | {seconds('save_sharded_s')} | {seconds('save_speedup', 'x')} | "
                     f"{seconds('load_previous_s')} | {seconds('load_sharded_s')} |")
    lines += ["", "Peak host memory above what each rank held before the operation (MiB, per rank), beside the "
              "bytes it writes in the sharded save:", "",
              "| ranks | share written | save previous | save sharded | load previous | load sharded |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        def per_rank(key):
            return "not run" if r[key] is None else " / ".join(_mib(x) for x in r[key])
        lines.append(f"| {r['ranks']} ({r['layout']['tensor']} x {r['layout']['data']}) | {per_rank('share_bytes')} | "
                     f"{per_rank('save_previous_peak_extra_bytes')} | {per_rank('save_sharded_peak_extra_bytes')} | "
                     f"{per_rank('load_previous_peak_extra_bytes')} | "
                     f"{per_rank('load_sharded_peak_extra_bytes')} |")
    lines += ["", "A training step (s): alone, with a blocking sharded save before it, and while an asynchronous "
              "save is written (after its host copy):", "",
              "| ranks | step alone | blocking save + step | async: host copy | async: step in flight | steps in flight |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        flight = "n/a" if r["step_with_async_save_s"] is None else f"{r['step_with_async_save_s']:.2f}"
        lines.append(f"| {r['ranks']} ({r['layout']['tensor']} x {r['layout']['data']}) | {r['step_alone_s']:.2f} | {r['step_with_blocking_save_s']:.2f} | "
                     f"{r['async_copy_s']:.2f} | {flight} | {r['async_steps_in_flight']} |")
    four = [r for r in rows if r["ranks"] == 4 and r["save_speedup"] is not None and r["preset"] == cfg["preset"]]
    if four:
        best = max(r["save_speedup"] for r in four)
        verdict = "met" if best >= TARGET_SPEEDUP else "missed"
        lines += ["", f"Target: the sharded save >= {TARGET_SPEEDUP:.0f}x faster than the previous format with 4 "
                  f"ranks at the {cfg['preset']} preset: {verdict} (best {best:.2f}x)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--output", help="write OUTPUT.json and OUTPUT.md (default: print the table)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layout", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = read_config(args.config, REQUIRED, precision=False)
    if args.worker:
        worker(cfg, cfg["layouts"][args.layout], args.out)
        return
    cores = os.cpu_count() or 1
    runs, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, layout in enumerate(cfg["layouts"]):
            n = layout["tensor"] * layout["data"]
            out = os.path.join(tmp, f"run_{i}.json")
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // n)), "PYTHONWARNINGS": "ignore"}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   os.path.abspath(__file__), "--worker", "--config", args.config, "--layout", str(i),
                   "--out", out]
            print(f"[{i + 1}/{len(cfg['layouts'])}] {n} ranks, tensor {layout['tensor']} x data {layout['data']}",
                  flush=True)
            started = time.time()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:  # reported, and the other layouts still run
                failed.append({"layout": layout, "returncode": proc.returncode, "stderr": proc.stderr[-3000:]})
                print(f"    failed ({proc.returncode}):\n{proc.stderr[-1500:]}", flush=True)
                continue
            with open(out) as f:
                runs.append(summarise(json.load(f)))
            print(f"    done in {time.time() - started:.0f} s: sharded save {runs[-1]['save_sharded_s']:.2f} s",
                  flush=True)
    meta = {"date": datetime.date.today().isoformat(), "device": f"CPU ({cpu_description()}), local disk",
            "command": " ".join(["python", "bench/checkpoint.py"] + sys.argv[1:]), "python": platform.python_version(),
            "torch": package_version("torch"), "megatron-core": package_version("megatron-core")}
    report = markdown(cfg, runs, meta) + "".join(
        f"\nThe run at tensor {f['layout']['tensor']} x data {f['layout']['data']} failed (exit status "
        f"{f['returncode']}).\n" for f in failed)
    if args.output:
        write_report(args.output, report, {"config": cfg, "meta": meta, "runs": runs, "failed": failed})
    print(report)


if __name__ == "__main__":
    main()
