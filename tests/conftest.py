"""Test set-up: kernels run under the Triton interpreter on this CPU-only CI."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VSCAN_BACKEND", "auto")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
