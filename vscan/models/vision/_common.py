"""Small helpers shared by vscan's vision models (timm model-API plumbing)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, trunc_normal_

from vscan.layers.ordered import build_grid_mixer

# SSM parameters that must not be weight-decayed although they are 2-D or 3-D (timm only
# skips 1-D params and names ending in '.bias'): decay rates, skip gains, dt biases, the
# stacked depthwise-conv biases of the multi-direction mixers.
SSM_NO_DECAY = ("A_log", "A_logs", "A_b_log", "D", "Ds", "D_b", "dt_proj_bias", "conv_bias")


def take_indices(num: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's feature-index rule: None = all, an int n = the last n, a list = those (negative
    from the end). Returns (sorted absolute indices, max index)."""
    if indices is None:
        indices = num
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f"last-n indices: n={indices} is out of range 1..{num}")
        take = [num - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            j = num + i if i < 0 else i
            if not 0 <= j < num:
                raise ValueError(f"feature index {i} is out of range for {num} features")
            take.append(j)
    return take, max(take)


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over all blocks, split per stage.
    Plain Python: model construction may run under a ``torch.device('meta')`` context."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start:start + d])
        start += d
    return out


def factory_kwargs(module: nn.Module) -> dict:
    """device / dtype of a module's first parameter (for layers rebuilt after construction)."""
    p = next(module.parameters(), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


def ssm_no_weight_decay(model: nn.Module, extra: Sequence[str] = ()) -> set[str]:
    """fnmatch patterns for the SSM parameters of ``model`` that must not be decayed; every
    pattern matches at least one parameter (timm's contract)."""
    names = [n for n, _ in model.named_parameters()]
    out = set()
    for n, p in model.named_parameters():
        leaf = n.rsplit(".", 1)[-1]
        if p.ndim >= 2 and (leaf in SSM_NO_DECAY or getattr(p, "_no_weight_decay", False)):
            out.add("*." + leaf if "." in n else leaf)
    out.update(e for e in extra if e in names)
    return out


_OWN_INIT = "_vscan_own_init"


def keep_own_init(module: nn.Module) -> nn.Module:
    """Mark ``module`` (a mixer chosen with ``mixer=``) to keep the initialisation its constructor
    gave it: :func:`init_linear` and :func:`rescale_out_proj` skip it and its submodules."""
    setattr(module, _OWN_INIT, True)
    return module


def _own_init_filter(root: nn.Module):
    """named_modules of ``root`` without the subtrees marked by :func:`keep_own_init`."""
    kept = tuple(n + "." for n, m in root.named_modules() if getattr(m, _OWN_INIT, False))
    for name, m in root.named_modules():
        if not (kept and (name + ".").startswith(kept)):
            yield name, m


def init_linear(module: nn.Module, std: float = 0.02, skip: Sequence[str] = ("dt_proj",)) -> None:
    """Truncated-normal weights and zero biases for every nn.Linear (ViT / Vim / VMamba init),
    except those named in ``skip`` (the dt projections keep Mamba's dt initialisation) and those
    in modules marked with :func:`keep_own_init`."""
    for name, m in _own_init_filter(module):
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in skip:
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_out_proj(blocks: nn.Module, depth: int) -> None:
    """Mamba's pre-norm residual rescale: each mixer's out_proj ~ kaiming-uniform / sqrt(depth)
    (not in modules marked with :func:`keep_own_init`)."""
    for _, m in _own_init_filter(blocks):
        proj = getattr(m, "out_proj", None)
        if isinstance(proj, nn.Linear) and proj.weight.device.type != "meta":
            nn.init.kaiming_uniform_(proj.weight, a=math.sqrt(5))
            proj.weight.div_(math.sqrt(depth))


def check_divisible(name: str, spatial: Sequence[int], patch: Sequence[int]) -> None:
    """ValueError unless every spatial size is a multiple of the patch size."""
    bad = [(s, p) for s, p in zip(spatial, patch) if int(s) % int(p) != 0]
    if bad:
        raise ValueError(f"{name}: input size {tuple(int(s) for s in spatial)} must be divisible by the patch size "
                         f"{tuple(int(p) for p in patch)}; resize or pad the input")


def reject_unknown(name: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"{name}.__init__() got unexpected keyword arguments {sorted(kwargs)}")


@register_notrace_function
def check_input(name: str, x: torch.Tensor, ndim: int, in_chans: int, patch: Sequence[int]) -> torch.Tensor:
    """Shape check that FX tracing treats as one opaque call: rank, channels, divisibility."""
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D input (batch, {in_chans}, ...), got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name}: expected {in_chans} input channels, got shape {tuple(x.shape)}")
    check_divisible(name, x.shape[2:], patch)
    return x


class PoolHead(nn.Module):
    """Global pool ('avg' / 'max' / '' none) over every axis after the channel axis 1, dropout,
    linear classifier: a timm-style head (``reset``, ``pre_logits``) for 3-D / N-D maps."""

    POOLS = ("avg", "max", "")

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        if pool_type not in self.POOLS:
            raise ValueError(f"global_pool must be one of {self.POOLS}, got {pool_type!r}")
        self.in_features, self.pool_type = in_features, pool_type
        self.num_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes, device=device, dtype=dtype) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: str | None = None, device=None, dtype=None):
        if pool_type is not None:
            if pool_type not in self.POOLS:
                raise ValueError(f"global_pool must be one of {self.POOLS}, got {pool_type!r}")
            self.pool_type = pool_type
        self.fc = (nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes > 0
                   else nn.Identity())
        self.fc.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "avg":
            x = x.flatten(2).mean(-1)
        elif self.pool_type == "max":
            x = x.flatten(2).amax(-1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def block_mixer(name: str, dim: int, orders, mixer_kwargs: dict | None, own_init: bool = True, device=None,
                dtype=None) -> nn.Module:
    """A vision block's token mixer from the mixer registry: ``name`` built with ``mixer_kwargs``
    over grids scanned in the block's ``orders`` (1-D mixers run along each order, see
    :func:`vscan.layers.ordered.build_grid_mixer`), called as ``m(tokens, grid_shape)``. With
    ``own_init`` (for a mixer other than the model's default) it keeps the initialisation its
    constructor gave it (:func:`keep_own_init`)."""
    kwargs = dict(mixer_kwargs or {})
    if "orders" in kwargs:
        raise ValueError("mixer_kwargs: the scan orders are the model's (its orders / scan_order / schedule "
                         "argument), not a mixer keyword")
    mixer = build_grid_mixer(name, dim, orders, device=device, dtype=dtype, **kwargs)
    return keep_own_init(mixer) if own_init else mixer
