"""One-time download, on a machine with internet, of the evaluation data into the local layout that
eval_suite/run.py reads offline (copy DATA_DIR to the cluster afterwards).

    python eval_suite/download.py --output DATA_DIR [--what wikitext103,lambada,babilong,harness]
                                  [--babilong-lengths 0k,1k,2k,4k,8k,16k,32k,64k,128k]

- wikitext103 -> DATA_DIR/wikitext103/test.txt (Salesforce/wikitext, wikitext-103-raw-v1, test)
- lambada     -> DATA_DIR/lambada_openai/test.jsonl (EleutherAI/lambada_openai, default, test)
- babilong    -> DATA_DIR/babilong/<length>/qa1..qa5.jsonl (RMT-team/babilong, one config per length)
- harness     -> the lm-evaluation-harness tasks of the paper's table, into the Hugging Face datasets
  cache (HF_DATASETS_CACHE; copy it too and run with HF_DATASETS_OFFLINE=1)

Needs the `datasets` package (installed with the `eval` extra). Every file is written to a temporary
name and renamed when complete; an existing complete file is kept.
"""

import os, sys  # noqa: E401  (runs by path)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402
import json  # noqa: E402
from typing import Callable, Iterable  # noqa: E402

from titans_eval_suite.babilong import TASKS as BABILONG_TASKS  # noqa: E402
from titans_eval_suite.perplexity import LAMBADA_FILE, WIKITEXT_FILE  # noqa: E402

SOURCES = {"wikitext103": ("Salesforce/wikitext", "wikitext-103-raw-v1", "test"),
           "lambada": ("EleutherAI/lambada_openai", "default", "test"),
           "babilong": ("RMT-team/babilong", None, None)}
BABILONG_LENGTHS = ["0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k"]
BABILONG_FIELDS = ("input", "question", "target")


def load_dataset(path: str, name: str, split: str):
    import datasets

    return datasets.load_dataset(path, name, split=split)


def _write(path: str, chunks: Iterable[str], log: Callable[[str], None]) -> None:
    if os.path.exists(path):
        log(f"{path}: present, kept")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)
    log(f"{path}: written")


def wikitext103(out: str, log) -> None:
    rows = load_dataset(*SOURCES["wikitext103"])
    _write(os.path.join(out, WIKITEXT_FILE), (row["text"] for row in rows), log)  # rows keep their newlines


def lambada(out: str, log) -> None:
    rows = load_dataset(*SOURCES["lambada"])
    _write(os.path.join(out, LAMBADA_FILE), (json.dumps({"text": row["text"]}) + "\n" for row in rows), log)


def babilong(out: str, lengths, log) -> None:
    path = SOURCES["babilong"][0]
    for length in lengths:
        for task in BABILONG_TASKS:
            rows = load_dataset(path, length, task)
            _write(os.path.join(out, "babilong", length, f"{task}.jsonl"),
                   (json.dumps({k: row[k] for k in BABILONG_FIELDS}) + "\n" for row in rows), log)


def harness(log) -> None:
    """lm-evaluation-harness fetches its tasks' datasets into the Hugging Face cache."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from titans_eval_suite.harness import PAPER_TASKS

    get_task_dict(list(PAPER_TASKS), TaskManager())
    log(f"lm-evaluation-harness tasks cached: {', '.join(PAPER_TASKS)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--what", default="wikitext103,lambada,babilong,harness")
    p.add_argument("--babilong-lengths", default=",".join(BABILONG_LENGTHS))
    args = p.parse_args(argv)
    what = args.what.split(",")
    unknown = sorted(set(what) - {"wikitext103", "lambada", "babilong", "harness"})
    if unknown:
        p.error(f"--what: unknown {unknown}; choose from wikitext103, lambada, babilong, harness")
    log = print
    if "wikitext103" in what:
        wikitext103(args.output, log)
    if "lambada" in what:
        lambada(args.output, log)
    if "babilong" in what:
        babilong(args.output, args.babilong_lengths.split(","), log)
    if "harness" in what:
        harness(log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
