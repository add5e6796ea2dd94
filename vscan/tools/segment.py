"""``vscan segment``: MONAI segmentation training + held-out evaluation.

    vscan segment                                         # default 3-D synthetic run (CPU-sized)
    vscan segment --config configs/segment_synthetic3d.yaml --out-dir runs/seg
    vscan segment --data-root /data/Task09_Spleen --model UMambaEnc --epochs 100 --device cuda
    vscan segment --set train.lr=1e-3 --set model.kwargs.features=[16,32,64,128]

Writes to --out-dir: checkpoints/{last,best}.pt, metrics.csv (per epoch), metrics.json
(test Dice, timings, versions, config), segmentation.png (curves + a predicted slice), config.yaml.
"""
from __future__ import annotations

import argparse
import sys


def _set(cfg: dict, dotted: str):
    import yaml
    if "=" not in dotted:
        raise SystemExit(f"--set expects key.path=value, got {dotted!r}")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw)
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {key}: {p} is not a section")
    node[parts[-1]] = value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vscan segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (merged over the built-in defaults)")
    p.add_argument("--out-dir", help="output folder")
    p.add_argument("--data-root", help="Medical Segmentation Decathlon folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--model", help="UMambaBot | UMambaEnc | ScanSegNet | a monai.networks.nets name | dotted path")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from <out-dir>/checkpoints/last.pt")
    p.add_argument("--expect-dice", type=float, help="exit 1 when the test mean foreground Dice is below this")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. train.lr=1e-3 (YAML-parsed); repeatable")
    return p


def main(argv=None) -> int:
    import yaml
    args = build_parser().parse_args(argv)
    cfg: dict = {}
    if args.config:
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            raise SystemExit(f"{args.config}: expected a mapping at the top level")
    if args.out_dir:
        cfg["out_dir"] = args.out_dir
    if args.data_root:
        cfg.setdefault("data", {}).update(source="msd", root=args.data_root)
    if args.model:
        cfg["model"] = {"name": args.model, "kwargs": {}}
    if args.epochs is not None:
        cfg.setdefault("train", {})["epochs"] = args.epochs
    if args.device:
        cfg["device"] = args.device
    if args.seed is not None:
        cfg["seed"] = args.seed
    if args.resume:
        cfg["resume"] = True
    if args.expect_dice is not None:
        cfg["expect_dice"] = args.expect_dice
    for s in args.set:
        _set(cfg, s)
    from vscan.engine.segmentation import run_segmentation
    try:
        summary = run_segmentation(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"vscan segment: error: {e}", file=sys.stderr)
        return 2
    want = summary["config"].get("expect_dice")
    if want is not None and not summary["test_dice_mean_fg"] >= want:
        print(f"vscan segment: test mean foreground Dice {summary['test_dice_mean_fg']:.4f} < expected {want}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
