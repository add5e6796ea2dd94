"""Per-layer scan schedules: layer index -> the order that layer scans in.

``AlternatingSchedule`` is Mamba-ND's layer-level alternation: layer i makes grid axis
``ndim - 1 - (i // 2) % ndim`` the fastest one (the last axis is swapped with it, the others
keep their order) and walks it forwards on even layers, backwards on odd ones, so a cycle of
2 * ndim layers scans W+, W-, H+, H-, D+, D- (for (D, H, W)). ``CyclicSchedule`` cycles
through any list of orders (ZigMa's one zig-zag path per layer).
"""
from __future__ import annotations

from .base import ScanOrder
from .orders import axis_order
from .registry import get_order


class AlternatingSchedule:
    def __init__(self, ndim: int, reverse_odd: bool = True):
        if int(ndim) < 1:
            raise ValueError(f"AlternatingSchedule: ndim must be >= 1, got {ndim}")
        self.ndim, self.reverse_odd = int(ndim), reverse_odd

    def __len__(self) -> int:
        """Layers in one cycle."""
        return 2 * self.ndim if self.reverse_odd else self.ndim

    def spec(self, layer: int) -> tuple[tuple[int, ...], bool]:
        """(axis order slowest-first, reversed?) of ``layer``."""
        step = layer // 2 if self.reverse_odd else layer
        fast = self.ndim - 1 - step % self.ndim
        axes = list(range(self.ndim))
        axes[fast], axes[-1] = axes[-1], axes[fast]
        return tuple(axes), bool(self.reverse_odd and layer % 2 == 1)

    def __call__(self, layer: int) -> ScanOrder:
        axes, rev = self.spec(layer)
        order = axis_order(axes)
        return order.reversed() if rev else order


class CyclicSchedule:
    def __init__(self, orders):
        self.orders = [get_order(o) for o in orders]
        if not self.orders:
            raise ValueError("CyclicSchedule: expected at least one order")

    def __len__(self) -> int:
        return len(self.orders)

    def __call__(self, layer: int):
        return self.orders[layer % len(self.orders)]
