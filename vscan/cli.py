"""``vscan`` console script: ``vscan {train,segment,lm,bench-scan} ...``. Each sub-command is the
``main(argv)`` of a module in vscan.tools, imported only when used."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("vscan.tools.train", "train and evaluate an image classifier (any timm model name)"),
    "segment": ("vscan.tools.segment", "MONAI segmentation training / evaluation"),
    "lm": ("vscan.tools.lm", "language models on synthetic recall tasks or byte-level text"),
    "liquid": ("vscan.tools.liquid_bench", "liquid / probability-field benchmarks"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: vscan <command> [options]\n\ncommands:")
        for name, (_, desc) in COMMANDS.items():
            print(f"  {name:10s} {desc}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"vscan: unknown command {cmd!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    mod = importlib.import_module(COMMANDS[cmd][0])
    return mod.main(rest)


if __name__ == "__main__":
    sys.exit(main())
