"""Class tokens handled by the order, not by the model.

A model inserts its class token at sequence position ``p`` (``cls_position``); the sequence
then has L + 1 tokens: grid cell j sits at position j if j < p, else j + 1. The order
``with_cls_token(order, p)`` is a permutation of those L + 1 positions: it visits the grid
cells in ``order``'s order and the class token at step p (Vim puts it in the middle,
p = L // 2). A reversed order is the whole sequence reversed, class token included, as in
Vim's backward branch: there the class token is visited at step L - p, so a class token at
the start is seen last by the backward scan and has gathered the whole grid.
"""
from __future__ import annotations

import functools
import math

import torch

from .base import ReversedOrder, ScanOrder, ScanOrderSet, as_shape

CLS_POSITIONS = ("start", "middle", "end")


def cls_position(shape, position="middle") -> int:
    """Sequence position of the class token for a grid: 'start' = 0, 'middle' = L // 2,
    'end' = L, or an int in [0, L] (negative counts from the end: -1 = L)."""
    L = math.prod(as_shape(shape, "cls_token"))
    if isinstance(position, str):
        if position not in CLS_POSITIONS:
            raise ValueError(f"class-token position: expected one of {CLS_POSITIONS} or an int, got {position!r}")
        return {"start": 0, "middle": L // 2, "end": L}[position]
    p = int(position)
    p = L + 1 + p if p < 0 else p
    if not 0 <= p <= L:
        raise ValueError(f"class-token position {position} is outside [0, {L}] for grid {tuple(shape)}")
    return p


class ClsTokenOrder(ScanOrder):
    """``base`` over the grid cells, with the class token visited at step ``cls_position``."""

    def __init__(self, base: ScanOrder, position="middle"):
        if base.extra_tokens:
            raise ValueError(f"order {base.name!r} already carries a class token")
        if isinstance(position, str) and position not in CLS_POSITIONS:
            raise ValueError(f"class-token position: expected one of {CLS_POSITIONS} or an int, got {position!r}")
        self.base, self.position = base, position
        super().__init__(f"{base.name}+cls@{position}", self._permutation, extra_tokens=1)

    def cls_position(self, shape) -> int:
        return cls_position(shape, self.position)

    def _permutation(self, shape):
        p = self.cls_position(shape)
        cells = self.base.index(shape)
        seq = cells + (cells >= p).long()           # grid cell -> its sequence position
        return torch.cat([seq[:p], torch.tensor([p]), seq[p:]])


@functools.lru_cache(maxsize=None)
def _with_cls(order, position):
    if isinstance(order, ScanOrderSet):
        return ScanOrderSet([_with_cls(o, position) for o in order], name=f"{order.name}+cls@{position}")
    if isinstance(order, ReversedOrder):
        return _with_cls(order.base, position).reversed()
    return ClsTokenOrder(order, position)


def with_cls_token(order, position="middle"):
    """``order`` (a ScanOrder, ScanOrderSet, name, or a list of them) over L grid cells plus a
    class token at sequence position ``position`` ('start', 'middle', 'end' or an int): L + 1
    tokens."""
    from .registry import as_order_set, get_order
    if not isinstance(order, (str, ScanOrder, ScanOrderSet)):
        order = as_order_set(order)
    return _with_cls(get_order(order), position)
