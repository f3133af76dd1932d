"""What the test modules share (``from conftest import TINY, run, ...``):

* ``TINY``: the smallest config that runs every part of a distillation on the embedded digits
  set (width 8, 3 pool networks, 128 target images, fixed learning rates: no tuning); a test
  that needs more says so as ``{**TINY, ...}``;
* ``set_args``: a config dict as the command line's ``--set key=value`` arguments;
* ``run``: ``rcig ARGV`` in this process, its exit status and what it printed;
* ``one_line_error``: the contract for bad input (exit status 2, one line ``rcig: error: ...``);
* the ``float64`` fixture: torch's default dtype float64 for the test (the oracle tests of the
  maths, ``pytestmark = pytest.mark.usefixtures("float64")``);
* the ``benchmark_script`` fixture, which imports a script of benchmarks/ for its tests;
* hypothesis profiles for the fuzz suite (tests/test_fuzz.py): "ci" (the default) runs a
  bounded number of examples per test so the suite stays fast; HYPOTHESIS_PROFILE=long runs
  many more, for a local hunt.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from rcig.cli import main

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

TINY = {"width": 8, "pool_size": 3, "target_batch_size": 128, "max_online_steps": 6, "inner_lr": 3e-3, "hvp_lr": 3e-3}


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def set_args(overrides: dict) -> list[str]:
    """``{"width": 8, "aug": ["crop"]}`` -> ``["--set", "width=8", "--set", 'aug=["crop"]']``."""
    return [a for key, value in overrides.items() for a in ("--set", f"{key}={json.dumps(value)}")]


class Ran(NamedTuple):
    code: int
    out: str
    err: str


def run(argv: list, capsys) -> Ran:
    """``rcig ARGV`` (any argument made a string) in this process; what it printed is taken
    from ``capsys``. The parser's own errors (its SystemExit) give their exit status too."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def one_line_error(code: int, err: str, message: str = "") -> None:
    """Bad input's contract: exit status 2 and one line ``rcig: error: ...`` holding ``message``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rcig: error:"), (code, err)
    assert message in lines[0], (message, lines[0])


@pytest.fixture(scope="module")
def benchmark_script():
    """``load(name)`` imports ``benchmarks/<name>.py`` (with benchmarks/ on sys.path, as when
    the script runs, until the test module ends)."""
    sys.path.insert(0, str(BENCH))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    try:
        yield load
    finally:
        sys.path.remove(str(BENCH))

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    settings = None

if settings is not None:
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                        HealthCheck.function_scoped_fixture],
                  derandomize=False, print_blob=True)
    settings.register_profile("ci", max_examples=15, **common)
    settings.register_profile("long", max_examples=400, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
