"""The Python API: what ``import rcig`` offers, that it stays cheap, and that the package
has no import loop."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rcig

SRC = Path(__file__).resolve().parent.parent / "src"
DIGITS = Path(__file__).resolve().parent.parent / "distilled" / "digits_ipc1.safetensors"


def rcig_imports(root: Path = SRC / "rcig") -> dict[str, set[str]]:
    """module -> the rcig modules it imports, anywhere in its file (module level or inside a
    function): ``from rcig.x import y`` counts as rcig.x.y when that is a module."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                edges |= {owner(f"{node.module}.{a.name}") for a in node.names}
        graph[name] = edges - {None, name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first, colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = rcig_imports()
    assert len(graph) > 30 and "rcig.data.formats" in graph["rcig.io"]  # the walk sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_public_names_are_listed_and_import_rcig_loads_no_torch():
    for name in ("distill", "evaluate", "load", "save", "DistilledSet", "RcigError", "baseline_set", "export",
                 "import_set", "real_test_set"):
        assert name in rcig.__all__ and name in dir(rcig)
        assert getattr(rcig, name) is not None
    code = "import sys, rcig; print('torch' in sys.modules, sorted(rcig.__all__) == dir(rcig))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(SRC)})
    assert done.stdout.split() == ["False", "True"]
    with pytest.raises(AttributeError):
        rcig.no_such_name  # noqa: B018


def test_evaluate_from_python_scores_a_set_or_its_file_alike(tmp_path):
    ds = rcig.load(DIGITS)
    options = dict(models=1, steps=15, test_limit=60, settings="no_aug", progress=False)
    from_file = rcig.evaluate(DIGITS, json_out=tmp_path / "scores.json", **options)
    from_set = rcig.evaluate(ds, **options)
    assert from_file["no_aug"]["accs"] == from_set["no_aug"]["accs"]
    assert 0.0 <= from_set["no_aug"]["mean"] <= 1.0 and "aug" not in from_set
    written = json.loads((tmp_path / "scores.json").read_text())
    assert written["no_aug"] == from_file["no_aug"] and (tmp_path / written["file"]).resolve() == DIGITS.resolve()
