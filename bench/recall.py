"""Evidence that the memory learns at test time: associative recall beyond the attention window.

Each sequence starts with key-value pairs, then filler far longer than the attention window, then the
keys again: the model must produce each key's value. A sliding window of 64 cannot see the pairs from
the queries, so only a memory written while reading can answer. Every variant is trained twice from
the same seed, with its memory and with the memory switched off (memory_enabled=False; for LMM, whose
memory is its only mixer, memory_lr_max=0: the memory exists but never learns at test time).

    python bench/recall.py --config configs/bench/recall.json --output bench/results/recall_cpu
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's tokenize module importable)
_here = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
    sys.path[0] = os.path.dirname(_here)

import argparse
import datetime
import json
import math
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
from bench.outputs import cpu_description  # noqa: E402
from titans_megatron import TitansConfig, build_model  # noqa: E402

BOS, SEP = 0, 1  # special tokens; keys, values and filler follow


def vocab_layout(task):
    keys = 2
    values = keys + task["key_vocab"]
    filler = values + task["value_vocab"]
    return keys, values, filler, filler + task["filler_vocab"]


def make_batch(task, batch, generator):
    """ids [B, T] = [BOS, k1 v1 .. kP vP, filler .., SEP, q1 a1 .. qP aP]; returns ids, the query
    positions (whose next token is the answer) and the answers."""
    keys0, values0, filler0, _ = vocab_layout(task)
    P, T = task["pairs"], task["seq_length"]
    ids = filler0 + torch.randint(0, task["filler_vocab"], (batch, T), generator=generator)
    ids[:, 0] = BOS
    start = T - (1 + 2 * P)
    ids[:, start] = SEP
    query_pos = start + 1 + 2 * torch.arange(P)
    answers = []
    for b in range(batch):
        keys = keys0 + torch.randperm(task["key_vocab"], generator=generator)[:P]
        values = values0 + torch.randint(0, task["value_vocab"], (P,), generator=generator)
        ids[b, 1:1 + 2 * P:2], ids[b, 2:2 + 2 * P:2] = keys, values
        order = torch.randperm(P, generator=generator)
        ids[b, query_pos], ids[b, query_pos + 1] = keys[order], values[order]
        answers.append(values[order])
    return ids, query_pos.expand(batch, -1), torch.stack(answers)


def recall_loss_and_accuracy(logits, answer_pos, answers, task):
    _, values0, filler0, _ = vocab_layout(task)
    picked = logits.gather(1, answer_pos[..., None].expand(-1, -1, logits.shape[-1]))   # [B, Q, V]
    value_logits = picked[..., values0:filler0].float()
    target = answers - values0
    loss = F.cross_entropy(value_logits.flatten(0, 1), target.flatten())
    accuracy = (value_logits.argmax(-1) == target).float().mean()
    return loss, accuracy


def model_config(spec, variant, memory):
    model = dict(spec["model"], vocab_size=vocab_layout(spec["task"])[3], seq_length=spec["task"]["seq_length"])
    if not memory:
        model.update(memory_lr_max=0.0) if variant == "lmm" else model.update(memory_enabled=False)
    return TitansConfig.from_preset("tiny", variant=variant, **model)


def train_and_evaluate(spec, variant, memory, log):
    train, task = spec["train"], spec["task"]
    torch.manual_seed(train["seed"])
    model = build_model(model_config(spec, variant, memory), seed=train["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"], betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / train["warmup"]) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / train["steps"]))))
    data = torch.Generator().manual_seed(train["seed"] + 1)
    start = time.time()
    for step in range(train["steps"]):
        ids, pos, ans = make_batch(task, train["batch"], data)
        logits = model(ids)
        lm_loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
        recall_loss, acc = recall_loss_and_accuracy(logits, pos, ans, task)
        (lm_loss + recall_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % train["log_every"] == 0 or step + 1 == train["steps"]:
            rate = (step + 1) / (time.time() - start)
            log(f"  {variant:4s} memory={'on ' if memory else 'off'} step {step + 1}/{train['steps']} "
                f"recall loss {recall_loss.item():.3f} acc {acc.item():.2f}  {rate:.2f} steps/s, "
                f"ETA {(train['steps'] - step - 1) / rate:.0f}s")
    model.eval()
    held_out = torch.Generator().manual_seed(10_000 + train["seed"])
    correct = total = 0
    with torch.no_grad():
        for _ in range(spec["eval"]["sequences"] // spec["eval"]["batch"]):
            ids, pos, ans = make_batch(task, spec["eval"]["batch"], held_out)
            _, acc = recall_loss_and_accuracy(model(ids), pos, ans, task)
            correct += acc.item() * ans.numel()
            total += ans.numel()
    return {"accuracy": correct / total, "train_seconds": time.time() - start}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/bench/recall.json")
    p.add_argument("--output", help="write OUTPUT.md and OUTPUT.json")
    p.add_argument("--variants", nargs="+", help="override the config's list")
    p.add_argument("--steps", type=int, help="override train.steps")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    with open(args.config) as f:
        spec = json.load(f)
    if args.steps:
        spec["train"]["steps"] = args.steps
    variants = args.variants or spec["variants"]

    def log(line):
        print(line, file=sys.stderr, flush=True)

    rows = []
    for variant in variants:
        for memory in (True, False):
            result = train_and_evaluate(spec, variant, memory, log)
            rows.append({"variant": variant, "memory": memory, **result})
            log(f"{variant} memory={'on' if memory else 'off'}: held-out recall accuracy {result['accuracy']:.3f}")
    chance = 1 / spec["task"]["value_vocab"]
    lines = [f"# Associative recall beyond the attention window ({datetime.date.today().isoformat()})", "",
             f"- command: `python bench/recall.py {' '.join(sys.argv[1:])}`",
             f"- machine: {cpu_description()}, torch {torch.__version__}",
             f"- config: `{args.config}`: {json.dumps(spec)}",
             f"- chance accuracy: {chance:.3f}", "",
             "| variant | recall accuracy, memory on | memory off | train seconds (on / off) |", "|---|---|---|---|"]
    for variant in variants:
        on = next(r for r in rows if r["variant"] == variant and r["memory"])
        off = next(r for r in rows if r["variant"] == variant and not r["memory"])
        lines.append(f"| {variant} | {on['accuracy']:.3f} | {off['accuracy']:.3f} | "
                     f"{on['train_seconds']:.0f} / {off['train_seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        for ext, text in ((".md", table), (".json", json.dumps({"config": spec, "rows": rows}, indent=2))):
            with open(args.output + ext + ".tmp", "w") as f:
                f.write(text)
            os.replace(args.output + ext + ".tmp", args.output + ext)


if __name__ == "__main__":
    main()
