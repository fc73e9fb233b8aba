"""The repository's layout rules: packages import, and scripts run by path do not shadow the stdlib."""

import importlib
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["kernels", "titans_megatron", "pretrain", "data_prep", "eval_suite"]
SCRIPT_FOLDERS = ["data_prep", "pretrain", "eval_suite", "bench"]
PATH_GUARD = textwrap.dedent("""\
    import os, sys
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path[0] = os.path.dirname(_here)
    """)


@pytest.mark.parametrize("name", PACKAGES)
def test_top_level_packages_import(name):
    module = importlib.import_module(name)
    assert pathlib.Path(module.__file__).resolve().is_relative_to(ROOT)


def _run_as_script(tmp_path, body):
    script = tmp_path / "data_prep" / "tokenize.py"
    script.parent.mkdir()
    script.write_text(body)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)


def test_stdlib_named_script_breaks_without_guard(tmp_path):
    """The hazard is real: a script named tokenize.py that imports torch fails when run by path."""
    proc = _run_as_script(tmp_path, "import torch\n")
    assert proc.returncode != 0 and "tokenize" in proc.stderr


def test_path_guard_fixes_it(tmp_path):
    proc = _run_as_script(tmp_path, PATH_GUARD + "import inspect, torch\nprint(inspect.getsource(inspect.getfile)[:3])\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "def"


def _scripts():
    for folder in SCRIPT_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if "__main__" in path.read_text():
                yield path


def test_every_script_starts_with_the_guard():
    """Each runnable script in the package folders sets sys.path before any other import."""
    for path in _scripts():
        code = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        body = "\n".join(code)
        guard = "\n".join(PATH_GUARD.splitlines()[1:])
        assert guard in body, f"{path.relative_to(ROOT)} lacks the sys.path guard (README, Layout)"
        first_import = next(i for i, line in enumerate(code) if line.startswith(("import ", "from ")) and "os" not in line and "sys" not in line)
        assert first_import > next(i for i, line in enumerate(code) if "sys.path[0] = " in line)
