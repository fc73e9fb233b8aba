"""The repository's layout rules: every import name is the project's own (none another package owns, none
found through the current directory), the packages install whole, and scripts run by path do not shadow
the stdlib."""

import ast
import importlib
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
FOLDERS = {name: ROOT / SETUPTOOLS["package-dir"].get(name, name) for name in SETUPTOOLS["packages"] if "." not in name}
PACKAGES = sorted(FOLDERS)  # import names
SCRIPT_FOLDERS = ["data_prep", "pretrain", "eval_suite", "bench"]
# A script of an installed package drops its own folder from sys.path (its modules are imported by their
# installed names); bench/, which is not installed, puts the checkout root there instead.
PACKAGE_GUARD = textwrap.dedent("""\
    import os, sys
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    """)
BENCH_GUARD = textwrap.dedent("""\
    import os, sys
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _here:
        sys.path[0] = os.path.dirname(_here)
    """)


@pytest.mark.parametrize("name", PACKAGES)
def test_top_level_packages_import(name):
    module = importlib.import_module(name)
    assert pathlib.Path(module.__file__).resolve().parent == FOLDERS[name].resolve()


def test_import_names_are_the_projects_own():
    """Every installed import name starts with titans_, and no other installed distribution owns one."""
    owners = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        assert name.startswith("titans_"), name
        assert set(owners.get(name, ["titans-megatron"])) == {"titans-megatron"}, (name, owners[name])


def test_no_checkout_folder_shadows_an_installed_package():
    """From the checkout root (python -m pytest, a notebook there) a folder named like another
    distribution's package would be imported in its place: Hugging Face's `kernels`, imported by
    transformers >= 5.25, was."""
    owners = importlib.metadata.packages_distributions()
    for folder in ROOT.iterdir():
        if (folder / "__init__.py").exists() and folder.name in owners:
            assert set(owners[folder.name]) == {"titans-megatron"}, (folder.name, owners[folder.name])
    assert not (ROOT / "kernels").exists()


def test_every_package_folder_is_listed_for_the_install():
    """A subpackage (or a folder of configs) missing from pyproject's list would be absent from a
    non-editable install."""
    listed = set(SETUPTOOLS["packages"])
    for name, folder in FOLDERS.items():
        for path in [*folder.rglob("*.py"), *folder.rglob("*.json")]:
            if "__pycache__" not in path.parts:
                sub = ".".join((name,) + path.parent.relative_to(folder).parts)
                assert sub in listed, f"{path.relative_to(ROOT)}: add {sub!r} to [tool.setuptools] packages"


@pytest.mark.parametrize("bare", ["kernels", "pretrain", "data_prep", "eval_suite", "configs"])
def test_no_module_imports_a_bare_folder_name(bare):
    """Code imports the installed names (titans_*): a bare name would depend on the current directory."""
    for path in [p for folder in [*FOLDERS.values(), ROOT / "bench", ROOT / "tests"] for p in folder.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(n == bare or n.startswith(bare + ".") for n in names), f"{path.relative_to(ROOT)}: {names}"


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
@pytest.mark.parametrize("guard", [PACKAGE_GUARD, BENCH_GUARD])
def test_path_guard_fixes_it(tmp_path, guard):
    proc = _run_as_script(tmp_path, guard + "import inspect, torch\nprint(inspect.getsource(inspect.getfile)[:3])\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "def"


def _scripts():
    for folder in SCRIPT_FOLDERS:
        for path in sorted((ROOT / folder).glob("*.py")):
            if "__main__" in path.read_text():
                yield path


def test_every_script_starts_with_the_guard():
    """Each runnable script sets sys.path before any other import: its package's guard, or bench's."""
    for path in _scripts():
        code = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        body = "\n".join(code)
        guard = PACKAGE_GUARD if path.parent.name != "bench" else BENCH_GUARD
        assert "\n".join(guard.splitlines()[1:]) in body, f"{path.relative_to(ROOT)} lacks the sys.path guard (README, Layout)"
        first_import = next(i for i, line in enumerate(code) if line.startswith(("import ", "from ")) and "os" not in line and "sys" not in line)
        assert first_import > next(i for i, line in enumerate(code) if "sys.path" in line and "if " not in line)


def _module_name(name: str, path: pathlib.Path) -> str:
    parts = (name,) + path.relative_to(FOLDERS[name]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict:
    """module -> the project modules it imports, function-local imports included (they hide cycles,
    they do not remove them)."""
    modules = {_module_name(pkg, p): p for pkg in PACKAGES for p in FOLDERS[pkg].rglob("*.py")}

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
    assert "titans_megatron.config" in graph and "titans_pretrain.trainer" in graph
    assert _cycles(graph) == []


LOCKS = {"311": "megatron-core==0.16.1", "312": "megatron-core==0.19."}


def _locked(path: pathlib.Path) -> dict:
    """{normalised name: version} of a lock, every entry checked for a hash."""
    text = path.read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)((?: \\\n\s+--hash=\S+)*)", text, re.M)
    assert entries, path
    for name, version, hashes in entries:
        assert "--hash=sha256:" in hashes, f"{path.name}: {name}=={version} has no hash"
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v, _ in entries}


@pytest.mark.parametrize("python,pin", LOCKS.items())
def test_each_combination_is_locked_with_hashes(python, pin):
    lock = ROOT / "requirements" / f"lock-py{python}.txt"
    locked = _locked(lock)
    name, version = pin.split("==")
    assert locked[name].startswith(version), (lock.name, locked[name])
    assert "torch" in locked and "transformers" in locked and "titans-megatron" not in locked


@pytest.mark.skipif(os.environ.get("TITANS_CHECK_LATEST") == "1", reason="make check-latest: newer than the lock on purpose")
def test_this_environment_is_its_lock():
    """`make setup` installed exactly the lock for this interpreter: every locked package at its version."""
    lock = ROOT / "requirements" / f"lock-py{sys.version_info[0]}{sys.version_info[1]}.txt"
    if not lock.exists():
        pytest.skip(f"no lock for Python {sys.version_info[0]}.{sys.version_info[1]}")
    def installed(name):  # the first on sys.path (setuptools may append its _vendor folder's copies later)
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    differ = {n: (v, installed(n)) for n, v in _locked(lock).items() if installed(n) != v}
    assert not differ, f"not as locked (locked, installed): {differ}"
