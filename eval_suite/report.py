"""The evaluation's outputs: ``results.json``, ``report.md`` (the paper's tables, one row per
checkpoint), needle heatmaps (length x depth) and the runs' loss curves read from their TensorBoard
event files.

``results`` is the dict eval_suite/run.py builds: {"settings": ..., "checkpoints": [{"name", "path",
"step", "variant", "parameters", "log_dir", "results": {"wikitext103", "lambada", "harness", "needle",
"babilong"}, "error": why it is incomplete (only when it is)}]}; every task is optional and a missing
value shows as "-"; a table no checkpoint has a value for is left out.

The language-modelling table's "Avg." is the mean of its accuracy columns (LAMBADA and the seven
zero-shot tasks, the paper's average), shown only for a row that has every one of them ("-"
otherwise), so that every average in the table is over the same tasks.
"""

import json
import math
import os
from typing import Dict, List, Optional

ACCURACY_SCALE = 100  # accuracies in percent: the columns "Avg." averages
# The paper's language-modeling table: (header, where the value lives, scale).
LM_COLUMNS = [
    ("Wiki. ppl ↓", ("wikitext103", "word_perplexity"), 1),
    ("LMB. ppl ↓", ("lambada", "perplexity"), 1),
    ("LMB. acc ↑", ("lambada", "accuracy"), ACCURACY_SCALE),
    ("PIQA acc ↑", ("harness", "piqa", "acc"), ACCURACY_SCALE),
    ("Hella. acc_n ↑", ("harness", "hellaswag", "acc_norm"), ACCURACY_SCALE),
    ("Wino. acc ↑", ("harness", "winogrande", "acc"), ACCURACY_SCALE),
    ("ARC-e acc ↑", ("harness", "arc_easy", "acc"), ACCURACY_SCALE),
    ("ARC-c acc_n ↑", ("harness", "arc_challenge", "acc_norm"), ACCURACY_SCALE),
    ("SIQA acc ↑", ("harness", "social_iqa", "acc"), ACCURACY_SCALE),
    ("BoolQ acc ↑", ("harness", "boolq", "acc"), ACCURACY_SCALE),
]
# lm-eval's lambada_openai fills the LAMBADA columns when the local LAMBADA task did not run.
FALLBACK = {("lambada", "perplexity"): ("harness", "lambada_openai", "perplexity"),
            ("lambada", "accuracy"): ("harness", "lambada_openai", "acc")}
NEEDLE_NAMES = {"passkey": "S-NIAH-PK", "number": "S-NIAH-N", "word": "S-NIAH-W"}


def _get(results: dict, path) -> Optional[float]:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results if isinstance(results, (int, float)) else None


def _fmt(value: Optional[float], scale: float = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * scale:.2f}"


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def language_modeling_table(checkpoints: List[dict]) -> List[str]:
    """The paper's table; [] when no checkpoint has any of its values."""
    rows, any_value = [], False
    for c in checkpoints:
        values = []
        for _, path, scale in LM_COLUMNS:
            value = _get(c["results"], path)
            if value is None and path in FALLBACK:
                value = _get(c["results"], FALLBACK[path])
            values.append((value, scale))
        any_value = any_value or any(v is not None for v, _ in values)
        accs = [v for v, s in values if s == ACCURACY_SCALE]
        mean = sum(accs) / len(accs) if None not in accs else None  # over every accuracy column, or none
        rows.append([label(c)] + [_fmt(v, s) for v, s in values] + [_fmt(mean, ACCURACY_SCALE)])
    return _table(["Model"] + [h for h, _, _ in LM_COLUMNS] + ["Avg. ↑"], rows) if any_value else []


def label(c: dict) -> str:
    return f"{c['name']} ({c['variant']}, step {c['step']})"


def _mean(values) -> Optional[float]:
    values = list(values)
    return sum(values) / len(values) if values else None


def needle_table(checkpoints: List[dict]) -> List[str]:
    """Accuracy (%) per kind and length, averaged over depths (the paper's S-NIAH table)."""
    columns = []
    for c in checkpoints:
        for kind, by_length in (c["results"].get("needle") or {}).items():
            for length in by_length:
                if (kind, length) not in columns:
                    columns.append((kind, length))
    if not columns:
        return []
    columns.sort(key=lambda kl: (list(NEEDLE_NAMES).index(kl[0]) if kl[0] in NEEDLE_NAMES else 99, int(kl[1])))
    rows = []
    for c in checkpoints:
        needle = c["results"].get("needle") or {}
        rows.append([label(c)] + [_fmt(_mean((needle.get(k) or {}).get(n, {}).values()), ACCURACY_SCALE)
                                  for k, n in columns])
    header = ["Model"] + [f"{NEEDLE_NAMES.get(k, k)} {_length_name(int(n))}" for k, n in columns]
    return _table(header, rows)


def _length_name(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def babilong_table(checkpoints: List[dict]) -> List[str]:
    lengths = []
    for c in checkpoints:
        for by_length in (c["results"].get("babilong") or {}).values():
            lengths += [n for n in by_length if n not in lengths]
    if not lengths:
        return []
    rows = []
    for c in checkpoints:
        for task, by_length in sorted((c["results"].get("babilong") or {}).items()):
            rows.append([label(c), task] + [_fmt(by_length.get(n), ACCURACY_SCALE) for n in lengths])
    return _table(["Model", "Task"] + lengths, rows)


def harness_table(checkpoints: List[dict]) -> List[str]:
    """Every lm-eval task and metric that ran (the paper's table shows a fixed subset)."""
    keys = []
    for c in checkpoints:
        for task, metrics in (c["results"].get("harness") or {}).items():
            keys += [(task, m) for m in metrics if isinstance(metrics[m], (int, float)) and (task, m) not in keys]
    if not keys:
        return []
    rows = [[label(c)] + [_fmt(_get(c["results"], ("harness", t, m))) for t, m in keys] for c in checkpoints]
    return _table(["Model"] + [f"{t} {m}" for t, m in keys], rows)


def markdown(results: dict, figures: Dict[str, str]) -> str:
    checkpoints = results["checkpoints"]
    lines = ["# Evaluation", "", f"{len(checkpoints)} checkpoint(s); settings: `{json.dumps(results['settings'])}`", ""]
    sections = [("Language modeling and common-sense reasoning (perplexity ↓, accuracy % ↑)",
                 language_modeling_table(checkpoints)),
                ("Needle in a haystack (single needle, exact match %, mean over depths)", needle_table(checkpoints)),
                ("BABILong (accuracy %)", babilong_table(checkpoints)),
                ("All lm-evaluation-harness metrics", harness_table(checkpoints))]
    for title, table in sections:
        if table:
            lines += [f"## {title}", "", *table, ""]
    for c in checkpoints:
        if c.get("error"):
            lines += [f"**{c['name']} is incomplete** (its other tasks did not run): {c['error']}", ""]
    for title, path in figures.items():
        lines += [f"![{title}]({os.path.basename(path)})", ""]
    return "\n".join(lines)


def needle_heatmap(checkpoint: dict, path: str) -> Optional[str]:
    """One panel per needle kind: accuracy by context length (x) and depth (y)."""
    needle = checkpoint["results"].get("needle")
    if not needle:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(needle), figsize=(4.8 * len(needle), 3.8), squeeze=False, layout="constrained")
    for ax, (kind, by_length) in zip(axes[0], needle.items()):
        lengths = sorted(by_length, key=int)
        depths = sorted({d for v in by_length.values() for d in v}, key=float)
        grid = [[by_length[n].get(d, math.nan) * ACCURACY_SCALE for n in lengths] for d in depths]  # percent
        image = ax.imshow(grid, vmin=0, vmax=ACCURACY_SCALE, cmap="RdYlGn", aspect="auto", origin="upper")
        for y, row in enumerate(grid):
            for x, value in enumerate(row):
                ax.text(x, y, "-" if math.isnan(value) else f"{value:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [_length_name(int(n)) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{float(d):g}%" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(NEEDLE_NAMES.get(kind, kind))
    fig.colorbar(image, ax=axes[0].tolist(), label="exact match (%)")
    fig.suptitle(label(checkpoint))
    _save(fig, path)
    return path


def read_scalars(log_dir: str, tags=("train/loss", "val/loss")) -> Dict[str, List[tuple]]:
    """{tag: [(step, value)]} from the TensorBoard event files under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    available = set(acc.Tags().get("scalars", []))
    out = {}
    for tag in tags:
        if tag in available:
            by_step = {e.step: e.value for e in acc.Scalars(tag)}  # a resumed run logs some steps twice
            out[tag] = sorted(by_step.items())
    return out


def loss_curves(checkpoints: List[dict], path: str) -> Optional[str]:
    curves = [(c, read_scalars(c["log_dir"])) for c in checkpoints if c.get("log_dir")]
    curves = [(c, s) for c, s in curves if s]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (c, scalars) in enumerate(curves):
        color = f"C{i % 10}"
        for tag, style in (("train/loss", "-"), ("val/loss", "o--")):
            if tag in scalars:
                steps, values = zip(*scalars[tag])
                ax.plot(steps, values, style, color=color, label=f"{c['name']} {tag.split('/')[0]}",
                        alpha=0.8 if tag == "train/loss" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return path


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write(results: dict, output: str) -> Dict[str, str]:
    """results.json, report.md and the figures into ``output``; returns {what: path}."""
    os.makedirs(output, exist_ok=True)
    figures = {}
    for c in results["checkpoints"]:
        heatmap = needle_heatmap(c, os.path.join(output, f"needle_{slug(c['name'])}.png"))
        if heatmap:
            figures[f"needle in a haystack: {c['name']}"] = heatmap
    curves = loss_curves(results["checkpoints"], os.path.join(output, "loss_curves.png"))
    if curves:
        figures["loss curves"] = curves
    paths = {"results": os.path.join(output, "results.json"), "report": os.path.join(output, "report.md")}
    write_text(paths["results"], json.dumps(results, indent=1))
    write_text(paths["report"], markdown(results, figures))
    return {**paths, **figures}


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
