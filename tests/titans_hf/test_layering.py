"""titans_core and the Hugging Face model need no Megatron: no import of it, and a run with it blocked."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_titans_core_and_kernels_never_import_megatron():
    for folder in ("titans_core", "titans_hf", "titans_kernels"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    assert not name.startswith(("megatron", "titans_megatron", "titans_pretrain")), f"{path}: imports {name}"


@pytest.mark.process
def test_hf_model_runs_with_megatron_unimportable():
    script = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("megatron", "titans_megatron", "titans_pretrain"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import torch, titans_hf
        config = titans_hf.TitansHFConfig(variant="mac", hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
                                          intermediate_size=64, vocab_size=50, max_position_embeddings=32,
                                          segment_length=16, num_memory_tokens=4, num_persistent_tokens=2,
                                          memory_chunk_size=4)
        model = titans_hf.TitansForCausalLM(config).eval()
        out = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=40, do_sample=False, eos_token_id=None)
        assert out.shape == (1, 43), out.shape
        assert not any(m.split(".")[0] in ("megatron", "titans_megatron") for m in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.process
def test_transformers_imports_its_own_kernels_package_from_the_checkout_root():
    """`kernels` is Hugging Face's package, which transformers >= 5.25 imports: started from the checkout
    root (the current directory first on sys.path), transformers still gets it and the export's imports
    work (our op is titans_kernels)."""
    script = textwrap.dedent("""
        import importlib.util, os
        import transformers.integrations.hub_kernels  # failed while the checkout had a kernels/ folder
        import titans_hf, titans_kernels
        spec = importlib.util.find_spec("kernels")
        assert spec is None or os.path.dirname(os.path.abspath(spec.origin)) != os.path.join(os.getcwd(), "kernels")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
