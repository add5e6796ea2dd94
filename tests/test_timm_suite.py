"""timm's own model test suite against vscan's models (see tools/timm_suite.py for the recipe
and the documented exclusions).

1. ``test_timm_model_suite``: timm's tests/test_models.py (from the sdist of the installed timm)
   run with ``-p vscan -k <vscan models> -m "forward or backward or cfg or features or fxforward"``
   in a subprocess; it must pass and must have collected tests.
2. ``test_timm_direct``: timm's module-filtered tests (forward_intermediates, getter features,
   prune contract) and its token-model cfg test, called directly for vscan's CI-sized models.

The sdist is fetched with pip on first use (cached in .timm_tests/). Without network access
the fetch fails the tests; set VSCAN_SKIP_TIMM_SUITE=1 to skip them knowingly.
"""
import importlib.util
import os
from pathlib import Path

import pytest

import vscan  # noqa: F401  (registers vscan's models for the direct calls)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("vscan_timm_suite", ROOT / "tools" / "timm_suite.py")
timm_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timm_suite)

SKIP = os.environ.get("VSCAN_SKIP_TIMM_SUITE") == "1"
pytestmark = pytest.mark.skipif(SKIP, reason="VSCAN_SKIP_TIMM_SUITE=1")

# the direct calls run on the CI-sized variants; the pytest run covers every registered model
CI_MODELS = ["vscan_vim_ci", "vscan_vmamba_ci", "vscan_hybrid_ci", "vscan_videomamba_ci", "vscan_mamba3d_ci"]


@pytest.fixture(scope="module")
def timm_tests():
    try:
        path = timm_suite.fetch(quiet=True)
    except RuntimeError as e:
        pytest.fail(f"{e}\n(set VSCAN_SKIP_TIMM_SUITE=1 to skip timm's suite on a machine without PyPI access)")
    return path


def test_timm_model_suite(timm_tests):
    rc, out = timm_suite.run_suite(capture=True)
    tail = "\n".join(out.splitlines()[-40:])
    assert rc == 0, f"timm's test_models.py failed on vscan models:\n{tail}"
    assert timm_suite.passed_count(out) > 0, f"no test passed:\n{tail}"


@pytest.fixture(scope="module")
def timm_module(timm_tests):
    return timm_suite.load_timm_tests(timm_tests)


@pytest.mark.parametrize("test,model_name", timm_suite.direct_cases(CI_MODELS))
def test_timm_direct(timm_module, test, model_name):
    timm_suite.run_direct(timm_module, test, model_name)


def test_exclusions_are_documented_and_narrow():
    expr = timm_suite.select_expression()
    assert expr.startswith("vscan and (_ci") and "not (" in expr and timm_suite.FULL_SIZE_REASON
    for (test, glob), why in timm_suite.EXCLUSIONS.items():
        assert test.startswith("test_") and glob.startswith("vscan_") and len(why) > 40
