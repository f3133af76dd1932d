"""The Python API: what ``import rcig`` offers, that it stays cheap, and that the package
has no import loop."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
    assert written["iteration"] == ds.meta["iteration"] > 0  # the outer step of the set it scored
    # what it trained: the network's width (the set's protocol unless --width) and the first seed
    assert (written["width"], written["seed"]) == (ds.meta["protocol"]["width"], 0)
    assert rcig.evaluate(DIGITS, width=16, seed=3, **options)["width"] == 16
    # a set made in Python meets the checks of a file before any training
    ds.labels = ds.labels[:, :1]
    with pytest.raises(rcig.RcigError, match="at least 2"):
        rcig.evaluate(ds, **options)
    ds = rcig.load(DIGITS)
    ds.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(rcig.RcigError, match="NaN"):
        rcig.evaluate(ds, **options)


@pytest.mark.parametrize("ipc", [0, -1, True, 1.5, "1"])
def test_distill_refuses_an_ipc_that_is_not_a_positive_integer(ipc, tmp_path):
    with pytest.raises(rcig.RcigError, match="ipc must be a positive integer"):
        rcig.distill("digits", ipc, steps=1, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # no run folder left behind


def rgb_npz(tmp_path: Path) -> str:
    """An ``npz:`` spec of a tiny 8x8 RGB dataset (3 classes): its preprocessing has a ZCA."""
    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    y = np.arange(60) % 3
    np.savez(tmp_path / "rgb.npz", x_train=x[:45], y_train=y[:45], x_test=x[45:], y_test=y[45:])
    return f"npz:{tmp_path / 'rgb.npz'}"


@pytest.mark.parametrize("spec", ["digits", "rgb"])
def test_a_sets_pixels_and_test_set_undo_and_repeat_its_preprocessing(tmp_path, monkeypatch, spec):
    from rcig.data import load, prepare
    from rcig.data.sampling import centred_one_hot
    from rcig.io import make_set

    monkeypatch.setenv("RCIG_CACHE_DIR", str(tmp_path / "cache"))
    spec = rgb_npz(tmp_path) if spec == "rgb" else spec
    prepared, raw = prepare(spec), load(spec)
    k = prepared.dataset.num_classes
    ds = make_set(prepared, prepared.x_train[:6], centred_one_hot(prepared.y_train[:6], k), ipc=2, method="real",
                  seed=0, flip=False, protocol={})
    assert (ds.meta["preprocess"]["kind"] == "zca") == (raw.channels == 3)
    # pixels(): the training images as x/255, NCHW (float32 round trip through the whitening)
    expected = torch.from_numpy(raw.x_train[:6]).permute(0, 3, 1, 2).float() / 255
    assert ds.pixels().shape == expected.shape
    assert torch.allclose(ds.pixels(), expected, atol=2e-5)
    # test_set(): the real test split in the set's model space, with class indices
    test = ds.test_set()
    images, labels = test.tensors
    assert torch.equal(labels, torch.from_numpy(raw.y_test)) and len(test) == len(raw.y_test)
    assert torch.allclose(images, prepared.test_images(), atol=1e-5)
    # from the stored statistics, not a refit: a set whose stored mean is off maps the test set otherwise
    ds.meta["preprocess"]["mean"] = [m + 0.1 for m in ds.meta["preprocess"]["mean"]]
    assert not torch.allclose(ds.test_set().tensors[0], prepared.test_images(), atol=1e-3)


def test_a_set_has_a_length_a_one_line_repr_and_a_dataset_with_its_mirrored_copies():
    ds = rcig.load(DIGITS)
    assert len(ds) == 10
    text = repr(ds)
    assert "\n" not in text and len(text) < 200 and "tensor" not in text
    assert all(part in text for part in ("'digits'", "ipc=1", "classes=10", "10x1x8x8", "'rcig'"))
    plain = ds.dataset()
    assert len(plain) == 10 and torch.equal(plain.tensors[0], ds.images) and torch.equal(plain.tensors[1], ds.labels)
    ds.meta["flip"] = True
    mirrored = ds.dataset()
    x, y = mirrored.tensors
    assert len(mirrored) == 20 and torch.equal(x[10:], ds.images.flip(-1)) and torch.equal(y[10:], ds.labels)
    assert "flip=True" in repr(ds)


def test_the_example_trains_a_users_own_model_on_the_shipped_set():
    example = SRC.parent / "examples" / "train_your_model.py"
    user_lines = [line for line in example.read_text().split('"""')[2].splitlines() if line.strip()]
    assert len(user_lines) <= 40
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    accuracy = float(done.stdout.strip().splitlines()[-1].split()[-1].rstrip("%"))
    assert accuracy > 40  # ten classes: chance is 10%
