"""Orders by name: ``get_order('cross')``, ``list_orders()``, ``register_order(name, ...)``.

Names map to a :class:`ScanOrder` or a :class:`ScanOrderSet`. Parametrised names are
parsed: ``local<w>`` / ``local<w>_rev`` (LocalMamba windows of w x w).
"""
from __future__ import annotations

import re
from typing import Callable

from .base import ScanOrder, ScanOrderSet

_ORDERS: dict[str, ScanOrder | ScanOrderSet] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], ScanOrder | ScanOrderSet], str]] = []


def register_order(name: str, order, overwrite: bool = False):
    """Register a ScanOrder, a ScanOrderSet, or a function ``shape -> permutation`` under ``name``."""
    if callable(order) and not isinstance(order, (ScanOrder, ScanOrderSet)):
        order = ScanOrder.from_fn(name, order)
    if not isinstance(order, (ScanOrder, ScanOrderSet)):
        raise TypeError(f"register_order({name!r}): expected a ScanOrder, ScanOrderSet or function, got {order!r}")
    if name in _ORDERS and not overwrite and _ORDERS[name] is not order:
        raise ValueError(f"scan order {name!r} is already registered; pass overwrite=True to replace it")
    _ORDERS[name] = order
    return order


def register_pattern(pattern: str, factory, example: str):
    """Register a family of names, e.g. ``r'local(\\d+)(_rev)?'`` -> factory(match)."""
    _PATTERNS.append((re.compile(pattern + r"\Z"), factory, example))


def list_orders() -> list[str]:
    """Registered names (orders and sets), plus one example per parametrised family."""
    return sorted(_ORDERS) + [ex for _, _, ex in _PATTERNS]


def get_order(name: str) -> ScanOrder | ScanOrderSet:
    if isinstance(name, (ScanOrder, ScanOrderSet)):
        return name
    if not isinstance(name, str):
        raise TypeError(f"scan order: expected a name, ScanOrder or ScanOrderSet, got {name!r}")
    if name in _ORDERS:
        return _ORDERS[name]
    for pattern, factory, _ in _PATTERNS:
        m = pattern.match(str(name))
        if m:
            return factory(m)
    raise ValueError(f"unknown scan order {name!r}; known orders are {list_orders()}")


def as_order_set(spec) -> ScanOrderSet:
    """A name, ScanOrder, ScanOrderSet, or a list of those -> one ScanOrderSet (sets are flattened)."""
    if isinstance(spec, ScanOrderSet):
        return spec
    if isinstance(spec, (str, ScanOrder)):
        got = get_order(spec)
        return got if isinstance(got, ScanOrderSet) else ScanOrderSet([got])
    try:
        items = list(spec)
    except TypeError:
        raise TypeError(f"orders: expected a name, ScanOrder, ScanOrderSet or a list of them, got {spec!r}") from None
    if not items:
        raise ValueError("orders: expected at least one scan order, got an empty list")
    orders = []
    for item in items:
        orders.extend(as_order_set(item).orders)
    return ScanOrderSet(orders)
