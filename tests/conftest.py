"""Shared test helpers: hypothesis profiles for the fuzz suite (tests/test_fuzz.py): "ci" (the
default) runs a bounded number of examples per test so the suite stays fast;
HYPOTHESIS_PROFILE=long runs many more, for a local hunt. And ``benchmark_script``, which
imports a script of benchmarks/ for its tests."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


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
