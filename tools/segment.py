#!/usr/bin/env python
"""Shim: ``python tools/segment.py ...`` == ``vscan segment ...`` (see vscan/tools/segment.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vscan.tools.segment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
