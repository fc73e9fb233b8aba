"""One command for a GPU machine (`make gpu-check`): every GPU test, then reduced sweeps of the GPU
benchmarks (bench/memory_kernel.py, bench/train_step.py, bench/eval_context.py), each within its time
budget (configs/bench/gpu_check.json, ~9 minutes together on one H100/H200), writing
``bench/results/<name>_gpu_<card>.{md,json}`` and a one-screen summary: every GPU test passed or
failed, every benchmark target's verdict.

    python bench/gpu_check.py                      # on the GPU machine (make gpu-check)
    python bench/gpu_check.py --wheels wheels/     # first install what the image lacks from these wheels
    python bench/gpu_check.py --dry-run --output-dir /tmp/x   # CPU: the smoke configs (the test suite runs this)

``--wheels DIR``: a GPU image without a registry gets this project's dependencies from wheels fetched
elsewhere (README, "A GPU check"): ``pip install --no-index --find-links DIR -e '.[dev,eval]'``, run
only when something the steps import is missing.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402

ROOT = os.path.dirname(_here)
NEEDED = ("torch", "megatron.core", "triton", "fla", "sentencepiece", "lm_eval", "pytest")
VERDICT = re.compile(r"^\|.*\| (met|not met|n/a) \|$")


def card_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; 'NVIDIA H200' -> 'h200' (the results' file-name suffix)."""
    match = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", name.upper().replace("NVIDIA", ""))
    return (match.group(1) if match else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def _importable(module: str) -> bool:
    try:  # find_spec of "a.b" imports "a", and raises when "a" is missing
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def install_missing(wheels: str, log) -> None:
    missing = [m for m in NEEDED if not _importable(m)]
    if not missing:
        return
    log(f"missing {missing}: installing from {wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels, "-e",
                    f"{ROOT}[dev,eval]"], check=True)


def run_step(cmd, budget_s: float, log) -> dict:
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s)
        code, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        code, tail = "timeout", ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else
                                 (e.stdout or ""))[-2000:]
    seconds = round(time.time() - start, 1)
    log(f"  exit {code} after {seconds} s")
    return {"cmd": " ".join(cmd), "exit": code, "seconds": seconds, "tail": tail}


def test_results(junit: str) -> list:
    """(test id, outcome) for every test in a junit XML file."""
    if not os.path.exists(junit):
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        out.append((f"{case.get('classname')}::{case.get('name')}", outcome))
    return out


def verdicts(markdown: str) -> list:
    """The target rows of a benchmark report ('| ... | met |', 'not met', 'n/a')."""
    if not os.path.exists(markdown):
        return []
    with open(markdown) as f:
        return [line.strip() for line in f if VERDICT.match(line.strip())]


def _one_cell(row: str) -> str:
    """'| 16x64 | goal | 31.0% | met |' -> '16x64 goal: 31.0%, met' (one cell of the summary)."""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    return f"{' '.join(cells[:-2])}: {cells[-2]}, {cells[-1]}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "bench", "gpu_check.json"))
    p.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--dry-run", action="store_true", help="CPU: the smoke configs, card 'dry-run'")
    p.add_argument("--wheels", help="install what is missing from this folder of wheels first")
    p.add_argument("--steps", nargs="+", help="only these steps (names in the config)")
    args = p.parse_args(argv)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.wheels:
        install_missing(args.wheels, log)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on the GPU machine, or --dry-run to check the script on CPU")
    with open(args.config) as f:
        cfg = json.load(f)
    device = "dry-run (cpu)" if args.dry_run else torch.cuda.get_device_name(0)
    card = "dryrun" if args.dry_run else card_slug(device)
    os.makedirs(args.output_dir, exist_ok=True)
    steps = [s for s in cfg["steps"] if not args.steps or s["name"] in args.steps]
    results, lines = [], []
    for i, step in enumerate(steps, 1):
        out = os.path.join(args.output_dir, f"{step['name']}_gpu_{card}")
        log(f"[{i}/{len(steps)}] {step['name']} (budget {step['budget_s']} s)")
        if step["kind"] == "pytest":
            cmd = [sys.executable, "-m", "pytest", "-m", step["marker"], "-q", "-p", "no:cacheprovider",
                   f"--junitxml={out}.xml", os.path.join(ROOT, "tests")]
        else:
            cmd = [sys.executable, os.path.join(ROOT, step["script"]), "--config",
                   os.path.join(ROOT, step["dry_config"] if args.dry_run else step["config"]), "--output", out]
        result = dict(run_step(cmd, step["budget_s"], log), name=step["name"])
        if step["kind"] == "pytest":
            result["tests"] = test_results(out + ".xml")
            counts = {k: sum(1 for _, o in result["tests"] if o == k) for k in ("passed", "failed", "error", "skipped")}
            lines.append(f"| {step['name']} | exit {result['exit']} | {result['seconds']} s | "
                         + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + " |")
            lines += [f"| | {o} | | {t} |" for t, o in result["tests"] if o in ("failed", "error")]
        else:
            result["verdicts"] = verdicts(out + ".md")
            lines.append(f"| {step['name']} | exit {result['exit']} | {result['seconds']} s | "
                         f"{os.path.relpath(out, ROOT)}.md |")
            lines += [f"| | | | {_one_cell(v)} |" for v in result["verdicts"]]
        results.append(result)
    summary = "\n".join([f"# GPU check on {device} ({datetime.date.today().isoformat()})", "",
                         f"- command: `python bench/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
                         f"- torch {torch.__version__}", "",
                         "| step | status | time | results (tests failed, targets: met / not met / n/a) |",
                         "|---|---|---|---|", *lines, ""])
    path = os.path.join(args.output_dir, f"gpu_check_{card}")
    from bench.outputs import write_report

    write_report(path, summary, {"device": device, "steps": results})
    log("\n" + summary)
    return 0 if all(r["exit"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
