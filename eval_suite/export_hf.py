"""Export a training checkpoint as a Hugging Face model folder.

    python eval_suite/export_hf.py --checkpoint CKPT --output DIR [--tokenizer PATH]

CKPT is a run's checkpoint folder (its ``latest``) or one ``iter_NNNNNNN`` folder, saved at any
tensor-parallel size. DIR (new, or an empty folder) receives what transformers loads:
``config.json`` (model_type "titans"), ``model.safetensors`` (fp32), ``generation_config.json``, the
tokenizer (``tokenizer.json`` equal to the run's sentencepiece model, which is copied too), and the
model code for ``trust_remote_code=True`` (titans_core's files and the memory op's, unchanged but for
the one module that imports the op). Before anything is written the exported model's logits are
checked against the checkpoint's model and the tokenizer's ids against sentencepiece; the folder
appears whole or not at all.
"""

import os, sys  # noqa: E401  (runs by path: keep the stdlib's modules importable)
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # the installed package (titans_*) is imported, never this folder's files by bare name

import argparse  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from titans_data_prep.corpus import CORPUS  # noqa: E402
from titans_eval_suite.errors import EvalInputError  # noqa: E402

# The exported folder's stand-in for titans_core/memory.py: the op from this folder's copy of it.
MEMORY_SHIM = '''"""The memory op: this folder's copy of titans_kernels.memory_op (Triton on CUDA, torch elsewhere)."""

from .memory_op import neural_memory
from .mlp import mlp_forward

__all__ = ["neural_memory", "mlp_forward"]
'''
AUTO_MAP = {"AutoConfig": "hf_config.TitansHFConfig", "AutoModel": "hf_model.TitansModel",
            "AutoModelForCausalLM": "hf_model.TitansForCausalLM"}
PROBES = ["", " ", "  two leading spaces", "trailing  ", "<s> a literal </s>", "tabs\tand\nnew\n\nlines",
          "digits 0123456789", "accents é, symbols \u00a9 and emoji \U0001F642", "\u4e2d\u6587"]
LOGITS_TOLERANCE = 1e-4  # fp32, the same arithmetic in another module order


def check_output(output: str) -> None:
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise EvalInputError(f"output {output} exists and is not an empty folder: nothing was written "
                             "(choose a new folder)")


def tokenizer_texts(limit: int = 300) -> list:
    """Texts the tokenizer is checked on: the shipped corpus's documents and edge cases."""
    texts = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(CORPUS), "*.jsonl.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    return texts[:limit] + PROBES


def write_code(folder: str) -> None:
    """titans_core's modules and the memory op's, side by side (transformers copies a module's relative
    imports from the same folder), from wherever the packages are installed."""
    import titans_core
    import titans_kernels.memory_op

    for path in glob.glob(os.path.join(os.path.dirname(titans_core.__file__), "*.py")):
        name = os.path.basename(path)
        if name != "__init__.py":
            shutil.copyfile(path, os.path.join(folder, name))
    with open(os.path.join(folder, "memory.py"), "w") as f:
        f.write(MEMORY_SHIM)
    for path in glob.glob(os.path.join(os.path.dirname(titans_kernels.memory_op.__file__), "*.py")):
        name = os.path.basename(path)
        if name == "triton_compile.py":  # a command-line tool, not part of the op
            continue
        shutil.copyfile(path, os.path.join(folder, "memory_op.py" if name == "__init__.py" else name))


def export(checkpoint: str, output: str, tokenizer=None) -> str:
    import torch
    from transformers import GenerationConfig

    from titans_eval_suite.checkpoint import inspect
    from titans_core.hf_config import HF_VARIANTS
    from titans_hf import TitansForCausalLM
    from titans_hf.convert import hf_config, hf_state_dict
    from titans_hf.tokenizer import hf_tokenizer, mismatches

    check_output(output)
    checked = inspect(checkpoint, tokenizer)
    from titans_pretrain.checkpoint import CheckpointError, load_model

    try:
        _, model_config, megatron, saved = load_model(checked.folder)
    except (FileNotFoundError, CheckpointError) as e:
        raise EvalInputError(f"{checked.label}: {e}") from e
    if model_config.variant not in HF_VARIANTS:
        raise EvalInputError(f"{checked.label}: variant {model_config.variant!r} has no Hugging Face model yet "
                             f"(exportable: {list(HF_VARIANTS)})")
    sp = checked.codec.tokenizer
    config = hf_config(model_config, bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id())
    config.auto_map = dict(AUTO_MAP)
    model = TitansForCausalLM(config).eval()
    model.load_state_dict(hf_state_dict(megatron.cpu().state_dict(), model_config), strict=True)

    probe = torch.tensor([[sp.bos_id()] + checked.codec.encode(" ".join(tokenizer_texts(3)))[:model_config.seq_length - 1]])
    with torch.no_grad():
        expected, got = megatron(probe).float(), model(probe).logits
    worst = float((expected - got).abs().max())
    if worst > LOGITS_TOLERANCE * max(1.0, float(expected.abs().max())):
        raise RuntimeError(f"the exported model's logits differ from the checkpoint's by {worst:.3g}: not written")
    tok = hf_tokenizer(checked.tokenizer)
    bad = mismatches(tok, checked.tokenizer, tokenizer_texts())
    if bad:
        raise RuntimeError(f"the converted tokenizer disagrees with {checked.tokenizer} on {len(bad)} texts "
                           f"(first: {bad[0][:80]!r}): not written")

    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model.save_pretrained(tmp)
        GenerationConfig(bos_token_id=sp.bos_id(), eos_token_id=sp.eos_id(), pad_token_id=sp.eos_id(),
                         do_sample=False).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.copyfile(checked.tokenizer, os.path.join(tmp, "tokenizer.model"))
        write_code(tmp)
        with open(os.path.join(tmp, "titans_export.json"), "w") as f:
            json.dump({"checkpoint": os.path.abspath(checked.folder), "step": saved.step,
                       "variant": model_config.variant, "max_abs_logit_difference": worst}, f, indent=1)
        if os.path.isdir(output):
            os.rmdir(output)  # empty (checked above)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--tokenizer", default=None, help="default: the copy in the checkpoint (or its shards' manifest)")
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.output, args.tokenizer)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
