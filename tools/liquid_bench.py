"""Shim: python tools/liquid_bench.py ... == vscan liquid ..."""
from vscan.tools.liquid_bench import main
raise SystemExit(main())
