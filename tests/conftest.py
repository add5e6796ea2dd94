"""Test set-up: kernels run under the Triton interpreter on this CPU-only CI."""
import os

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
