"""Test set-up: kernels run under the Triton interpreter on this CPU-only CI."""
import importlib.util
import os
import sys


def _keep_checkout_root_off_sys_path():
    """``python -m pytest`` puts the working directory (the checkout's root) first on sys.path, and
    there the top-level kernels/ folder (installed as ``vscan.kernels``) shadows the PyPI package
    ``kernels``, which transformers imports whenever it is installed (transformers 5 pulls it in):
    the parity tests then failed with "cannot import name 'CUDAProperties' from 'kernels'". Drop
    the root while vscan stays importable without it (pip install -e); a plain checkout keeps it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    kept = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    if len(kept) == len(sys.path):
        return
    saved, sys.path[:] = list(sys.path), kept
    if importlib.util.find_spec("vscan") is None:
        sys.path[:] = saved


_keep_checkout_root_off_sys_path()

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VSCAN_BACKEND", "auto")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_thread():
    """Opt-in (``pytestmark = pytest.mark.usefixtures("one_thread")``): one intra-op thread for
    the requesting module; tiny tensors run several times faster that way on a busy 2-core
    machine. The previous thread count is restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """The scan's uninitialised buffers (kernels/selective_scan.py, ``_uninit``) filled with NaN
    instead: a kernel that reads a slot before writing it then shows NaN. Yields the shapes
    allocated that way."""
    import vscan.kernels.selective_scan as sel
    shapes = []

    def nan_buffer(*shape, **kw):
        shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape
        shapes.append(shape)
        return torch.full(shape, float("nan"), **kw)
    monkeypatch.setattr(sel, "_uninit", nan_buffer)
    yield shapes
