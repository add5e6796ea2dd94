#!/usr/bin/env python
"""Shim: ``python tools/lm.py ...`` is ``vscan lm ...`` (see vscan/tools/lm.py)."""
import sys

from vscan.tools.lm import main

if __name__ == "__main__":
    sys.exit(main())
