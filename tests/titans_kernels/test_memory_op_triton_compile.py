"""The Triton kernels compile for real GPU architectures and fit their shared memory, on a machine
without a GPU (a subprocess without the interpreter: triton compiles to PTX and runs ptxas)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # starts processes: not in make test-fast

pytest.importorskip("triton", reason="the triton package is not installed")

# (arch, depth, head_dim, dtype): the paper's shape in bf16 on H100, the largest fp32 tiles, A100 fp16.
CASES = [(90, 2, 64, "bfloat16"), (90, 2, 128, "float32"), (80, 1, 64, "float16")]

_DRIVER = """
import json, sys, torch
from titans_kernels.memory_op.triton_compile import SHARED_MEMORY_LIMIT, compile_kernels
out = []
for arch, depth, d, dtype in json.loads(sys.argv[1]):
    report = compile_kernels(depth, d, dtype=getattr(torch, dtype), arch=arch)
    out.append({"case": [arch, depth, d, dtype], "limit": SHARED_MEMORY_LIMIT[arch], "titans_kernels": report})
print(json.dumps(out))
"""


def test_kernels_compile_and_fit_shared_memory():
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(CASES)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(CASES)
    for result in results:
        for name, info in result["titans_kernels"].items():
            assert 0 < info["shared_bytes"] <= result["limit"], (result["case"], name, info)
