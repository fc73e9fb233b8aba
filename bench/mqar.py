"""Multi-query associative recall far past the attention window: does the memory remember?

Every arm (a variant with its memory, the same without it, Transformer++ with full attention, the
ablations) is trained from scratch at every point of the sweep (pairs D x gap G x seed) with the same
budget: the same steps, batch, optimizer and schedule (the training recipe's AdamW, decay rule and
warmup-cosine schedule from pretrain/optim.py), loss on the answer positions only. Accuracy is
measured on held-out sequences that training never sees; a learning curve on a second held-out set
says how many steps each arm needs. The gap is counted in multiples of the attention window, which
the config sets equal to MAC's segment, so one axis serves every variant. An arm is a variant with
model ``overrides`` and, for recipe ablations, ``optim`` and ``train`` overrides (weight decay on the
memory's initial weights, a learning rate, a training mixture); all are part of the run's key.

Each finished run is appended to OUTPUT.jsonl at once; a rerun skips what is there (a sweep spans
sessions) and rewrites the report (OUTPUT.md, OUTPUT.json, OUTPUT.png: median and range over seeds).

    python bench/mqar.py --config configs/bench/mqar.json --output bench/results/mqar_cpu
    python bench/mqar.py --config configs/bench/mqar.json --output bench/results/mqar_cpu --arms mag mag-off --pairs 8 --gaps 4

Tiny models use a core (or a GPU's launch queue) poorly: ``--workers N`` trains N runs at once, each in
its own process with ``--threads`` threads (default: cores / N); a run's result does not depend on N.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
from bench.config import read_config  # noqa: E402
from bench.mqar_task import Vocab, loss_and_accuracy, make_batch, sequence_length  # noqa: E402
from bench.outputs import cpu_description, write_report  # noqa: E402
from titans_pretrain.config import OptimSection  # noqa: E402
from titans_pretrain.param_groups import parameter_groups  # noqa: E402
from titans_pretrain.schedule import learning_rate  # noqa: E402
from titans_core.config import TitansFields  # noqa: E402
from titans_megatron import TitansConfig, build_model  # noqa: E402

REQUIRED = ("model", "task", "optim", "train", "eval", "sweep", "arms")
ROLES = ("ceiling", "memory", "floor", "ablation", "baseline")  # baseline: another recurrent model (Gated DeltaNet)


def check_config(cfg: dict, path: str) -> None:
    model = cfg["model"]
    if model.get("window_size") != model.get("segment_length"):
        raise SystemExit(f"{path}: model.window_size ({model.get('window_size')}) must equal model.segment_length "
                         f"({model.get('segment_length')}): the gap is counted in windows for every variant")
    for name, arm in cfg["arms"].items():
        if arm.get("role") not in ROLES:
            raise SystemExit(f"{path}: arms.{name}.role must be one of {list(ROLES)}, got {arm.get('role')!r}")
        if "variant" not in arm:
            raise SystemExit(f"{path}: arms.{name} has no 'variant'")
    for where, train in [("train", cfg["train"])] + [(f"arms.{a}.train", arm.get("train", {}))
                                                     for a, arm in cfg["arms"].items()]:
        unknown = [m for m in train.get("mix", []) if m not in MIXABLE]
        if unknown:
            raise SystemExit(f"{path}: {where}.mix may hold {list(MIXABLE)}, got {unknown}")
    for key in ("pairs", "gap_windows", "seeds"):
        if not cfg["sweep"].get(key):
            raise SystemExit(f"{path}: sweep.{key} must be a non-empty list")


def model_config(cfg: dict, arm: dict, seq_length: int) -> TitansConfig:
    fields = dict(cfg["model"], **arm.get("overrides", {}), seq_length=seq_length,
                  vocab_size=Vocab.from_task(cfg["task"]).size)
    return TitansConfig.from_preset("tiny", variant=arm["variant"], **fields)


def on(device, batch):
    return tuple(t.to(device) for t in batch)


def evaluate(model, vocab, pairs, gap, pad_to, sequences, batch, seed, device) -> float:
    """Accuracy over ``sequences`` held-out sequences drawn from ``seed`` (drawn on the CPU, so any
    device scores the same sequences)."""
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, sequences, batch):
            ids, pos, ans = on(device, make_batch(vocab, pairs, gap, min(batch, sequences - start), pad_to, generator))
            _, acc = loss_and_accuracy(model(ids), pos, ans)
            correct += acc.item() * ans.numel()
            total += ans.numel()
    model.train()
    return correct / total


# Held-out sets come from seeds no training stream uses.
VALIDATION_SEED, TEST_SEED = 1_000_003, 2_000_003


MIXABLE = ("pairs", "gap")


def training_batch(vocab, pairs, gap, train, pad_to, T, data):
    """A batch at the point's D pairs and gap G; with train.mix ["pairs"] and/or ["gap"], the step's D'
    is drawn uniformly from 1..D and/or its G' from 0..G, padded to the point's length. Zoology trains
    on a mixture of pair counts and lengths; easier steps can start the key-value binding that a fixed
    hard point takes thousands of steps to find (docs/model.md measures whether they do)."""
    mix = train.get("mix", [])
    if "pairs" in mix:
        pairs = int(torch.randint(1, pairs + 1, (1,), generator=data))
    if "gap" in mix:
        gap = int(torch.randint(0, gap + 1, (1,), generator=data))
    return make_batch(vocab, pairs, gap, train["batch"], pad_to, data, length=T)


def run_point(cfg: dict, arm_name: str, pairs: int, gap_windows: int, seed: int, log, device="cpu") -> dict:
    """Train one arm at one point from scratch; its held-out accuracy and learning curve."""
    arm, task = cfg["arms"][arm_name], cfg["task"]
    train = dict(cfg["train"], **arm.get("train", {}))
    vocab, pad_to = Vocab.from_task(task), task["pad_to"]
    gap = gap_windows * cfg["model"]["window_size"]
    T = sequence_length(pairs, gap, pad_to)
    model = build_model(model_config(cfg, arm, T), seed=seed).to(device)
    optim = OptimSection(**dict(cfg["optim"], **arm.get("optim", {})))
    opt = torch.optim.AdamW(parameter_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    data = torch.Generator().manual_seed(seed * 7919 + pairs * 104729 + gap)
    steps, curve, skipped, start = train["steps"], [], 0, time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, optim, steps)
        ids, pos, ans = on(device, training_batch(vocab, pairs, gap, train, pad_to, T, data))
        loss, acc = loss_and_accuracy(model(ids), pos, ans)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip or float("inf"))
        if torch.isfinite(norm):
            opt.step()
        else:  # as the trainer does: a non-finite step is skipped and counted
            skipped += 1
        done = step + 1
        if done % train["eval_every"] == 0 or done == steps:
            val = evaluate(model, vocab, pairs, gap, pad_to, cfg["eval"]["curve_sequences"], cfg["eval"]["batch"],
                           VALIDATION_SEED + seed, device)
            curve.append([done, round(val, 4)])
            rate = done / (time.time() - start)
            log(f"  {arm_name} D={pairs} G={gap} seed={seed}: step {done}/{steps} loss {loss.item():.3f} "
                f"train acc {acc.item():.2f} held-out {val:.3f}  {rate:.2f} steps/s, ETA {(steps - done) / rate:.0f}s")
    accuracy = evaluate(model, vocab, pairs, gap, pad_to, cfg["eval"]["sequences"], cfg["eval"]["batch"], TEST_SEED + seed,
                        device)
    return {"arm": arm_name, "pairs": pairs, "gap_windows": gap_windows, "gap": gap, "seq_length": T, "seed": seed,
            "steps": steps, "accuracy": round(accuracy, 4), "curve": curve, "skipped_steps": skipped,
            "train_seconds": round(time.time() - start, 1)}


def log(line):
    print(line, file=sys.stderr, flush=True)


def run_in_worker(threads: int, cfg: dict, point: tuple, device: str) -> dict:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    return run_point(cfg, *point, log, device)


def train_points(todo: list, cfg: dict, args):
    """Yield ((arm, pairs, gap_windows, seed), result) as runs finish, N at a time with --workers N."""
    if args.workers <= 1:
        for point in todo:
            yield point, run_point(cfg, *point, log, args.device)
        return
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    # spawn: a forked child would inherit the parent's torch thread pool (and CUDA state, on a GPU)
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_in_worker, threads, cfg, point, args.device): point for point in todo}
        for future in as_completed(futures):
            yield futures[future], future.result()


# The resolved model fields a run depends on: TitansConfig's own and the shape Megatron's part sets
# (not all of TransformerConfig, whose many unrelated fields come and go between Megatron versions).
MEGATRON_FIELDS = ("hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size", "num_layers",
                   "init_method_std", "normalization", "gated_linear_unit")
GATED_DELTA_NET_FIELDS = ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
                          "linear_num_value_heads")


def resolved_model(cfg: dict, arm: str) -> dict:
    """The arm's model config after presets and defaults (sequence length aside): a default changed in
    titans_megatron changes the run's key, so runs under the old default are not reused. The memory's
    fields count only where a memory exists (a memory default changed does not retrain Transformer++), Gated
    DeltaNet's only for it."""
    model = model_config(cfg, cfg["arms"][arm], seq_length=4 * cfg["model"]["window_size"])
    own = [f.name for f in dataclasses.fields(TitansFields)
           if (model.has_memory or not f.name.startswith("memory_"))
           and (model.variant == "gdn" or not f.name.startswith("gdn_"))]
    widths = GATED_DELTA_NET_FIELDS if model.variant == "gdn" else ()
    return {k: getattr(model, k) for k in (*own, *MEGATRON_FIELDS, *widths) if k != "seq_length"}


def config_hash(cfg: dict, arm: str) -> str:
    """What a finished run depends on besides its point: the model (as resolved), task, recipe and its
    arm's definition. Runs of another configuration (or an arm since redefined) are not mixed into a table."""
    shared = {k: cfg[k] for k in ("model", "task", "optim", "train", "eval")}
    shared["arm"] = cfg["arms"][arm]
    shared["resolved_model"] = resolved_model(cfg, arm)
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_runs(path: str) -> list:
    if not os.path.exists(path):
        return []
    runs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    runs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{n}: not a JSON line ({e}); remove or fix that line to continue")
    return runs


def steps_to(curve, threshold):
    return next((step for step, acc in curve if acc >= threshold), None)


def summarise(runs: list, cfg: dict) -> list:
    """One row per (arm, pairs, gap): median, min and max accuracy over seeds."""
    groups = {}
    for r in runs:
        groups.setdefault((r["arm"], r["pairs"], r["gap_windows"]), []).append(r)
    arm_order = list(cfg["arms"])
    rows = []
    for (arm, pairs, gw), rs in sorted(groups.items(), key=lambda kv: (arm_order.index(kv[0][0]) if kv[0][0] in arm_order
                                                                          else len(arm_order), kv[0][1], kv[0][2])):
        accs = [r["accuracy"] for r in rs]
        reached = [steps_to(r["curve"], cfg["report"]["threshold"]) for r in rs]
        rows.append({"arm": arm, "role": cfg["arms"].get(arm, {}).get("role", "?"), "pairs": pairs, "gap_windows": gw,
                     "gap": rs[0]["gap"], "seeds": sorted(r["seed"] for r in rs), "median": statistics.median(accs),
                     "min": min(accs), "max": max(accs), "steps_to_threshold": reached,
                     "skipped_steps": sum(r["skipped_steps"] for r in rs)})
    return rows


def markdown(rows: list, cfg: dict, args) -> str:
    threshold = cfg["report"]["threshold"]
    lines = [f"# MQAR far past the attention window ({datetime.date.today().isoformat()})", "",
             (f"- runs trained by `python bench/mqar.py --config {args.config} --output {args.output} [--arms/--pairs/"
              f"--gaps/--seeds ..]`; this report rewritten from the runs file" if args.report_only else
              f"- command: `python bench/mqar.py {' '.join(sys.argv[1:])}`"),
             f"- machine: {cpu_description()}, torch {torch.__version__}",
             f"- config `{args.config}`: model {json.dumps(cfg['model'])}; task {json.dumps(cfg['task'])}; "
             f"optim {json.dumps(cfg['optim'])}; train {json.dumps(cfg['train'])}",
             f"- window = segment = {cfg['model']['window_size']} tokens; gap G = filler tokens between the last pair "
             f"and the first query; accuracy = argmax over the whole vocabulary at the answer positions, on "
             f"{cfg['eval']['sequences']} held-out sequences per run; median [min, max] over seeds",
             f"- steps to {threshold}: first evaluation (every {cfg['train']['eval_every']} steps, "
             f"{cfg['eval']['curve_sequences']} other held-out sequences) at or above it, per seed; - = not within the budget",
             "", "| arm | role | pairs | gap (windows) | gap (tokens) | accuracy median [min, max] | seeds | "
             f"steps to {threshold} | skipped steps |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reached = ", ".join("-" if s is None else str(s) for s in r["steps_to_threshold"])
        lines.append(f"| {r['arm']} | {r['role']} | {r['pairs']} | {r['gap_windows']} | {r['gap']} | "
                     f"{r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}] | {len(r['seeds'])} | {reached} | "
                     f"{r['skipped_steps']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list, path: str) -> None:
    """Accuracy against gap, a line per arm (median, range as error bars), a panel per pair count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pair_counts = sorted({r["pairs"] for r in rows})
    fig, axes = plt.subplots(1, len(pair_counts), figsize=(4.5 * len(pair_counts), 3.8), squeeze=False,
                             constrained_layout=True)
    for ax, pairs in zip(axes[0], pair_counts):
        for arm in dict.fromkeys(r["arm"] for r in rows):
            pts = sorted((r["gap_windows"], r) for r in rows if r["arm"] == arm and r["pairs"] == pairs)
            if not pts:
                continue
            x = [g for g, _ in pts]
            med = [r["median"] for _, r in pts]
            err = [[r["median"] - r["min"] for _, r in pts], [r["max"] - r["median"] for _, r in pts]]
            style = "--" if pts[0][1]["role"] == "floor" else "-"
            ax.errorbar(x, med, yerr=err, label=arm, linestyle=style, marker="o", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gap (attention windows)")
        ax.set_ylabel("held-out accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{pairs} pairs")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/mqar.json")
    p.add_argument("--output", required=True, help="OUTPUT.jsonl (runs), OUTPUT.md/.json/.png (report)")
    p.add_argument("--arms", nargs="+", help="a subset of the config's arms")
    p.add_argument("--pairs", nargs="+", type=int, help="a subset of sweep.pairs")
    p.add_argument("--gaps", nargs="+", type=int, help="a subset of sweep.gap_windows")
    p.add_argument("--seeds", nargs="+", type=int, help="a subset of sweep.seeds")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores / workers)")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, each in its own process")
    p.add_argument("--device", default="cpu", help="cpu or cuda (fp32 either way: the runs are comparable)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from OUTPUT.jsonl")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    cfg = read_config(args.config, REQUIRED, precision=False)
    check_config(cfg, args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = args.arms or list(cfg["arms"])
    unknown = [a for a in arms if a not in cfg["arms"]]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; the config has {list(cfg['arms'])}")
    sweep = cfg["sweep"]
    points = [(a, d, g, s) for d in (args.pairs or sweep["pairs"]) for g in (args.gaps or sweep["gap_windows"])
              for s in (args.seeds or sweep["seeds"]) for a in arms]
    hashes = {arm: config_hash(cfg, arm) for arm in cfg["arms"]}
    runs_path = args.output + ".jsonl"
    runs = [r for r in read_runs(runs_path) if hashes.get(r.get("arm")) == r.get("config_hash")]
    done = {(r["arm"], r["pairs"], r["gap_windows"], r["seed"]) for r in runs}
    todo = [pt for pt in points if pt not in done] if not args.report_only else []

    log(f"{len(points)} runs asked, {len(points) - len(todo)} already in {runs_path}, {len(todo)} to train")
    start = time.time()
    for i, ((arm, pairs, gw, seed), result) in enumerate(train_points(todo, cfg, args)):
        result = dict(result, config_hash=hashes[arm], device=args.device)
        os.makedirs(os.path.dirname(runs_path) or ".", exist_ok=True)
        with open(runs_path, "a") as f:
            f.write(json.dumps(result) + "\n")
        runs.append(result)
        per_run = (time.time() - start) / (i + 1)
        log(f"{arm} D={pairs} gap={gw} windows seed={seed}: accuracy {result['accuracy']:.3f} "
            f"({i + 1}/{len(todo)} runs, ETA {per_run * (len(todo) - i - 1) / 60:.0f} min)")
    rows = summarise(runs, cfg)
    table = markdown(rows, cfg, args)
    print(table)
    write_report(args.output, table, {"config": cfg, "config_hashes": hashes, "rows": rows})
    if rows:
        plot(rows, args.output + ".png")


if __name__ == "__main__":
    main()
