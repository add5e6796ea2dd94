#!/usr/bin/env python
"""Shim for ``vscan train``: ``python tools/train.py --config configs/demo_digits.yaml``.
Under torchrun: ``torchrun --nproc_per_node 2 tools/train.py --config ...``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

from vscan.tools.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
