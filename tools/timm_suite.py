#!/usr/bin/env python
"""Run timm's own model test suite against vscan's registered models.

    python tools/timm_suite.py                 # fetch (once), run the suite, run the direct calls
    python tools/timm_suite.py --all           # also the full-size variants (slow on CPU; GPU:
                                               #   TORCH_DEVICE=cuda python tools/timm_suite.py --all)
    python tools/timm_suite.py --fetch-only
    python tools/timm_suite.py --no-direct -- -x   # extra pytest arguments after --

1. Fetch: ``pip download --no-deps --no-binary :all: timm==<installed version>`` (the tests ship
   in the sdist, not the wheel) and extract only ``tests/__init__.py``, ``tests/conftest.py``
   and ``tests/test_models.py`` into ``.timm_tests/tests/`` (gitignored; re-fetched when the
   installed timm version changes). The sdist's ``timm/`` sources are never extracted, so they
   cannot shadow the installed package.
2. Suite: ``python -m pytest -p vscan .timm_tests/tests/test_models.py -k <SELECT>
   -m "forward or backward or cfg or features or fxforward"``. ``-p vscan`` imports vscan
   before collection, which registers its models; ``-k`` keeps vscan's models minus the
   documented exclusions in ``EXCLUSIONS`` and, unless ``--all``, only the CI-sized variants
   (``CI_SELECT``, see ``FULL_SIZE_REASON``). Collecting nothing is a failure.
3. Direct calls: timm selects its forward_intermediates / getter-features / prune-contract
   tests by *timm module name* (FEAT_INTER_FILTERS) and its token-model cfg test by name
   globs (NON_STD_FILTERS), so vscan's models never reach them through ``-k``; they are
   called directly, as plain functions, for the models in ``DIRECT_TESTS``.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / ".timm_tests"
TEST_FILE = DEST / "tests" / "test_models.py"
MARKERS = "forward or backward or cfg or features or fxforward"
WANTED = ("tests/__init__.py", "tests/conftest.py", "tests/test_models.py")

# (timm test function, vscan model glob) -> why it is deselected from the -k run.
EXCLUSIONS = {
    ("test_model_default_cfgs", "vscan_vim_*"):
        "Vim's forward_features returns (B, 1+N, C) tokens like timm's own vit_*/deit* models, which timm "
        "routes to test_model_default_cfgs_non_std by name (NON_STD_FILTERS); that test runs as a direct call",
    ("test_model_default_cfgs", "vscan_videomamba_*"):
        "video clips (B, C, T, H, W) -> (B, 1+N, C) tokens: a token model as above; the non-std cfg test runs "
        "as a direct call",
    ("test_model_default_cfgs", "vscan_mamba3d_*"):
        "3-D volumes: forward_features is (B, C, D, H, W) and the 2-D cfg test asserts 4-D outputs after "
        "reset_classifier(0, ''); the non-std cfg test runs as a direct call",
    ("test_model_forward_features", "vscan_videomamba_*"):
        "(B, C, T, H, W) feature maps: the test compares axes 2 and 3 (T, H) with the input's (H, W) / "
        "reduction; tests/test_vision_models.py checks the video feature shapes instead",
}

# Which models the default (CI) run covers, and why the full-size ones are left to --all.
CI_SELECT = "(_ci or vscan_vim_micro_)"
FULL_SIZE_REASON = (
    "full-size variants (Vim-Ti/S/B, VMamba-T/S/B, hybrid-T/S/B, VideoMamba-Ti/S, Mamba3D-T/S) run timm's tests at "
    "224 px (8 x 224 px clips, 64^3 volumes) and with the pure-PyTorch reference scan that costs minutes on a 2-core "
    "CPU: --all took 8.3 min for the pytest part alone on an idle 2-core VM (2026-11-23; VMamba-T/S/B's meta-device "
    "cfg test 67-80 s each, as the reference scan loops over 3,136 tokens even on 'meta'; VideoMamba-S forward 55 s) "
    "and overruns timm's 120 s per-test timeouts on a busy one. CI covers every family through its CI-sized variant "
    "(same classes and code paths, smaller widths / depths / inputs) plus the demo model; "
    "`tools/timm_suite.py --all` runs the full-size ones (timeouts off; TORCH_DEVICE=cuda on a GPU). Their "
    "published sizes are checked on the meta device by tests/test_vision_models.py.")

# Direct calls: timm test function -> model globs it applies to (video is left out of the first
# two for the axis reason in EXCLUSIONS). Arguments are filled by name: model_name, batch_size=1,
# cfg_device='meta' (whichever the installed timm's function takes).
DIRECT_TESTS = {
    "test_model_forward_intermediates": ("vscan_vim_*", "vscan_vmamba_*", "vscan_hybrid_*", "vscan_mamba3d_*"),
    "test_model_forward_intermediates_features": ("vscan_vim_*", "vscan_vmamba_*", "vscan_hybrid_*",
                                                  "vscan_mamba3d_*"),
    "test_prune_intermediate_layers_contract": ("vscan_*",),
    "test_model_default_cfgs_non_std": ("vscan_vim_*", "vscan_videomamba_*", "vscan_mamba3d_*"),
}
DIRECT_ARGS = {"batch_size": 1, "cfg_device": "meta"}


def timm_version() -> str:
    import timm
    return timm.__version__


def select_expression(all_models: bool = False) -> str:
    """The -k expression: vscan's models (CI-sized unless ``all_models``) minus EXCLUSIONS."""
    excluded = [f"({test} and {glob.rstrip('*')})" for test, glob in EXCLUSIONS]
    scope = "vscan" if all_models else f"vscan and {CI_SELECT}"
    return f"{scope} and not (" + " or ".join(excluded) + ")"


def fetch(dest: Path = DEST, version: str | None = None, quiet: bool = False) -> Path:
    """Extract timm's tests/ of the installed version into ``dest``; returns test_models.py."""
    version = version or timm_version()
    stamp = dest / "VERSION"
    test_file = dest / "tests" / "test_models.py"
    if test_file.is_file() and stamp.is_file() and stamp.read_text().strip() == version:
        return test_file
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"timm=={version}",
               "-d", tmp]
        if not quiet:
            print("+", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("timm-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            raise RuntimeError(f"could not download the timm {version} sdist from PyPI (pip exit {r.returncode}):\n"
                               f"{r.stderr[-2000:]}")
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and "/".join(m.name.split("/")[1:]) in WANTED]
            if len(members) != len(WANTED):
                raise RuntimeError(f"timm {version} sdist lacks some of {WANTED}")
            (dest / "tests").mkdir(parents=True, exist_ok=True)
            for m in members:
                rel = "/".join(m.name.split("/")[1:])
                (dest / rel).write_bytes(tar.extractfile(m).read())
    stamp.write_text(version + "\n")
    return test_file


def suite_command(extra=(), all_models: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "vscan", str(TEST_FILE.relative_to(ROOT)),
           "-k", select_expression(all_models), "-m", MARKERS, "-q", "-p", "no:cacheprovider",
           "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    if all_models:
        cmd += ["-p", "no:timeout"]          # full-size models on CPU outlast timm's 120 s timeouts
    return cmd + list(extra)


def run_suite(extra=(), capture: bool = False, all_models: bool = False) -> tuple[int, str]:
    """Run timm's test_models.py on vscan's models; (exit code, output). Exit 5 (nothing
    collected) is turned into 1."""
    cmd = suite_command(extra, all_models)
    env = dict(os.environ, MPLBACKEND="Agg")
    env.setdefault("TRITON_INTERPRET", "1")
    print("+", " ".join(f"'{c}'" if " " in c else c for c in cmd), flush=True)
    if capture:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        out, rc = r.stdout + r.stderr, r.returncode
    else:
        rc, out = subprocess.call(cmd, cwd=ROOT, env=env), ""
    if rc == 5:
        print("timm suite: no tests collected (is vscan importable? did -k select anything?): failing",
              file=sys.stderr)
        rc = 1
    return rc, out


def passed_count(output: str) -> int:
    m = re.search(r"(\d+) passed", output)
    return int(m.group(1)) if m else 0


def load_timm_tests(test_file: Path = TEST_FILE):
    """timm's test_models.py as a module (its test functions are plain functions)."""
    import warnings

    import pytest
    spec = importlib.util.spec_from_file_location("timm_test_models", test_file)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():          # timm's markers are registered in timm's pyproject, not here
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        spec.loader.exec_module(module)
    return module


def direct_cases(models=None) -> list[tuple[str, str]]:
    """(timm test name, vscan model name) pairs for the direct calls."""
    if models is None:
        import timm

        import vscan  # noqa: F401
        models = timm.list_models("vscan_*")
    return [(test, name) for test, globs in DIRECT_TESTS.items() for name in models
            if any(fnmatch.fnmatch(name, g) for g in globs)]


def run_direct(module, test: str, model_name: str) -> None:
    """Call timm's test function ``test`` for ``model_name`` (pytest.skip if this timm lacks it)."""
    import inspect

    import pytest
    fn = getattr(module, test, None)
    if fn is None:
        pytest.skip(f"timm {timm_version()} has no {test}")
    params = inspect.signature(fn).parameters
    unknown = [p for p in list(params)[1:] if p not in DIRECT_ARGS]
    if unknown:
        raise TypeError(f"timm's {test} takes {list(params)}; no value for {unknown}")
    fn(model_name, **{p: DIRECT_ARGS[p] for p in list(params)[1:]})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fetch-only", action="store_true")
    p.add_argument("--no-suite", action="store_true", help="skip the pytest run of test_models.py")
    p.add_argument("--no-direct", action="store_true", help="skip the direct calls")
    p.add_argument("--all", action="store_true", help="full-size variants too (slow on CPU)")
    p.add_argument("--models", default=None, help="glob of models for the direct calls (default: the CI "
                   "variants, or every vscan model with --all)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    fetch()
    print(f"timm {timm_version()} tests in {DEST}")
    for (test, glob), why in EXCLUSIONS.items():
        print(f"  excluded {test} on {glob}: {why}")
    if not args.all:
        print(f"  CI selection {CI_SELECT}: {FULL_SIZE_REASON}")
    if args.fetch_only:
        return 0
    failures = 0
    if not args.no_suite:
        rc, _ = run_suite(args.pytest_args, all_models=args.all)
        failures += rc != 0
    if not args.no_direct:
        import timm
        import torch

        import vscan  # noqa: F401
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        module = load_timm_tests()
        glob = args.models or ("vscan_*" if args.all else "vscan_*_ci")
        for test, name in direct_cases(timm.list_models(glob)):
            try:
                run_direct(module, test, name)
                print(f"PASSED  {test}[{name}]", flush=True)
            except BaseException as e:       # pytest.skip raises a BaseException subclass
                if type(e).__name__ == "Skipped":
                    print(f"SKIPPED {test}[{name}]: {e}", flush=True)
                    continue
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures += 1
                print(f"FAILED  {test}[{name}]: {type(e).__name__}: {e}", flush=True)
    print("timm suite:", "FAILED" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
