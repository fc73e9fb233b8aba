"""The repository's layout rules: packages import, and scripts run by path do not shadow the stdlib."""

import ast
import importlib
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["kernels", "titans_core", "titans_megatron", "pretrain", "data_prep", "eval_suite"]
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


@pytest.mark.process
def test_stdlib_named_script_breaks_without_guard(tmp_path):
    """The hazard is real: a script named tokenize.py that imports torch fails when run by path."""
    proc = _run_as_script(tmp_path, "import torch\n")
    assert proc.returncode != 0 and "tokenize" in proc.stderr


@pytest.mark.process
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


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict:
    """module -> the project modules it imports, function-local imports included (they hide cycles,
    they do not remove them)."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}

    def owner(name):  # the project module an imported name lives in (a.b.func -> a.b)
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.update(owner(f"{base}.{a.name}") or owner(base) for a in node.names)
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_hidden_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No two project modules import each other, directly or through others (a cycle hidden by a
    function-local import included)."""
    graph = _import_graph()
    assert "titans_megatron.config" in graph and "pretrain.trainer" in graph
    assert _cycles(graph) == []
