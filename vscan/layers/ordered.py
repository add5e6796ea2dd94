"""Registry mixers on grids: a 1-D sequence mixer run along a grid's scan orders.

A registry mixer (:func:`vscan.layers.registry.build_mixer`) maps a (batch, L, dim) sequence to
(batch, L, dim); a causal one ('liquid', 'cfc', 'mamba', 'causal_attention', ...) reads it in
sequence order. On a grid (image patches, video tubelets, volumes) :class:`OrderedMixer` runs it
the way Vim and VMamba run their scans: for each order of a :class:`vscan.scans.ScanOrderSet`,
gather the grid-order tokens into that order's visiting order (its index map), run the mixer,
scatter the result back to grid order with the inverse map, and average over the orders. Orders
carrying a class token (:func:`vscan.scans.with_cls_token`) work unchanged: the class token is
one more position in the index maps, as in :class:`vscan.layers.bimamba.BidirectionalMamba`.

:func:`build_grid_mixer` builds a registered mixer for a grid: mixers that already scan grids
themselves (their ``forward`` takes ``grid_shape``, e.g. 'bimamba') get the orders as their
``orders`` argument; any other mixer is wrapped in an :class:`OrderedMixer`. Both are called as
``mixer(x, grid_shape)`` on (batch, L, dim) tokens in grid order.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn as nn

from vscan.scans import as_order_set

from . import registry

__all__ = ["OrderedMixer", "build_grid_mixer", "scans_grids"]


class OrderedMixer(nn.Module):
    """A 1-D sequence mixer run along each of ``orders`` over a grid; outputs averaged.

    Args:
        make_mixer: called once per order (or once with ``share=True``) to build the 1-D mixer,
            a module mapping (batch, L, dim) -> (batch, L, dim).
        orders: scan orders (a name, ScanOrder, ScanOrderSet or a list; see :mod:`vscan.scans`).
        share: one mixer (one set of weights) for all orders, run on the K ordered copies as one
            batch of K * batch sequences; default: one mixer per order, as Vim's per-direction
            parameters.

    ``forward(x, grid_shape=None)``: x (batch, L, dim) in grid order (with a class token at its
    sequence position when the orders carry one); ``grid_shape`` defaults to the 1-D sequence.
    The mixers are in ``self.mixers`` (one entry when shared).
    """

    def __init__(self, make_mixer: Callable[[], nn.Module], orders="bidirectional", share: bool = False):
        super().__init__()
        self.orders = as_order_set(orders)
        self.share = bool(share)
        self.mixers = nn.ModuleList([make_mixer() for _ in range(1 if self.share else len(self.orders))])

    def extra_repr(self) -> str:
        return f"orders={self.orders.name!r}, share={self.share}"

    def forward(self, x: torch.Tensor, grid_shape=None) -> torch.Tensor:
        b, L, _ = x.shape
        if grid_shape is None:
            grid_shape = (L - self.orders[0].extra_tokens,)
        index = self.orders.index(grid_shape, x.device, length=L)
        inverse = self.orders.inverse(grid_shape, x.device)
        K = len(self.orders)
        if self.share:
            y = self.mixers[0](torch.cat([x.index_select(1, index[k]) for k in range(K)], dim=0))
            outs = [y[k * b:(k + 1) * b].index_select(1, inverse[k]) for k in range(K)]
        else:
            outs = [m(x.index_select(1, index[k])).index_select(1, inverse[k]) for k, m in enumerate(self.mixers)]
        return outs[0] if K == 1 else torch.stack(outs).mean(0)


def _accepts(fn, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def scans_grids(name: str) -> bool:
    """Whether the registered mixer ``name`` scans grids itself (``forward(x, grid_shape)``)."""
    cls = registry.mixer_class(name)
    return "grid_shape" in inspect.signature(cls.forward).parameters


def build_grid_mixer(name: str, dim: int, orders, share: bool = False, device=None, dtype=None, **kwargs):
    """The registered mixer ``name`` over grids scanned in ``orders``; call it as ``m(x, grid_shape)``.

    A mixer that scans grids itself gets ``orders=orders``; any other is built by
    ``build_mixer(name, dim, **kwargs)`` inside an :class:`OrderedMixer` (one per order, or one
    shared with ``share=True``). ``device`` / ``dtype`` go to constructors that take them; other
    mixers are moved with ``.to`` afterwards. Unknown names raise a ValueError listing the
    registered mixers.
    """
    cls = registry.mixer_class(name)
    factory = dict(device=device, dtype=dtype) if _accepts(cls.__init__, "device") else {}

    def make(**extra):
        m = registry.build_mixer(name, dim, **kwargs, **extra, **factory)
        if not factory and (device is not None or dtype is not None):
            m = m.to(device=device, dtype=dtype)
        return m

    if scans_grids(name):
        if share:
            raise ValueError(f"mixer {name!r} scans all its orders itself; share=True applies to 1-D mixers only")
        return make(orders=orders)
    return OrderedMixer(make, orders, share=share)
