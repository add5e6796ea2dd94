"""Generalized Hilbert ("gilbert") curves for 2-D and 3-D grids of any size.

The classic Hilbert curve needs a power-of-two square. The generalized construction
(J. Červený's "gilbert" algorithm, written here from its description) recursively splits
a cuboid, given by a corner and one vector per side, into 2, 3 or 5 smaller cuboids whose
curves join end to start (a 2-D grid is a 3-D one of depth 1). Each piece's curve starts at
its corner and ends at the far end of its first ("major") side.

Parity (colour the grid like a chess board) decides when that is possible: a neighbour-only
path from a corner to the far end of side a needs a to be even, or every side odd. Gilbert
leads with the longest side and so needs one diagonal step on, e.g., a 5x4 grid. Here the
longest *even* side leads when the cell count is even, and each split picks cut positions
(about half, either parity) for which every piece passes that parity test, trying the other
split shapes only when the preferred one has no such cut. The result: consecutive cells
are grid neighbours on every 2-D grid up to 40x40 and every 3-D grid up to 12x12x12
(checked exhaustively; the tests check a sample plus odd and prime sizes).

Coordinates are generated as (x, y[, z]) with x along the last (fastest) grid axis, and
turned into flat row-major indices of the grid shape (H, W) or (D, H, W).
"""
from __future__ import annotations

import torch


def _sgn(v: int) -> int:
    return (v > 0) - (v < 0)


def _add(*vs):
    return tuple(sum(c) for c in zip(*vs))


def _neg(v):
    return tuple(-c for c in v)


def _unit(v):
    return tuple(_sgn(c) for c in v)


def _size(v) -> int:
    return abs(sum(v))


def _line(out, p, v):
    step = _unit(v)
    for _ in range(_size(v)):
        out.append(p)
        p = _add(p, step)


def _feasible(a, b, c) -> bool:
    """Can a neighbour-only path fill the cuboid from its start corner to the far end of a?

    Colour the grid like a chess board. A path alternates colours, so from p to
    p + a - unit(a) it needs an even side a, or an odd number of cells (all sides odd);
    a single line is always fine, and a major side of length 1 only holds one cell."""
    w, h, d = _size(a), _size(b), _size(c)
    if h == 1 and d == 1:
        return True
    if w == 1:
        return False
    return w % 2 == 0 or (h % 2 == 1 and d % 2 == 1)


def _cuts(v):
    """Candidate cut vectors for side v: about half, even lengths first (both parities offered)."""
    n = _size(v)
    ks = sorted({k for k in (n // 2, n // 2 + 1) if 1 <= k <= n - 1}, key=lambda k: (k % 2, abs(2 * k - n)))
    return [tuple(k * u for u in _unit(v)) for k in ks]


def _split(case, p, a, b, c, a2, b2, c2):
    """Sub-cuboids (corner, major, side, side) in visiting order; each ends next to the next one's corner."""
    da, db, dc = _unit(a), _unit(b), _unit(c)
    ra, rb, rc = _add(a, _neg(a2)), _add(b, _neg(b2)), _add(c, _neg(c2))   # remainders after the cuts
    end_a = _add(a, _neg(da))                                                # last cell along a
    if case == "long":                      # cut a only
        return [(p, a2, b, c), (_add(p, a2), ra, b, c)]
    if case == "flat_c":                    # a U over a and b, c kept whole
        return [(p, b2, c, a2), (_add(p, b2), a, rb, c), (_add(p, end_a, b2, _neg(db)), _neg(b2), c, _neg(ra))]
    if case == "flat_b":                    # a U over a and c, b kept whole
        return [(p, c2, a2, b), (_add(p, c2), a, b, rc), (_add(p, end_a, c2, _neg(dc)), _neg(c2), _neg(ra), b)]
    return [                                # cut all three sides: the 3-D Hilbert "U of U's"
        (p, b2, c2, a2),
        (_add(p, b2), c, a2, rb),
        (_add(p, b2, _neg(db), c, _neg(dc)), a, _neg(b2), _neg(rc)),
        (_add(p, end_a, b2, c, _neg(dc)), _neg(c), _neg(ra), rb),
        (_add(p, end_a, b2, _neg(db)), _neg(b2), c2, _neg(ra)),
    ]


_CASES = ("long", "flat_c", "flat_b", "regular")


def _plan3d(p, a, b, c):
    """Pick the split: the shape-driven case first (as in gilbert), cut lengths chosen so that
    every piece is feasible when possible; other cases are tried only when it is not."""
    w, h, d = _size(a), _size(b), _size(c)
    if 2 * w > 3 * h and 2 * w > 3 * d:
        first = "long"
    elif 3 * h > 4 * d:
        first = "flat_c"
    elif 3 * d > 4 * h:
        first = "flat_b"
    else:
        first = "regular"
    needs = {"long": (True, False, False), "flat_c": (True, True, False),
             "flat_b": (True, False, True), "regular": (True, True, True)}
    best = None
    for case in (first,) + tuple(k for k in _CASES if k != first):
        sides = [_cuts(v) if need else [(0, 0, 0)] for v, need in zip((a, b, c), needs[case])]
        if any(not s for s in sides):
            continue                        # a side of length 1 cannot be cut
        for a2 in sides[0]:
            for b2 in sides[1]:
                for c2 in sides[2]:
                    pieces = _split(case, p, a, b, c, a2, b2, c2)
                    bad = sum(not _feasible(*q[1:]) for q in pieces)
                    if bad == 0:
                        return pieces
                    if best is None or bad < best[0]:
                        best = (bad, pieces)
    return best[1]


def _gilbert3d(out, p, a, b, c):
    """Fill the cuboid at corner p spanned by a (major), b and c; start at p, end at p + a - unit(a)
    whenever that is possible (see ``_feasible``)."""
    w, h, d = _size(a), _size(b), _size(c)
    if h == 1 and d == 1:
        return _line(out, p, a)
    if w == 1:                              # cannot end where it starts: sweep the (b, c) face
        if d == 1:
            return _line(out, p, b)
        if h == 1:
            return _line(out, p, c)
        return _gilbert3d(out, p, b, c, a) if h >= d else _gilbert3d(out, p, c, b, a)
    for q in _plan3d(p, a, b, c):
        _gilbert3d(out, *q)


def hilbert_coords(shape) -> list[tuple[int, ...]]:
    """Visiting order of a generalized Hilbert curve as (x, y[, z]) coordinates, x along the
    last grid axis. A 2-D grid is a 3-D one of depth 1 (the 3-D splits then reduce to the
    2-D ones)."""
    shape = tuple(int(s) for s in shape)
    if not 1 <= len(shape) <= 3:
        raise ValueError(f"the Hilbert curve is defined here for grids of 1, 2 or 3 axes, got {len(shape)} axes")
    sizes = shape[::-1] + (1,) * (3 - len(shape))          # (w, h, d)
    axes = [tuple(n if j == i else 0 for j in range(3)) for i, n in enumerate(sizes)]
    even = [i for i in range(3) if sizes[i] % 2 == 0]
    # The longest side leads. When the cell count is even the curve can only end next to a
    # corner along an even side (see _feasible), so then the longest even side leads.
    major = max(even or range(3), key=lambda i: (sizes[i], -i))
    rest = [v for i, v in enumerate(axes) if i != major]
    out: list = []
    _gilbert3d(out, (0, 0, 0), axes[major], *rest)
    return [q[:len(shape)] for q in out]


def hilbert_permutation(shape) -> torch.Tensor:
    """Flat row-major grid indices in Hilbert visiting order."""
    shape = tuple(int(s) for s in shape)
    coords = torch.tensor(hilbert_coords(shape), dtype=torch.long)      # (L, ndim), x first
    strides = torch.tensor([1] + list(torch.tensor(shape[::-1][:-1]).cumprod(0).tolist()), dtype=torch.long)
    return (coords * strides).sum(1)
