"""lm-evaluation-harness (lm-eval 0.4.13) on our checkpoints: the model ``titans`` for lm-eval, and
``run_tasks`` for eval_suite/run.py.

From Python::

    import lm_eval
    from lm_eval.tasks import TaskManager
    from titans_eval_suite.harness import TitansHarnessLM    # importing this module registers "titans"

    lm_eval.simple_evaluate(model=TitansHarnessLM(model=eval_model), tasks=["piqa"])   # an EvalModel
    lm_eval.simple_evaluate(model="titans", model_args="checkpoint=DIR,tokenizer=PATH,batch_size=8",
                            tasks=["my_task"], task_manager=TaskManager(include_path="my_tasks/"))

From the shell: lm-eval 0.4.13 finds models only in its own registry (no entry points, no
``module:Class``), so its ``lm_eval`` command cannot load ours; this module's ``main`` is lm-eval's
command line (same arguments) with ``titans`` registered::

    python -m titans_eval_suite.harness run --model titans --model_args checkpoint=DIR,tokenizer=PATH \\
        --batch_size 8 --tasks piqa hellaswag [--include_path my_tasks/] [--limit 100]

How each request type is computed (the model is used as trained: documents start with BOS):

- loglikelihood (multiple choice, LAMBADA): log p(continuation | BOS + context) through
  ``EvalModel.score``. A context longer than the training context is not truncated: it is streamed
  through the model's memory (lm-eval's own adapters cut it from the left).
- loglikelihood_rolling (perplexity): the whole document given BOS, in one ``EvalModel.score`` request,
  which streams it in pieces of the training context. This is the model's exact likelihood of the
  document, every token conditioned on everything before it, not lm-eval's approximation by windows.
  (Transformer++ therefore attends past its training length here; eval_suite/perplexity.py has the
  windowed protocol of the paper's table.)
- generate_until: greedy decoding through ``EvalModel.generate``, up to ``max_gen_toks`` tokens or EOS;
  the text is cut at the first ``until`` string, as lm-eval's Hugging Face adapter does. Sampling is
  refused (the model decodes greedily only).

Offline data. The paper's tasks (PAPER_TASKS) read Hugging Face datasets: fetch them once on a
connected machine (``python eval_suite/download.py --what harness``, or any run of the tasks), which
fills the datasets cache (``HF_DATASETS_CACHE``, default ``~/.cache/huggingface/datasets``); copy that
folder to the offline machine, point ``HF_DATASETS_CACHE`` at it and set ``HF_DATASETS_OFFLINE=1`` (or
``HF_HUB_OFFLINE=1``): datasets then loads the cached copy without asking the Hub.
For fully local files, write a task YAML over jsonl and pass its folder as ``include_path``::

    task: my_task
    dataset_path: json                  # the datasets library's json loader
    dataset_kwargs:
      data_files:
        test: /data/my_task/test.jsonl  # relative paths resolve against the working directory
    test_split: test
    output_type: multiple_choice
    ...

(lm-eval passes ``dataset_kwargs`` to ``datasets.load_dataset(path=dataset_path, name=dataset_name,
**dataset_kwargs)``; tests/eval_suite/tasks/ holds examples of each request type.)
"""

import os, sys  # noqa: E401  (also runs by path: python eval_suite/harness.py run ...)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import difflib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple, Union  # noqa: E402

# lm-eval fills its model registry with its own models only while the registry is empty: before ours
import lm_eval.models  # noqa: E402,F401
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.utils import (Collator, handle_stop_sequences, normalize_gen_kwargs,  # noqa: E402
                                  postprocess_generated_text)
from tqdm import tqdm  # noqa: E402

from titans_eval_suite.errors import EvalInputError  # noqa: E402

from titans_eval_suite.model import EvalModel  # noqa: E402

log = logging.getLogger(__name__)

MODEL_NAME = "titans"
# The paper's zero-shot table (TITANS_SPEC section 6): lm-eval task -> the metrics it reports.
PAPER_TASKS: Dict[str, List[str]] = {
    "lambada_openai": ["acc", "perplexity"],
    "piqa": ["acc"],
    "hellaswag": ["acc_norm"],
    "winogrande": ["acc"],
    "arc_easy": ["acc"],
    "arc_challenge": ["acc_norm"],
    "social_iqa": ["acc"],
    "boolq": ["acc"],
}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task sets no max_gen_toks
DEFAULT_BOOTSTRAP_ITERS = 100_000  # lm-eval's default (stderr of non-mean metrics such as perplexity)
CLOSE_MATCHES = 5  # suggestions for a misspelled task name
SPACE = "\u2581"  # sentencepiece's word-boundary mark
ASCII = 0x80  # byte pieces below this decode to one character of their own
DEFAULT_FILTER = "none"  # lm-eval's name for "no filter" in its "metric,filter" result keys


class TitansHarnessLM(TemplateLM):
    """An ``EvalModel`` as an lm-eval model: ``TitansHarnessLM(model=eval_model)`` or, as lm-eval builds
    it from model_args, ``TitansHarnessLM(checkpoint=DIR, tokenizer=PATH, batch_size=N)``."""

    def __init__(self, checkpoint: Optional[str] = None, tokenizer: Optional[str] = None,
                 batch_size: Union[int, str, None] = None, model: Optional[EvalModel] = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, device: Optional[str] = None, **ignored):
        super().__init__()
        if (model is None) == (checkpoint is None):
            raise EvalInputError("titans: give exactly one of checkpoint=DIR (model_args) or model=EvalModel")
        if model is None:
            if batch_size is not None and (not str(batch_size).isdigit() or int(batch_size) < 1):
                raise EvalInputError(f"titans: batch_size must be a positive integer, not {batch_size!r}")
            sizes = {} if batch_size is None else {"batch_size": int(batch_size)}
            model = EvalModel.load(checkpoint, tokenizer, **sizes)
        elif batch_size is not None and int(batch_size) != model.batch_size:
            raise EvalInputError("titans: with model=EvalModel, the batch size is the EvalModel's (its batch_size)")
        if device is not None and str(device) != str(model.device):
            log.warning("titans: device=%s ignored; the model is on %s (EvalModel.load picks the GPU when there "
                        "is one)", device, model.device)
        if ignored:
            log.warning("titans: ignoring model arguments %s", sorted(ignored))
        self.model, self.max_gen_toks = model, int(max_gen_toks)
        self._device = model.device

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> "TitansHarnessLM":
        # lm-eval's CLI always passes --batch_size (default 1) beside model_args: model_args win, not a
        # "multiple values for batch_size" TypeError.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "TitansHarnessLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # tokens

    @property
    def eot_token_id(self) -> int:
        return self.model.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.model.bos_id  # our shards hold BOS + document + EOS: a document starts after BOS

    @property
    def max_length(self) -> int:
        return self.model.max_length

    @property
    def batch_size(self) -> int:
        return self.model.batch_size

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> List[int]:
        """The text's ids, after BOS unless ``add_special_tokens`` is False (lm-eval asks for the bare
        continuation of an empty context, which it then puts after ``prefix_token_id``)."""
        ids = self.model.encode(string)
        return ids if add_special_tokens is False else [self.prefix_token_id] + ids

    def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
        return self.model.decode(tokens)

    def get_model_info(self) -> dict:
        """Added to lm-eval's results["config"]."""
        return {"checkpoint": self.model.name, "step": self.model.step, "variant": self.model.variant,
                "max_length": self.model.max_length}

    # requests

    def _loglikelihood_tokens(self, requests: List[Tuple[Optional[Tuple[str, str]], List[int], List[int]]],
                              disable_tqdm: bool = False, **kwargs) -> List[Tuple[float, bool]]:
        """(sum of log p(continuation tokens), whether every one is the argmax) per (cache key, context ids,
        continuation ids). Longest first, as lm-eval orders them (a batch holds similar lengths, and
        running out of memory shows at once); answers come back in the requests' order."""
        order = Collator(requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2])))
        answers = []
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests") as bar:
            for chunk in order.get_batched(n=self.batch_size):
                # an empty continuation has probability 1; EvalModel.score takes non-empty targets only
                scored = iter(self.model.score([(context or [self.prefix_token_id], target)
                                                for _, context, target in chunk if target]))
                for cache_key, _, target in chunk:
                    s = next(scored) if target else None
                    answer = (float(sum(s.logprobs)), all(s.greedy)) if s else (0.0, True)
                    if cache_key is not None:  # lm-eval's convention: None for requests it did not make
                        self.cache_hook.add_partial("loglikelihood", cache_key, answer)
                    answers.append(answer)
                    bar.update(1)
        return order.get_original(answers)

    def loglikelihood_rolling(self, requests: List[Instance], disable_tqdm: bool = False) -> List[float]:
        """log p(document | BOS), the whole document at once: EvalModel.score streams what exceeds the
        training context through the model's state, so no windows are needed and none are made."""
        texts = [r.args[0] for r in requests]
        out = []
        with tqdm(total=len(texts), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood_rolling requests") as bar:
            for start in range(0, len(texts), self.batch_size):
                chunk = [self.tok_encode(t, add_special_tokens=False) for t in texts[start:start + self.batch_size]]
                scored = iter(self.model.score([([self.prefix_token_id], ids) for ids in chunk if ids]))
                for text, ids in zip(texts[start:], chunk):
                    total = float(sum(next(scored).logprobs)) if ids else 0.0
                    self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
                    out.append(total)
                    bar.update(1)
        return out

    def generate_until(self, requests: List[Instance], disable_tqdm: bool = False) -> List[str]:
        eos = self.model.tokenizer.IdToPiece(self.eot_token_id)  # what lm-eval's HF adapter adds to `until`
        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm or self.rank != 0,
                                        desc="Running generate_until requests"):
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise EvalInputError(f"titans: the task asks for sampling ({gen_kwargs}); the model decodes "
                                     "greedily only")
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            ids = self.model.generate(self.tok_encode(context), kwargs["max_gen_toks"], stop=self._stop_ids(until))
            text = postprocess_generated_text(self.tok_decode(ids), until, None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    def _stop_ids(self, until: List[str]) -> List[int]:
        """Pieces at which generation may stop early with the same text as generating on and cutting:
        a piece whose text is exactly a stop string, when no stop string could start before that piece
        and end inside it (``"\\n\\n"`` after a ``"\\n"`` does) and it is not lost to the leading space
        the first piece drops in decoding. Other stop strings cut the text after generation."""
        splits = [t[cut:] for t in until for cut in range(1, len(t))]  # what a stop string starting earlier
        return [i for s in until if s and not s.startswith(" ")       # would put into the piece
                and not any(s.startswith(v) or v.startswith(s) for v in splits)
                for i in self._pieces_by_text.get(s, [])]

    @functools.cached_property
    def _pieces_by_text(self) -> Dict[str, List[int]]:
        """The text a piece adds in the middle of a sequence -> its ids (control pieces add none, and a
        byte piece of a multi-byte character none on its own)."""
        sp, out = self.model.tokenizer, defaultdict(list)
        for i in range(sp.GetPieceSize()):
            if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
                continue
            piece = sp.IdToPiece(i)
            if sp.IsByte(i):  # "<0xNN>"
                value = int(piece[3:-1], 16)
                if value < ASCII:
                    out[chr(value)].append(i)
            else:
                out[piece.replace(SPACE, " ")].append(i)
        return dict(out)


if __name__ != "__main__":  # run as a script, this file hands over to its importable twin (see the end)
    register_model(MODEL_NAME)(TitansHarnessLM)


# tasks


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: Optional[str], defaults: bool = True):
    from lm_eval.tasks import TaskManager

    # with the defaults it indexes every YAML lm-eval ships: ~20 s on 2 cores, so once per process
    return TaskManager(include_path=include_path, include_defaults=defaults)


def _manager_for(names: Sequence[str], include_path: Optional[str]):
    """lm-eval's task index for ``names``: the YAMLs under ``include_path`` alone when each name is a
    plain task there (they take precedence over lm-eval's own anyway), else every task lm-eval ships too
    (a group or tag may name lm-eval's tasks)."""
    if include_path:
        local = _task_manager(include_path, defaults=False)
        if all(n in local.all_subtasks for n in names):
            return local
    return _task_manager(include_path)


def check_tasks(tasks: Sequence[str], include_path: Optional[str] = None, local_tasks: Sequence[str] = ()) -> list:
    """lm-eval's task objects for the names in ``tasks`` (a Task, a Group, or a tag's Tasks each), built
    from its tasks plus the YAMLs under ``include_path``, so their datasets are loaded now, before any
    model. EvalInputError naming each unknown name with its close matches (among lm-eval's tasks and
    ``local_tasks``, the caller's own), a task whose data cannot be loaded and why, or one that asks
    for sampling."""
    if not tasks:
        raise EvalInputError("no lm-evaluation-harness tasks given")
    if include_path is not None and not os.path.isdir(include_path):
        raise EvalInputError(f"harness include_path {include_path}: no such folder")
    manager = _manager_for(tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks and not os.path.isfile(t)]
    if unknown:
        hints = []
        for t in unknown:
            close = (difflib.get_close_matches(t, local_tasks, n=CLOSE_MATCHES)
                     + difflib.get_close_matches(t, manager.all_tasks, n=CLOSE_MATCHES))[:CLOSE_MATCHES]
            hints.append(f"{t!r}" + (f" (close: {', '.join(close)})" if close else ""))
        where = f" or under {include_path}" if include_path else " (pass include_path for task YAMLs of your own)"
        local = f"neither a local task ({', '.join(local_tasks)}) nor" if local_tasks else "not"
        raise EvalInputError(f"unknown task(s): {'; '.join(hints)}: {local} among lm-evaluation-harness's "
                             f"tasks{where}")
    return [item for name in tasks for item in _build(manager, name)]


def _build(manager, name: str) -> list:
    """The top-level objects lm-eval builds for ``name`` (its subtasks stay inside a Group)."""
    try:
        loaded = manager.load([name])
    except Exception as e:  # datasets raise many kinds (FileNotFoundError, ConnectionError, ValueError, ...)
        hint = "; eval_suite/download.py --what harness fills the cache on a connected machine" \
            if isinstance(e, ConnectionError) else ""
        raise EvalInputError(f"lm-evaluation-harness task {name!r}: its data cannot be loaded "
                             f"({type(e).__name__}: {e}){hint}") from e
    for task in loaded["tasks"].values():  # the adapter decodes greedily only: say so now, not mid-run
        if task.get_config("output_type") == "generate_until" and \
                (task.get_config("generation_kwargs") or {}).get("do_sample"):
            of = "" if task.task_name == name else f" (of {name!r})"
            raise EvalInputError(f"lm-evaluation-harness task {task.task_name!r}{of} asks for sampling (do_sample); "
                                 "the titans model decodes greedily only")
    groups = list(loaded["groups"].values())
    inside = {id(child) for group in groups for child in group}
    return [x for x in [*groups, *loaded["tasks"].values()] if id(x) not in inside]


def task_metrics(task_results: dict, paper: Sequence[str] = ()) -> Dict[str, object]:
    """lm-eval's results for one task ({"acc,none": .., "acc_stderr,none": .., "alias": ..}) as
    {metric: value}: the paper's metrics first, "metric,filter" kept where a filter other than none ran."""
    flat = {}
    for key, value in task_results.items():
        metric, _, filt = key.partition(",")
        if filt:
            flat[metric if filt == DEFAULT_FILTER else key] = value
    return {**{m: flat[m] for m in paper if m in flat}, **flat}


def run_tasks(model: EvalModel, tasks: list, include_path: Optional[str] = None, limit: Optional[float] = None,
              num_fewshot: int = 0, bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS) -> Dict[str, dict]:
    """Evaluate ``model`` on lm-eval ``tasks``: names (built and checked by ``check_tasks`` before any
    model work), or what ``check_tasks`` returned (reused: eval_suite/run.py loads each dataset once for
    all checkpoints; lm-eval rebuilds a task's requests on every run). Returns, per task
    lm-eval reports (a group's subtasks included), {metric: value, ..., "lm_eval": {...}}: the paper's
    metrics first (PAPER_TASKS), then every other metric and stderr lm-eval computed, then under
    "lm_eval" its full results for the task (results, config, version, n-shot, n-samples,
    higher_is_better), JSON-ready."""
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    names = [t for t in tasks if isinstance(t, str)]
    if names:
        tasks = check_tasks(tasks, include_path)
    # the manager only files the built objects; without one lm-eval would index every YAML it ships again
    out = lm_eval.simple_evaluate(model=TitansHarnessLM(model=model), tasks=list(tasks), num_fewshot=num_fewshot,
                                  limit=limit, bootstrap_iters=bootstrap_iters,
                                  task_manager=_manager_for(names, include_path), log_samples=False)
    out = json.loads(json.dumps(out, default=handle_non_serializable))
    per_task = {}
    for task, results in out["results"].items():
        full = {"results": results, **{key: out.get(key, {}).get(task) for key in
                                       ("configs", "versions", "n-shot", "n-samples", "higher_is_better")}}
        per_task[task] = {**task_metrics(results, PAPER_TASKS.get(task, ())), "lm_eval": full}
    return per_task


def main(argv: Optional[List[str]] = None) -> None:
    """lm-eval's command line (``lm_eval run ...``) with the model ``titans`` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval's parser reads sys.argv
    cli_evaluate()


if __name__ == "__main__":
    # Run as a script (-m or by path), this file is the module __main__: the importable titans_eval_suite.harness
    # registers the model, as registering this copy's class too would clash with it under the same name.
    from titans_eval_suite.harness import main as _main

    _main()
