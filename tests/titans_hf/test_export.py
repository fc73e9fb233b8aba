"""eval_suite/export_hf.py on a trained checkpoint: the folder loads in a process where none of our
packages (nor Megatron) can be imported, through transformers' Auto classes and trust_remote_code,
and gives the checkpoint's logits; pipeline("text-generation") runs; bad inputs write nothing."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from titans_eval_suite.errors import EvalInputError
from titans_eval_suite.export_hf import export

pytestmark = pytest.mark.process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Not "titans_kernels": transformers probes for a package of that name (Hugging Face's own); the check below
# that no module of this repository was loaded covers it.
OURS = ("titans_core", "titans_hf", "titans_megatron", "megatron", "pretrain", "eval_suite", "data_prep")
REMOTE = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in %r:
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    text = pipeline("text-generation", model=model, tokenizer=tok)("The", max_new_tokens=8, do_sample=False)
    ours = sorted(n for n, m in list(sys.modules.items()) if (getattr(m, "__file__", None) or "").startswith(%r))
    print("RESULT " + json.dumps({"logits": logits.tolist(), "encoded": tok("Hello world")["input_ids"], "ours": ours,
                      "generated": text[0]["generated_text"], "class": type(model).__module__}))
""") % (OURS, tuple(os.path.join(ROOT, p) + os.sep for p in OURS + ("titans_kernels",)))


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    return export(str(checkpoints["mag"]), str(tmp_path_factory.mktemp("hf") / "mag"))


def test_exported_folder_loads_without_our_code_and_gives_the_checkpoint_logits(exported, mag, tmp_path):
    names = set(os.listdir(exported))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "tokenizer.model", "hf_model.py", "hf_config.py", "mixers.py", "memory.py", "memory_op.py"} <= names
    config = json.load(open(os.path.join(exported, "config.json")))
    assert config["model_type"] == "titans" and config["variant"] == "mag" and config["auto_map"]
    ids = [mag.bos_id] + mag.encode("The memory reads every token and keeps what surprised it.")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", REMOTE, exported, json.dumps(ids)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RESULT " in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("RESULT ")[-1].splitlines()[0])
    assert out["class"].startswith("transformers_modules")  # the folder's own code
    assert out["ours"] == []  # no module of this repository was loaded
    with torch.no_grad():
        expected = mag.model(torch.tensor([ids])).float()[0]
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, rtol=1e-4, atol=1e-4)
    assert out["encoded"] == [mag.bos_id] + mag.encode("Hello world")
    assert out["generated"].startswith("The")


def test_bad_inputs_write_nothing(exported, checkpoints, tmp_path):
    with pytest.raises(EvalInputError, match="no such folder"):
        export(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "notckpt").mkdir()
    with pytest.raises(EvalInputError, match="neither a run folder"):
        export(str(tmp_path / "notckpt"), str(tmp_path / "out"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(EvalInputError, match="not an empty folder"):
        export(str(checkpoints["mag"]), str(taken))
    assert os.listdir(taken) == ["keep.txt"] and (taken / "keep.txt").read_text() == "mine"
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export-")]


def test_lm_eval_hf_model_gives_our_adapters_answers(exported, checkpoints, monkeypatch):
    """lm-eval's own `hf` model on the exported folder (trust_remote_code, BOS first as in training) and
    our adapter on the checkpoint: the same log-likelihood per choice and the same greedy generations."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import importlib

    importlib.import_module("titans_eval_suite.harness")  # registers our adapter as lm-eval's "titans"
    from tests.helpers import ROOT

    monkeypatch.chdir(ROOT)  # the task YAMLs' data files are relative to it
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = ["titans_test_mc", "titans_test_gen"]

    def run(model, args):
        out = lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, bootstrap_iters=0, log_samples=True,
                                      task_manager=TaskManager(include_path=str(ROOT / "tests" / "eval_suite" / "tasks"),
                                                               include_defaults=False))
        return {t: sorted(out["samples"][t], key=lambda s: s["doc_id"]) for t in tasks}

    # max_length: lm-eval cuts contexts to it (default: the training context, 32 tokens here, which
    # would cut these prompts); ours reads any length, as the model does in pieces
    theirs = run("hf", f"pretrained={exported},trust_remote_code=True,add_bos_token=True,batch_size=1,device=cpu,"
                       "dtype=float32,max_length=512")
    ours = run("titans", f"checkpoint={checkpoints['mag']},batch_size=3")
    for a, b in zip(theirs["titans_test_mc"], ours["titans_test_mc"]):
        assert [r[0] for r in a["filtered_resps"]] == pytest.approx([r[0] for r in b["filtered_resps"]], abs=1e-4)
    assert len(theirs["titans_test_mc"]) == len(ours["titans_test_mc"]) > 0
    assert [s["filtered_resps"] for s in theirs["titans_test_gen"]] == [s["filtered_resps"] for s in ours["titans_test_gen"]]


def test_a_variant_without_a_hugging_face_model_is_refused(checkpoints, tmp_path, monkeypatch):
    import titans_core.hf_config

    monkeypatch.setattr(titans_core.hf_config, "HF_VARIANTS", ("lmm",))
    with pytest.raises(EvalInputError, match="variant 'mag' has no Hugging Face model"):
        export(str(checkpoints["mag"]), str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def test_command_line_names_the_problem(tmp_path):
    from tests.helpers import ROOT

    proc = subprocess.run([sys.executable, "eval_suite/export_hf.py", "--checkpoint", str(tmp_path / "nope"),
                           "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and f"checkpoint {tmp_path / 'nope'}: no such folder" in proc.stderr, proc.stderr


def test_every_kind_of_mixer_loads_from_the_folders_own_code(tmp_path):
    """The exported code path for the variants the trained checkpoint above does not cover (Gated
    DeltaNet, MAC's own-query retrieval, MAL's residual sublayers): a folder written with the exporter's
    code files and auto_map loads through trust_remote_code with our packages blocked, same logits."""
    from titans_eval_suite.export_hf import AUTO_MAP, write_code
    from tests.titans_hf.pairs import ids, pair

    expected, folders = {}, []
    for variant in ("gdn", "mac-own", "mal-res"):
        config, _, model = pair(variant)
        model.config.auto_map = dict(AUTO_MAP)
        folder = tmp_path / variant
        model.save_pretrained(folder)
        write_code(str(folder))
        with torch.no_grad():
            expected[str(folder)] = model(ids(config, 50, batch=1)).logits[0]
        folders.append((str(folder), ids(config, 50, batch=1)[0].tolist()))
    script = REMOTE.split("folder, ids = ")[0] + textwrap.dedent("""
        out = {}
        for folder, ids in json.loads(sys.argv[1]):
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out[folder] = model(torch.tensor([ids])).logits[0].tolist()
        print("RESULT " + json.dumps(out))
    """)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(folders)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0 and "RESULT " in proc.stdout, proc.stderr[-4000:]
    got = json.loads(proc.stdout.split("RESULT ")[-1].splitlines()[0])
    for folder, logits in expected.items():
        torch.testing.assert_close(torch.tensor(got[folder]), logits, rtol=1e-5, atol=1e-5, msg=lambda m: f"{folder}: {m}")
