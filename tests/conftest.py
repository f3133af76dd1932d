"""Hypothesis profiles for the fuzz suite (tests/test_fuzz.py): "ci" (the default) runs a
bounded number of examples per test so the suite stays fast; HYPOTHESIS_PROFILE=long runs
many more, for a local hunt."""

import os

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
