"""The built-in scan orders. Each is a function of the grid shape, a few lines long.

All work on N-D grids (flattened row-major, last axis fastest) unless stated:

=================  ===========================================================================
raster             row-major; ``raster_rev`` (alias ``reverse``) walks it backwards
col                column-major generalised to N-D: the axes reversed, first axis fastest
axes(...)          any axis permutation (slowest axis first), :func:`axis_order`
snake, snake_col   continuous zig-zag (boustrophedon) by rows / by columns; N-D: every axis
                   but the slowest reverses direction after each step of the next slower one
snake_rows_tl ...  2-D snakes by rows / cols from each corner (tl, tr, bl, br)
hilbert            generalized Hilbert curve (2-D and 3-D, any size), see :mod:`.hilbert`
local<w>           LocalMamba: w x w windows in raster order, raster inside each window;
                   edge windows are partial; a window larger than the grid is an error
                   (any window shape, N-D: :func:`local_windows`)
slice_wise         SegMamba inter-slice: for each (h, w), all depth slices (axis 0 fastest)
spatial_first      video (T, H, W): frame by frame (= raster)
temporal_first     video: for each spatial position, all frames (= slice_wise)
=================  ===========================================================================

Sets (one scan per member): ``bidirectional`` (Vim), ``cross`` (VMamba CrossScan, in its
order [row, col, row reversed, col reversed]), ``zigzag`` (4 continuous snakes),
``zigzag8`` (2 orientations x 4 start corners, as ZigMa), ``tri_orientation`` (SegMamba:
forward, reverse, slice-wise), ``video`` (spatial-first + temporal-first).
Every single order ``x`` also has ``x_rev``.
"""
from __future__ import annotations

import functools
import math

import torch

from .base import ScanOrder, ScanOrderSet, Shape
from .hilbert import hilbert_permutation
from .registry import get_order, register_order, register_pattern


def _grid(shape: Shape) -> torch.Tensor:
    return torch.arange(math.prod(shape)).reshape(shape)


def _boustrophedon(g: torch.Tensor) -> torch.Tensor:
    """Flatten g so that every axis but the first turns back at each step of the axis before
    it: consecutive entries are always grid neighbours."""
    t = g
    while t.dim() > 1:
        t = t.clone()
        t[..., 1::2, :] = t[..., 1::2, :].flip(-1)
        t = t.flatten(-2)
    return t


def _check_axes(axes, shape):
    if sorted(axes) != list(range(len(shape))):
        raise ValueError(f"axes {tuple(axes)} are not a permutation of the {len(shape)} grid axes")
    return tuple(axes)


def _visit(shape: Shape, axes=None, flip=(), snake=False) -> torch.Tensor:
    """Flip the grid along ``flip`` (choose the start corner), order its axes slowest-first as
    ``axes``, then read it row-major, or as a snake."""
    g = _grid(shape)
    if flip:
        g = g.flip(tuple(flip))
    if axes is not None:
        g = g.permute(_check_axes(axes, shape))
    return _boustrophedon(g) if snake else g.flatten()


def _reversed_axes(shape):
    return tuple(reversed(range(len(shape))))


def _first_axis_fastest(shape):
    return tuple(range(1, len(shape))) + (0,)


@functools.lru_cache(maxsize=None)
def axis_order(axes: tuple[int, ...], snake: bool = False) -> ScanOrder:
    """Read the grid with its axes in the order ``axes`` (slowest first); grids must have len(axes) axes."""
    axes = tuple(int(a) for a in axes)
    name = ("snake_axes" if snake else "axes") + "".join(str(a) for a in axes)
    return ScanOrder(name, lambda s: _visit(s, axes=axes, snake=snake))


def local_windows(window) -> ScanOrder:
    """LocalMamba local scan: windows of ``window`` cells per axis (an int for all axes), windows
    in raster order, raster inside each; windows at the far edges are partial."""
    return _local_windows(int(window) if isinstance(window, int) else tuple(int(w) for w in window))


@functools.lru_cache(maxsize=None)
def _local_windows(window) -> ScanOrder:
    w_name = "x".join(str(w) for w in window) if isinstance(window, tuple) else str(window)

    def fn(shape):
        w = (window,) * len(shape) if isinstance(window, int) else tuple(window)
        if len(w) != len(shape):
            raise ValueError(f"window {w} has {len(w)} axes, the grid has {len(shape)}")
        if any(wi < 1 for wi in w):
            raise ValueError(f"window {w} must be at least 1 along every axis")
        if any(wi > s for wi, s in zip(w, shape)):
            raise ValueError(f"window {w} is larger than the grid; use a window of at most {shape}")
        coords = torch.stack(torch.unravel_index(torch.arange(math.prod(shape)), shape), 1)
        w_t = torch.tensor(w)
        n_win = torch.tensor([-(-s // wi) for s, wi in zip(shape, w)])
        win = coords // w_t
        inner = coords % w_t
        key = _ravel(win, n_win) * math.prod(w) + _ravel(inner, w_t)
        return torch.argsort(key)

    return ScanOrder(f"local{w_name}", fn)


def _ravel(coords: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    strides = torch.ones_like(sizes)
    for i in range(len(sizes) - 2, -1, -1):
        strides[i] = strides[i + 1] * sizes[i + 1]
    return (coords * strides).sum(1)


def _register(name: str, fn, aliases=()) -> ScanOrder:
    order = register_order(name, ScanOrder(name, fn))
    register_order(name + "_rev", order.reversed())
    for alias in aliases:
        register_order(alias, order)
    return order


def _set(name: str, members) -> ScanOrderSet:
    return register_order(name, ScanOrderSet([get_order(m) for m in members], name=name))


raster = _register("raster", lambda s: torch.arange(math.prod(s)), aliases=("spatial_first",))
register_order("reverse", get_order("raster_rev"))
col = _register("col", lambda s: _visit(s, axes=_reversed_axes(s)))
snake = _register("snake", lambda s: _visit(s, snake=True))
snake_col = _register("snake_col", lambda s: _visit(s, axes=_reversed_axes(s), snake=True))
hilbert = _register("hilbert", hilbert_permutation)
slice_wise = _register("slice_wise", lambda s: _visit(s, axes=_first_axis_fastest(s)))
temporal_first = _register("temporal_first", lambda s: _visit(s, axes=_first_axis_fastest(s)))


def _corner_snakes():
    """snake_{rows,cols}_{tl,bl,tr,br}: 2 orientations x 4 start corners on 2-D grids (ZigMa)."""
    for orient, axes in (("rows", None), ("cols", (1, 0))):
        for corner, flip in (("tl", ()), ("bl", (0,)), ("tr", (1,)), ("br", (0, 1))):
            _register(f"snake_{orient}_{corner}", lambda s, a=axes, f=flip: _visit(s, axes=a, flip=f, snake=True))


_corner_snakes()

register_pattern(r"local(\d+)(_rev)?",
                 lambda m: local_windows(int(m.group(1))).reversed() if m.group(2) else local_windows(int(m.group(1))),
                 "local<w>[_rev]")

bidirectional = _set("bidirectional", ["raster", "raster_rev"])
cross = _set("cross", ["raster", "col", "raster_rev", "col_rev"])
zigzag = _set("zigzag", ["snake", "snake_col", "snake_rev", "snake_col_rev"])
zigzag8 = _set("zigzag8", [f"snake_{o}_{c}" for o in ("rows", "cols") for c in ("tl", "bl", "tr", "br")])
tri_orientation = _set("tri_orientation", ["raster", "raster_rev", "slice_wise"])
video = _set("video", ["spatial_first", "temporal_first"])
