"""timm model-API methods shared by vscan's vision models, as mixins.

Each mixin goes before ``nn.Module`` in the bases (``class M(TokenStackMixin, LinearTokenHeadMixin,
nn.Module)``) and expects the attributes below of the class that uses it.

* :class:`TokenStackMixin` -- isotropic token models (Vim, VideoMamba, Mamba-ND): ``forward``
  (defined in the model's own module, see below), ``blocks``
  (nn.ModuleList of blocks called as ``blk(x, grid)``), ``norm``, ``grad_checkpointing`` (bool),
  ``_tokens(x) -> (tokens, grid, dtype)``, ``reset_classifier``, and the class attribute
  ``stem_params``: the names of the parameters besides ``patch_embed`` that make the stem (they
  are also excluded from weight decay). ``_features(x, grid, dtype)`` turns the last block's
  output into ``forward_features``' result (default ``norm(x).to(dtype)``); override it for
  another layout.
* :class:`StageStackMixin` -- hierarchical models (VMamba, MambaVision-style hybrid): ``stem``,
  ``stages`` (nn.Sequential of stages with a ``grad_checkpointing`` flag), ``norm``,
  ``in_chans``, ``feature_info`` (``num_chs`` per stage), ``num_features`` /
  ``head_hidden_size``, and ``head`` a timm ``ClassifierHead``; the class attribute
  ``head_input_fmt`` ('NCHW' or 'NHWC') is the layout of the stage maps (the head reads them;
  ``forward_intermediates`` converts from it).
* :class:`LinearTokenHeadMixin` -- a linear head on the class token or the mean of the patch
  tokens (Vim, VideoMamba): ``head`` (nn.Linear or nn.Identity), ``head_drop``, ``global_pool``
  ('token' / 'avg' / ''), ``has_class_token``, ``cls_position``, ``embed_dim``, ``num_classes``.
* :class:`PoolHeadMixin` -- a timm-style pooling head with ``fc``, ``reset(num_classes,
  pool_type, device=, dtype=)`` and ``forward(x, pre_logits=)`` (timm ``ClassifierHead``,
  ``_common.PoolHead``): ``head``, ``num_classes``.

Why the token models define ``forward`` themselves: torch.fx wraps the functions registered with
``timm.layers.register_notrace_function`` only where the traced root ``forward``'s module (and
each called submodule's) looks them up. The token models' ``_tokens`` calls such functions
(``check_input``, ``embed_tokens``, ...) from their own module, so their root ``forward`` must
live there; the stage models' stem check runs here, next to their ``forward``.
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import checkpoint

from ._common import check_input, factory_kwargs, ssm_no_weight_decay, take_indices

__all__ = ["TokenStackMixin", "StageStackMixin", "LinearTokenHeadMixin", "PoolHeadMixin", "cls_index",
           "patch_mean"]

GLOBAL_POOLS = ("token", "avg", "")


class TokenStackMixin:
    """Isotropic stack of token blocks (see the module docstring for what it expects)."""

    stem_params: tuple = ()

    @torch.jit.ignore
    def no_weight_decay(self):
        return ssm_no_weight_decay(self, extra=self.stem_params)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        stem = "|".join(f"^{name}" for name in (*self.stem_params, "patch_embed"))
        return dict(stem=stem, blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def _block(self, blk: nn.Module, x: torch.Tensor, grid):
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, x, grid)
        return blk(x, grid)

    def _features(self, x: torch.Tensor, grid, dtype) -> torch.Tensor:
        return self.norm(x).to(dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid, dtype = self._tokens(x)
        for blk in self.blocks:
            x = self._block(blk, x, grid)
        return self._features(x, grid, dtype)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take, max_index = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take


class StageStackMixin:
    """Hierarchical stem + stages + final norm (see the module docstring for what it expects)."""

    head_input_fmt: str = "NCHW"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def no_weight_decay(self):
        return ssm_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for s in self.stages:
            s.grad_checkpointing = enable

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(check_input(type(self).__name__, x, 4, self.in_chans, (1, 1)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self._stem(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs as (B, C, H, W) for 'NCHW' or (B, H, W, C) for 'NHWC'; ``norm`` applies the
        final norm to the last stage's output."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take, max_index = take_indices(len(self.stages), indices)
        x = self._stem(x)
        last = len(self.stages) - 1
        stages = self.stages if not stop_early else self.stages[:max_index + 1]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == last else x
                if output_fmt != self.head_input_fmt:   # stage maps are in head_input_fmt
                    y = y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y.permute(0, 2, 3, 1)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take, max_index = take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:   # features now end at a narrower stage: the head is rebuilt for that width
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = ClassifierHead(self.num_features, 0, pool_type="", input_fmt=self.head_input_fmt,
                                       **factory_kwargs(self))
        elif prune_head:
            self.reset_classifier(0, "")
        return take


class PoolHeadMixin:
    """Classifier API over a pooling head with ``fc`` and ``reset`` (timm ``ClassifierHead``, ``PoolHead``)."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **factory_kwargs(self))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)


class LinearTokenHeadMixin:
    """Classifier API over a linear head on the class token ('token') or the patch-token mean ('avg')."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and not self.has_class_token:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, **factory_kwargs(self)) if num_classes > 0 \
            else nn.Identity()
        self.head.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, cls_index(x.shape[1], self.cls_position)]
        elif self.global_pool == "avg":
            x = patch_mean(x, self.cls_position, self.has_class_token)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def patch_mean(x: torch.Tensor, position: str, has_cls: bool) -> torch.Tensor:
    """Mean over the patch tokens of (B, L, C), leaving the class token out."""
    if not has_cls:
        return x.mean(1)
    L = x.shape[1]
    return (x.sum(1) - x[:, cls_index(L, position)]) / (L - 1)


def cls_index(length, position: str):
    """Sequence position of the class token in a sequence of ``length`` = 1 + H*W tokens."""
    if position == "start":
        return 0
    if position == "end":
        return length - 1
    return (length - 1) // 2
