"""``vscan train``: train and evaluate an image classifier (any timm model name, vscan's or timm's).

    vscan train --config configs/demo_digits.yaml                  # the README's main job
    vscan train --config configs/demo_digits.yaml --epochs 5 --lr 2e-3
    vscan train --model convnext_atto --dataset /data/my_imagefolder --img-size 128
    torchrun --nproc_per_node 2 -m vscan.tools.train --config configs/demo_digits.yaml

A YAML file sets fields of :class:`vscan.engine.classification.TrainConfig`; flags override
it (``--batch-size`` for ``batch_size``; ``--ema`` / ``--no-ema`` for booleans;
``--model-kwargs k=v ...`` for model constructor keywords; ``none`` clears an optional).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import typing
from pathlib import Path

from vscan.engine.classification import TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kv_pairs(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _literal(v.strip())
    return out


def _scalar_type(hint):
    """The converter for a field's CLI value: int/float/str, with 'none' -> None for optionals."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        return base(text)
    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vscan train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML file of TrainConfig fields (flags override it)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        hint = _HINTS[name]
        default = argparse.SUPPRESS
        if hint is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif name == "model_kwargs":
            p.add_argument(flag, nargs="*", metavar="KEY=VALUE", default=default,
                           help="constructor keywords for the model, values parsed as Python literals")
        elif name in ("scale", "ratio"):
            p.add_argument(flag, nargs=2, type=float, metavar=("LO", "HI"), default=default)
        else:
            p.add_argument(flag, type=_scalar_type(hint), default=default)
    return p


def load_yaml(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; valid keys are {sorted(FIELDS)}")
    return data


def parse_config(argv=None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    values = load_yaml(args.pop("config")) if args.get("config") else {}
    args.pop("config", None)
    if "model_kwargs" in args:
        args["model_kwargs"] = {**(values.get("model_kwargs") or {}), **_kv_pairs(args["model_kwargs"])}
    values.update(args)
    for key in ("scale", "ratio"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    return TrainConfig(**values).validate()


def main(argv=None) -> int:
    from vscan.engine.classification import finish_distributed, run

    cfg = parse_config(argv)
    try:
        result = run(cfg)
    finally:
        finish_distributed()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"\nbest val acc {result.best_acc:.2f}% at epoch {result.best_epoch} "
              f"({result.global_step} steps, model {cfg.model})")
        print(f"plot:       {result.plot}")
        print(f"checkpoint: {result.best_checkpoint}  (resume state: {result.last_checkpoint})")
        print(f"metrics:    {result.output / 'metrics.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
