"""The paper's evaluation of one or more checkpoints, side by side.

    python eval_suite/run.py --checkpoint CKPT [--checkpoint CKPT ...] [--tasks wikitext103,lambada,piqa,...]
                             [--data-dir DIR] [--output DIR] [--config configs/eval/paper.json]
                             [--tokenizer PATH] [--set section.key=value ...]

CKPT is a run's checkpoint folder (its ``latest``) or one ``iter_NNNNNNN`` folder, saved at any
tensor-parallel size; it is loaded into this process, on the GPU when there is one. Tasks: ours
(wikitext103, lambada and babilong read --data-dir, laid out as eval_suite/download.py writes it;
needle makes its prompts) and any lm-evaluation-harness task name (piqa, hellaswag, ...; their data in
the Hugging Face cache, or task YAMLs over local files in harness.include_path). Settings: the
config file (configs/eval/paper.json: the paper's tasks, needle lengths and depths, ...), then
``--set``. Every input is checked before a model is loaded (the checkpoints and their tokenizers,
the data files, the needle prompts' layouts, lm-eval's tasks with their data, the output folder); a
failure after that (a checkpoint's weights unreadable, an interrupt) still writes what finished.

Writes to --output: results.json, report.md (the paper's tables, one row per checkpoint), a needle
heatmap per checkpoint and the runs' loss curves from their TensorBoard logs.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's modules importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402
import datetime  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import List, Optional  # noqa: E402

from titans_configs import config_path  # noqa: E402
from titans_eval_suite.checkpoint import Checkpoint, check_folder, inspect  # noqa: E402
from titans_eval_suite.errors import EvalInputError  # noqa: E402
from titans_eval_suite.model import EvalModel  # noqa: E402
from titans_eval_suite.settings import LOCAL_TASKS, EvalConfig  # noqa: E402

DEFAULT_CONFIG = config_path("eval", "paper.json")
DATA_TASKS = ("wikitext103", "lambada", "babilong")


@dataclass
class Inputs:
    """What check_inputs found: every checkpoint inspected, and lm-eval's tasks built (their datasets
    loaded once, for every checkpoint)."""

    checkpoints: List[Checkpoint]
    harness_tasks: list


def task_names(text: str) -> List[str]:
    """--tasks: comma-separated; spaces around a name and empty entries (a trailing comma) ignored."""
    return [t.strip() for t in text.split(",") if t.strip()]


def check_output(output: str) -> None:
    """The output folder exists (made now) and is writable."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise EvalInputError(f"--output {output}: exists and is not a folder")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise EvalInputError(f"--output {output}: cannot be created ({e.strerror})") from e
    if not os.access(output, os.W_OK | os.X_OK):
        raise EvalInputError(f"--output {output}: not writable")


def check_inputs(config: EvalConfig, checkpoints: List[str], data_dir: Optional[str], output: Optional[str] = None,
                 tokenizer: Optional[str] = None) -> Inputs:
    """Everything that can fail before the first result, checked before any model is built: the data
    files, the checkpoints (eval_suite/checkpoint.py) and their tokenizers, the needle prompts' layouts
    with each tokenizer, the stride against each training context, lm-eval's tasks (built), the output
    folder. Raises EvalInputError naming what cannot work."""
    from titans_eval_suite import babilong, needle, perplexity

    tasks = config.run.tasks
    if not tasks:
        raise EvalInputError("no tasks: set --tasks or run.tasks")
    for path in checkpoints:
        check_folder(path)
    needs_data = [t for t in tasks if t in DATA_TASKS]
    if needs_data and not data_dir:
        raise EvalInputError(f"tasks {needs_data} read local files: pass --data-dir (eval_suite/download.py fills one)")
    if "wikitext103" in tasks:
        perplexity.wikitext_articles(os.path.join(data_dir, perplexity.WIKITEXT_FILE))
    if "lambada" in tasks:
        perplexity.lambada_examples(os.path.join(data_dir, perplexity.LAMBADA_FILE))
    if "babilong" in tasks:
        babilong.check(data_dir, config.babilong.tasks, config.babilong.lengths)
    n = config.needle
    if "needle" in tasks:
        needle.check(n.kinds, n.lengths, n.depths, n.haystack)
        if n.haystack is not None and set(n.kinds) - {"passkey"}:
            needle.essay_sentences(n.haystack)
    found = [inspect(path, tokenizer) for path in checkpoints]
    for c in found:
        stride = config.perplexity.stride
        if "wikitext103" in tasks and stride is not None and stride > c.seq_length:
            raise EvalInputError(f"perplexity.stride {stride}: more than the training context of {c.label} "
                                 f"({c.seq_length} tokens); expected 0 (stream whole articles) or 1..{c.seq_length}")
    if "needle" in tasks:
        for c in {c.tokenizer: c for c in found}.values():  # layouts depend on the tokenizer alone
            try:
                needle.plan(c.codec, n.kinds, n.lengths, n.depths, n.samples, n.seed, n.haystack)
            except EvalInputError as e:
                raise EvalInputError(f"{c.label}: {e}") from e
    harness_tasks = []
    names = [t for t in tasks if t not in LOCAL_TASKS]
    if names:
        from titans_eval_suite import harness

        harness_tasks = harness.check_tasks(names, config.harness.include_path, LOCAL_TASKS)
    if output is not None:
        check_output(output)
    return Inputs(found, harness_tasks)


def evaluate(model: EvalModel, config: EvalConfig, data_dir: Optional[str], harness_tasks: list,
             out: Optional[dict] = None, log=print) -> dict:
    """{task: results} for one model, filled into ``out`` as each task ends (kept if a later one fails);
    ``harness_tasks``: check_inputs' built lm-eval tasks (or their names)."""
    from titans_eval_suite import babilong, needle, perplexity

    tasks, out = config.run.tasks, {} if out is None else out
    if "wikitext103" in tasks:
        log(f"[{model.name}] WikiText-103")
        out["wikitext103"] = perplexity.wikitext(model, data_dir, config.perplexity.stride, config.perplexity.limit)
    if "lambada" in tasks:
        log(f"[{model.name}] LAMBADA")
        out["lambada"] = perplexity.lambada(model, data_dir, config.perplexity.limit)
    if harness_tasks:
        from titans_eval_suite import harness

        log(f"[{model.name}] lm-evaluation-harness: {', '.join(t for t in tasks if t not in LOCAL_TASKS)}")
        out["harness"] = harness.run_tasks(model, harness_tasks, config.harness.include_path, config.harness.limit,
                                           config.harness.num_fewshot)
    if "needle" in tasks:
        n = config.needle
        log(f"[{model.name}] needle in a haystack: {n.kinds} x lengths {n.lengths} x depths {n.depths}")
        out["needle"] = needle.run(model, n.kinds, n.lengths, n.depths, n.samples, n.seed, n.max_new_tokens,
                                   haystack=n.haystack)
    if "babilong" in tasks:
        b = config.babilong
        log(f"[{model.name}] BABILong {b.tasks} at {b.lengths}")
        out["babilong"] = babilong.run(model, data_dir, b.tasks, b.lengths, b.samples, b.max_new_tokens)
    return out


def find_log_dir(checkpoint: str, model: EvalModel) -> Optional[str]:
    """The run's TensorBoard folder (absolute): next to its checkpoints, or the run's log.dir."""
    candidates = [os.path.join(checkpoint, "tensorboard"), os.path.join(os.path.dirname(os.path.normpath(checkpoint)),
                                                                        "tensorboard"), model.config.log.dir]
    found = next((c for c in candidates if c and os.path.isdir(c)), None)
    return os.path.abspath(found) if found else None


def split_records(results: dict) -> tuple:
    """(summary, per-sample records): the records go to their own file, results.json keeps the scores."""
    summary, records = {}, {}
    for task, value in results.items():
        if isinstance(value, dict) and "records" in value:
            records[task] = value["records"]
            value = value["scores"]
        summary[task] = value
    return summary, records


def evaluate_all(inputs: Inputs, config: EvalConfig, data_dir: Optional[str], output: str,
                 checkpoints: list) -> Optional[EvalInputError]:
    """Appends one entry per checkpoint to ``checkpoints`` as it is evaluated; returns the EvalInputError
    that stopped the run (None when none did). A failure keeps what finished: the earlier checkpoints,
    and the failing one's finished tasks (its entry's "error" says why it is incomplete)."""
    import json

    from titans_eval_suite import report

    for checked in inputs.checkpoints:
        try:
            model = EvalModel.load(checked.path, batch_size=config.run.batch_size, checked=checked)
        except EvalInputError as e:
            return e
        taken = {c["name"] for c in checkpoints}
        model.name = next(f"{model.name}{s}" for s in ["", *(f"-{i}" for i in range(2, len(taken) + 2))]
                          if f"{model.name}{s}" not in taken)  # one row, file and curve per checkpoint
        print(f"== {checked.path}: {model.name}, {model.variant}, step {model.step}, on {model.device}", flush=True)
        entry = {"name": model.name, "path": os.path.abspath(checked.path), "step": model.step,
                 "variant": model.variant, "parameters": sum(p.numel() for p in model.model.parameters()),
                 "log_dir": find_log_dir(checked.path, model)}
        checkpoints.append(entry)
        results, failure = {}, None
        try:
            evaluate(model, config, data_dir, inputs.harness_tasks, results)
        except EvalInputError as e:
            failure = e
            entry["error"] = str(e)
        except BaseException as e:  # an interrupt or a crash: marked, kept (main writes it), then propagated
            entry["error"] = f"stopped by {type(e).__name__}: {e}"
            raise
        finally:
            entry["results"], records = split_records(results)
            if records:
                report.write_text(os.path.join(output, f"samples_{report.slug(model.name)}.json"),
                                  json.dumps(records, indent=1))
        del model
        if failure:
            return failure
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, help="repeat for a side-by-side table")
    p.add_argument("--tasks", default=None, help="comma-separated; default: the config's run.tasks")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default="eval_results")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--tokenizer", default=None, help="default: the one the run's shard manifest names")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    import json

    from titans_eval_suite import report, settings
    from titans_pretrain.config import ConfigError

    start = time.time()
    try:
        tasks = [] if args.tasks is None else [f"run.tasks={json.dumps(task_names(args.tasks))}"]  # over --set
        config = settings.load(args.config, list(args.set) + tasks)
        inputs = check_inputs(config, args.checkpoint, args.data_dir, args.output, args.tokenizer)
    except (EvalInputError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "settings": config.as_dict(), "data_dir": args.data_dir, "checkpoints": []}
    try:
        failure = evaluate_all(inputs, config, args.data_dir, args.output, results["checkpoints"])
    finally:  # an interrupt or a crash: keep the checkpoints that finished
        written = report.write(results, args.output) if results["checkpoints"] else {}
    if failure:
        kept = f" (what finished is in {written['results']})" if written else ""
        print(f"error: {failure}{kept}", file=sys.stderr)
        return 2
    print(f"\n== done in {time.time() - start:.0f} s")
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
