"""Scan orders: bijections, inverses, neighbour properties, hand-computed small cases, errors."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vscan.scans import (AlternatingSchedule, CyclicSchedule, ScanOrder, ScanOrderSet, axis_order,
                         cls_position, get_order, list_orders, local_windows, register_order,
                         with_cls_token)

ND_ORDERS = ["raster", "raster_rev", "reverse", "col", "col_rev", "snake", "snake_rev", "snake_col",
             "snake_col_rev", "slice_wise", "slice_wise_rev", "spatial_first", "temporal_first"]
ND_SETS = ["bidirectional", "cross", "zigzag", "tri_orientation", "video"]
SHAPES_ND = [(1,), (7,), (1, 1), (7, 13), (13, 7), (1, 9), (9, 1), (4, 4), (8, 6), (5, 9, 11),
             (2, 2, 2), (1, 5, 1), (3, 1, 4), (2, 3, 2, 3)]
SHAPES_23 = [s for s in SHAPES_ND if len(s) in (2, 3)]


def assert_bijection(index, L):
    assert index.dtype == torch.long and index.shape[-1] == L
    rows = index.reshape(-1, L)
    for row in rows:
        assert torch.equal(row.sort().values, torch.arange(L))


def assert_inverse(order, shape):
    idx, inv = order.index(shape), order.inverse(shape)
    x = torch.randn(*idx.shape[:-1], idx.shape[-1], 3)
    seq = x.gather(-2, idx.unsqueeze(-1).expand_as(x))
    back = seq.gather(-2, inv.unsqueeze(-1).expand_as(x))
    assert torch.equal(back, x)


def neighbour_steps(index, shape):
    """Manhattan distance between consecutive visited cells."""
    coords = torch.stack(torch.unravel_index(index, shape), 1)
    return (coords[1:] - coords[:-1]).abs().sum(1)


@pytest.mark.parametrize("name", ND_ORDERS + ND_SETS)
def test_nd_orders_are_bijections(name):
    order = get_order(name)
    for shape in SHAPES_ND:
        assert_bijection(order.index(shape), math.prod(shape))
        assert_inverse(order, shape)


@pytest.mark.parametrize("name", ["hilbert", "hilbert_rev", "local2", "local3_rev", "zigzag8"])
def test_2d_3d_orders_are_bijections(name):
    order = get_order(name)
    for shape in SHAPES_23:
        if name == "zigzag8" and len(shape) != 2:
            continue                                   # defined on 2-D grids
        if name.startswith("local") and any(s < int(name[5]) for s in shape):
            with pytest.raises(ValueError, match="larger than the grid"):
                order.index(shape)
            continue
        assert_bijection(order.index(shape), math.prod(shape))
        assert_inverse(order, shape)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3),
       st.sampled_from(ND_ORDERS + ND_SETS + ["hilbert", "local2"]))
def test_random_shapes_bijection(shape, name):
    shape = tuple(shape)
    if name == "local2" and min(shape) < 2:
        return
    order = get_order(name)
    assert_bijection(order.index(shape), math.prod(shape))
    assert_inverse(order, shape)


@pytest.mark.parametrize("name", ["snake", "snake_rev", "snake_col", "snake_col_rev"])
def test_snake_visits_neighbours(name):
    for shape in SHAPES_ND:
        idx = get_order(name).index(shape)
        assert bool((neighbour_steps(idx, shape) == 1).all()), shape


def test_snake_rows_by_hand():
    assert get_order("snake").index((3, 4)).tolist() == [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    assert get_order("snake_col").index((2, 3)).tolist() == [0, 3, 4, 1, 2, 5]
    # 8 zig-zag paths: 2 orientations x 4 start corners, all neighbour-continuous
    starts = {get_order(n).index((3, 4))[0].item() for n in list_orders() if n.startswith("snake_rows_")
              and not n.endswith("_rev")}
    assert starts == {0, 3, 8, 11}
    for member in get_order("zigzag8"):
        assert bool((neighbour_steps(member.index((5, 6)), (5, 6)) == 1).all())


# Hilbert property tested: EVERY consecutive pair of visited cells is a grid neighbour
# (Manhattan distance exactly 1), on every 2-D grid up to 16x16 and on the 3-D grids below,
# odd, even, prime and mixed sizes. (The construction leads with an even side when the cell
# count is even and picks parity-feasible cuts, so no diagonal step is needed; it was checked
# exhaustively up to 40x40 and 12x12x12 when written.)
def test_hilbert_2d_neighbours_all_small_grids():
    for h in range(1, 17):
        for w in range(1, 17):
            idx = get_order("hilbert").index((h, w))
            assert_bijection(idx, h * w)
            assert bool((neighbour_steps(idx, (h, w)) == 1).all()), (h, w)


@pytest.mark.parametrize("shape", [(5, 9, 11), (3, 3, 3), (2, 3, 4), (7, 4, 5), (1, 6, 7), (6, 1, 5),
                                   (8, 8, 8), (4, 6, 10), (13, 2, 7), (9, 10, 3), (7, 13, 1)])
def test_hilbert_3d_neighbours(shape):
    idx = get_order("hilbert").index(shape)
    assert_bijection(idx, math.prod(shape))
    assert bool((neighbour_steps(idx, shape) == 1).all())


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)))
def test_hilbert_3d_neighbours_random(shape):
    assert bool((neighbour_steps(get_order("hilbert").index(shape), shape) == 1).all())


def test_hilbert_power_of_two_is_hierarchical():
    # on 2^k grids it is the Hilbert curve: each quarter (octant) of the path fills one block
    idx = get_order("hilbert").index((8, 8))
    for q in range(4):
        r, c = torch.unravel_index(idx[16 * q:16 * (q + 1)], (8, 8))
        assert len(set((r // 4 * 2 + c // 4).tolist())) == 1
    idx = get_order("hilbert").index((4, 4, 4))
    for q in range(8):
        d, h, w = torch.unravel_index(idx[8 * q:8 * (q + 1)], (4, 4, 4))
        assert len(set((d // 2 * 4 + h // 2 * 2 + w // 2).tolist())) == 1


@pytest.mark.parametrize("shape", [(7, 13), (4, 4), (1, 5), (6, 1)])
def test_cross_equals_flips_and_transposes(shape):
    g = torch.arange(math.prod(shape)).view(shape)
    expected = torch.stack([g.flatten(), g.t().flatten(), g.flatten().flip(0), g.t().flatten().flip(0)])
    assert torch.equal(get_order("cross").index(shape), expected)
    assert torch.equal(get_order("bidirectional").index(shape), expected[[0, 2]])


def test_tri_orientation_by_hand():
    # (D, H, W) = (2, 2, 2), flat = d*4 + h*2 + w; slice-wise: for each (h, w), both slices
    assert get_order("tri_orientation").index((2, 2, 2)).tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1, 0], [0, 4, 1, 5, 2, 6, 3, 7]]
    assert get_order("slice_wise").index((3, 1, 2)).tolist() == [0, 2, 4, 1, 3, 5]


def test_video_orders_by_hand():
    # (T, H, W) = (2, 2, 3), flat = t*6 + h*3 + w
    assert get_order("spatial_first").index((2, 2, 3)).tolist() == list(range(12))
    assert get_order("temporal_first").index((2, 2, 3)).tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    assert get_order("video").index((2, 2, 3)).shape == (2, 12)


def test_local_windows_by_hand():
    # 4x5 grid, 2x2 windows: the last column holds partial 2x1 windows
    assert get_order("local2").index((4, 5)).tolist() == [
        0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 15, 16, 12, 13, 17, 18, 14, 19]
    assert local_windows(3).index((4, 5)).tolist() == [
        0, 1, 2, 5, 6, 7, 10, 11, 12, 3, 4, 8, 9, 13, 14, 15, 16, 17, 18, 19]
    assert get_order("local2_rev").index((4, 5)).tolist() == get_order("local2").index((4, 5)).flip(0).tolist()
    assert local_windows((1, 2)).index((2, 3)).tolist() == [0, 1, 2, 3, 4, 5]
    assert local_windows(2).index((2, 2, 2)).tolist() == list(range(8))


def test_local_window_larger_than_grid():
    with pytest.raises(ValueError, match=r"local7.*\(5, 9\).*larger than the grid"):
        get_order("local7").index((5, 9))
    with pytest.raises(ValueError, match="axes"):
        local_windows((2, 2)).index((4, 4, 4))


def test_cls_token_positions():
    shape = (2, 3)
    assert cls_position(shape, "start") == 0 and cls_position(shape, "middle") == 3
    assert cls_position(shape, "end") == 6 and cls_position(shape, -1) == 6 and cls_position(shape, 2) == 2
    bi = with_cls_token("bidirectional", "middle")
    assert bi.index(shape).tolist() == [list(range(7)), list(range(6, -1, -1))]   # Vim: flip the sequence
    cross = with_cls_token("cross", "start").index(shape)
    assert cross[1].tolist() == [0, 1, 4, 2, 5, 3, 6]          # class token first, then column-major
    assert with_cls_token("col", "end").index(shape).tolist() == [0, 3, 1, 4, 2, 5, 6]
    col_mid = with_cls_token("col", 3).index(shape).tolist()
    assert col_mid[3] == 3 and col_mid == [0, 4, 1, 3, 5, 2, 6]
    odd = with_cls_token("bidirectional", "middle").index((1, 5))   # L = 5, class token at 2
    assert odd[0, 2] == 2 and odd[1, 3] == 2                        # reversed: visited at step L - p
    assert_bijection(with_cls_token("hilbert", "middle").index((5, 7)), 36)
    assert with_cls_token("cross", "middle") is with_cls_token("cross", "middle")      # cached
    assert with_cls_token(["raster", "col"], "start").index((2, 2)).tolist() == [[0, 1, 2, 3, 4], [0, 1, 3, 2, 4]]
    with pytest.raises(ValueError, match="outside"):
        with_cls_token("raster", 9).index(shape)
    with pytest.raises(ValueError, match="position"):
        with_cls_token("raster", "centre")
    with pytest.raises(ValueError, match=r"\(2, 3\).*7 tokens.*class token.*got length 6"):
        bi.index(shape, length=6)


def test_user_defined_order():
    def evens_then_odds(shape):
        L = math.prod(shape)
        return list(range(0, L, 2)) + list(range(1, L, 2))

    order = ScanOrder.from_fn("evens_then_odds", evens_then_odds)
    assert order.index((3, 5)).tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13]
    assert_inverse(order, (3, 5))
    assert order.reversed().index((3, 5)).tolist() == order.index((3, 5)).flip(0).tolist()
    assert order.reversed().reversed() is order
    register_order("test_evens_then_odds", order)
    assert get_order("test_evens_then_odds") is order and "test_evens_then_odds" in list_orders()
    with pytest.raises(ValueError, match="already registered"):
        register_order("test_evens_then_odds", ScanOrder.from_fn("x", evens_then_odds))
    s = ScanOrderSet([order, get_order("raster")])
    assert s.index((2, 3)).shape == (2, 6)
    x = torch.randn(2, 15, 4)
    assert torch.equal(order.scatter(order.gather(x, (3, 5)), (3, 5)), x)


@pytest.mark.parametrize("fn, match", [
    (lambda s: [0, 0, 1, 2, 3, 4], r"'bad' on grid \(2, 3\): not a permutation.*missing \[5\].*repeated \[0\]"),
    (lambda s: [0, 1, 2], r"'bad' on grid \(2, 3\).*length 6"),
    (lambda s: [0, 1, 2, 3, 4, 9], r"'bad' on grid \(2, 3\).*out of range \[9\]"),
    (lambda s: [0.0, 1, 2, 3, 4, 5], r"'bad' on grid \(2, 3\).*integer"),
])
def test_not_a_permutation(fn, match):
    with pytest.raises(ValueError, match=match):
        ScanOrder.from_fn("bad", fn).index((2, 3))


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown scan order 'crosss'.*cross"):
        get_order("crosss")
    with pytest.raises(ValueError, match=r"grid \(7, 13\) with order 'cross' needs a sequence of 91 tokens.*90"):
        get_order("cross").index((7, 13), length=90)
    with pytest.raises(ValueError, match=r"'raster'.*grid \(0, 3\)"):
        get_order("raster").index((0, 3))
    with pytest.raises(ValueError, match=r"'hilbert' on grid \(2, 2, 2, 2\).*1, 2 or 3 axes"):
        get_order("hilbert").index((2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"'axes10' on grid \(2, 2, 2\).*not a permutation of the 3 grid axes"):
        axis_order((1, 0)).index((2, 2, 2))
    with pytest.raises(ValueError, match="different sequence lengths"):
        ScanOrderSet([get_order("raster"), with_cls_token("raster")]).index((2, 3))


def test_cache_and_devices():
    order = get_order("cross")
    a = order.index((7, 13))
    assert order.index((7, 13)) is a and order.inverse((7, 13)) is order.inverse((7, 13))
    assert get_order("hilbert").index((9, 5)) is get_order("hilbert").index((9, 5))
    meta = order.index((7, 13), device="meta")
    assert meta.device.type == "meta" and meta.shape == (4, 91)
    assert get_order("local4") is get_order("local4")


def test_alternating_schedule():
    sched = AlternatingSchedule(3)
    assert len(sched) == 6
    shape = (2, 3, 4)
    fastest, directions = [], []
    for layer in range(6):
        idx = sched(layer).index(shape)
        assert_bijection(idx, 24)
        c = torch.stack(torch.unravel_index(idx[:2], shape), 1)
        fastest.append(int((c[1] - c[0]).abs().argmax()))
        directions.append(int((c[1] - c[0]).sum()))
    assert fastest == [2, 2, 1, 1, 0, 0]                  # W+, W-, H+, H-, D+, D-
    assert directions == [1, -1, 1, -1, 1, -1]
    assert sched.spec(8) == sched.spec(2) == ((0, 2, 1), False)
    two = AlternatingSchedule(2)
    g = torch.arange(12).view(3, 4)
    assert torch.equal(two(0).index((3, 4)), g.flatten()) and torch.equal(two(3).index((3, 4)), g.t().flatten().flip(0))
    cyc = CyclicSchedule(["snake", "snake_col"])
    assert cyc(0) is get_order("snake") and cyc(3) is get_order("snake_col")


def test_cache_built_under_inference_mode_is_usable_for_autograd():
    from vscan.scans import ScanOrder
    order = ScanOrder.from_fn("test_infmode_order", lambda shape: torch.arange(int(torch.tensor(shape).prod())).flip(0))
    with torch.inference_mode():
        order.index((3, 4))
    idx = order.index((3, 4))
    assert not idx.is_inference()
    x = torch.randn(2, 12, 5, requires_grad=True)
    x.index_select(1, idx).sum().backward()
    assert x.grad is not None
