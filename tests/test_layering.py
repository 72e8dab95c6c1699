"""The house's import rules (issue 16): the core (synth.*) imports nothing above it, trainers and samplers
never import the CLI, and no two modules import each other, directly or around a loop (imports inside
functions count: a cycle hidden in a function is still a cycle).  Every user-facing error has one base."""
import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import ROOT

FOLDERS = {"synth": "synth", "trainers": "synth.trainers", "samplers": "synth.samplers"}  # folder -> package


def modules() -> dict[str, Path]:
    """Every module of the one installed namespace, by its import name."""
    out = {}
    for folder, package in FOLDERS.items():
        for p in sorted((ROOT / folder).rglob("*.py")):
            name = ".".join([package, *p.relative_to(ROOT / folder).with_suffix("").parts])
            out[name.removesuffix(".__init__")] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file."""
    mods, edges = modules(), defaultdict(set)
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[m].update(t for t in targets if t in mods and t != m)
    return edges


def layer(module: str) -> int:
    """0: the core; 1: trainers, samplers and evaluation (which trains and samples); 2: the CLI, on top."""
    if module == "synth.cli":
        return 2
    return 1 if module.startswith(("synth.trainers", "synth.samplers", "synth.evaluation")) else 0


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(edges) | {w for targets in edges.values() for w in targets}):
        if v not in index:
            visit(v)
    return out


def test_no_upward_imports():
    edges = import_graph()
    up = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer(b) > layer(a))
    assert up == [], f"imports that reach up a layer: {up}"


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert layer("synth.data") < layer("synth.samplers.bulk") < layer("synth.cli")
    edges = import_graph()
    assert "synth.samplers.artifact" in edges["synth.samplers.bridge"] and "synth.data" in edges["synth.trainers.ldm"]


def test_only_synth_is_imported_and_installed():
    """No module imports the folders by their bare names (a second copy of each module), and the package
    list installs only the synth namespace."""
    import tomllib

    bare = sorted(f"{m}: {t}" for m, p in modules().items() for node in ast.walk(ast.parse(p.read_text()))
                  for t in ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                            else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                  if t.split(".")[0] in ("trainers", "samplers"))
    assert bare == []
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert set(tool["packages"]) == packages, "pyproject's package list must name every package (a wheel ships only those)"
    assert tool["package-dir"] == {"synth.trainers": "trainers", "synth.samplers": "samplers"}


def test_every_module_has_one_import_name():
    """Each module imports under its synth.* name only: no synth.synth, no bare trainers/samplers."""
    import importlib

    import pytest

    for wrong in ("synth.synth", "synth.tests"):
        with pytest.raises(ImportError):
            importlib.import_module(wrong)
    with pytest.raises(ImportError, match="import synth.trainers, not trainers"):
        importlib.import_module("trainers")

    for name, path in modules().items():
        assert Path(importlib.import_module(name).__file__).resolve() == path.resolve(), name


def test_every_user_error_has_one_base():
    """Each *Error class synth defines derives from SynthError, the one type the CLI catches."""
    import importlib

    from synth.errors import SynthError

    found = []
    for m, p in modules().items():
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.append((m, node.name))
    assert len(found) >= 15
    for m, name in found:
        cls = getattr(importlib.import_module(m), name)
        assert issubclass(cls, SynthError), f"{m}.{name} does not derive from SynthError"


def test_a_second_clone_runs_its_own_trainers(tmp_path):
    """With this checkout installed editable, ``synth`` imported from ANOTHER clone must resolve that clone's
    ``synth.trainers`` and ``synth.samplers``, never a mix of two checkouts' code."""
    import shutil
    import subprocess
    import sys

    clone = tmp_path / "clone"
    for name in ("synth", "trainers", "samplers"):
        shutil.copytree(ROOT / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", clone / "pyproject.toml")
    code = ("import synth, synth.trainers.loop as l, synth.samplers.bulk as b; "
            "print(synth.__file__); print(l.__file__); print(b.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(clone), "PATH": "/usr/bin"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(clone)) for p in out), out
