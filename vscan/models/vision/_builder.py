"""Builder for timm-registered models whose input is not a (C, H, W) image (video clips,
volumes). timm's ``build_model_with_cfg`` asserts a three-entry ``input_size``; this does the
same job for ``input_size = (C, T, H, W)`` / ``(C, D, H, W)``: resolve the pretrained cfg
(overlays included), fill ``num_classes`` / ``in_chans`` from it, build, attach the cfg, and
wrap in a ``features_only`` feature extractor built on ``forward_intermediates``."""
from __future__ import annotations

import torch.nn as nn
from timm.models import FeatureInfo, resolve_pretrained_cfg

_HEAD_KEYS = ("num_classes", "classifier", "global_pool", "pool_size")


class FeatureMaps(nn.Module):
    """``features_only`` wrapper: prunes the model to the requested taps, returns their maps."""

    def __init__(self, model: nn.Module, out_indices=3, norm: bool = False):
        super().__init__()
        self.indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.model, self.norm = model, norm
        self.feature_info = FeatureInfo(model.feature_info, self.indices)

    def set_grad_checkpointing(self, enable: bool = True):
        self.model.set_grad_checkpointing(enable)

    def forward(self, x):
        return self.model.forward_intermediates(x, indices=self.indices, norm=self.norm, intermediates_only=True)


def build_nd_model(model_cls, variant: str, pretrained: bool = False, pretrained_cfg=None,
                   pretrained_cfg_overlay=None, cache_dir=None, features_only: bool = False, out_indices=3,
                   feature_cls=None, **kwargs):
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights are published for this model; use pretrained=False "
                         f"(or load a checkpoint with load_state_dict)")
    if feature_cls not in (None, "getter"):
        raise ValueError(f"{variant}: features_only supports feature_cls='getter' (forward_intermediates), "
                         f"got {feature_cls!r}")
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay).to_dict()
    if cfg.get("num_classes", -1) >= 0:
        kwargs.setdefault("num_classes", cfg["num_classes"])
    kwargs.setdefault("in_chans", cfg["input_size"][0])
    model = model_cls(**kwargs)
    model.pretrained_cfg = model.default_cfg = cfg
    if features_only:
        model = FeatureMaps(model, out_indices)
        model.pretrained_cfg = model.default_cfg = {k: v for k, v in cfg.items() if k not in _HEAD_KEYS}
    return model
