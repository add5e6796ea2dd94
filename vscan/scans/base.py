"""``ScanOrder``: a grid shape -> token visiting order, validated, inverted and cached.

Convention: for a grid of shape ``shape`` flattened row-major (last axis fastest), an order
gives ``index`` of length L = prod(shape): step t of the scan visits flat grid cell
``index[t]``. So ``seq = x[:, index]`` puts token-major activations in visiting order and
``x = seq[:, inverse]`` puts them back, with ``inverse[index[t]] = t``.

A new order is just a function ``shape -> permutation`` (:meth:`ScanOrder.from_fn`);
validation (it must be a permutation of 0..L-1), the inverse, device copies and caching
follow from this class. Several orders scanned together (one scan per direction) form a
:class:`ScanOrderSet`, whose ``index`` is a (K, L) tensor.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

Shape = tuple[int, ...]


def as_shape(shape, order_name: str = "?") -> Shape:
    """Normalise a grid shape (int, tuple, list, torch.Size) to a tuple of positive ints."""
    if isinstance(shape, int):
        shape = (shape,)
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"order {order_name!r}: a grid shape must be a tuple of ints, got {shape!r}") from None
    if not out or any(s < 1 for s in out):
        raise ValueError(f"order {order_name!r}: grid {out} must have at least one axis and sizes >= 1")
    return out


def _device_key(device) -> str:
    return str(torch.device(device)) if device is not None else "cpu"


class ScanOrder:
    """A token visiting order over grids of any shape the function accepts.

    ``fn(shape) -> permutation`` (anything ``torch.as_tensor`` turns into a 1-D integer
    tensor) of length :meth:`length` (``prod(shape)``, plus one for orders carrying a class
    token). Results are validated once and cached per (shape, device).
    """

    def __init__(self, name: str, fn: Callable[[Shape], Sequence[int]], extra_tokens: int = 0):
        self.name = name
        self._fn = fn
        self.extra_tokens = extra_tokens
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_fn(cls, name: str, fn: Callable[[Shape], Sequence[int]]) -> "ScanOrder":
        """A user-defined order: ``fn`` maps a grid shape (tuple) to a permutation of 0..L-1."""
        return cls(name, fn)

    def __repr__(self) -> str:
        return f"ScanOrder({self.name!r})"

    def length(self, shape) -> int:
        return math.prod(as_shape(shape, self.name)) + self.extra_tokens

    def _build(self, shape: Shape) -> torch.Tensor:
        L = self.length(shape)
        try:
            perm = torch.as_tensor(self._fn(shape))
        except ValueError as e:             # e.g. a window larger than the grid: name order and grid
            raise ValueError(f"order {self.name!r} on grid {shape}: {e}") from e
        if perm.dim() != 1 or perm.numel() != L or perm.is_floating_point() or perm.is_complex():
            raise ValueError(f"order {self.name!r} on grid {shape}: expected a 1-D integer permutation of "
                             f"length {L}, got {tuple(perm.shape)} of dtype {perm.dtype}")
        perm = perm.to(torch.long).cpu()
        seen = torch.zeros(L, dtype=torch.long)
        valid = (perm >= 0) & (perm < L)
        seen.index_add_(0, perm[valid], torch.ones_like(perm[valid]))
        if not bool(valid.all()) or not bool((seen == 1).all()):
            missing = (seen == 0).nonzero().flatten()[:5].tolist()
            twice = (seen > 1).nonzero().flatten()[:5].tolist()
            out_of_range = perm[~valid][:5].tolist()
            raise ValueError(f"order {self.name!r} on grid {shape}: not a permutation of 0..{L - 1} "
                             f"(missing {missing}, repeated {twice}, out of range {out_of_range})")
        return perm

    def _get(self, shape, device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = as_shape(shape, self.name)
        key = (shape, _device_key(device))
        hit = self._cache.get(key)
        if hit is None:
            with torch.inference_mode(False):  # cached maps outlive the caller's inference_mode
                hit = self._build_cached(shape, key)
        return hit

    def _build_cached(self, shape, key):
        if True:
            cpu_key = (shape, "cpu")
            if cpu_key not in self._cache:
                perm = self._build(shape)
                inv = torch.empty_like(perm)
                inv[perm] = torch.arange(perm.numel())
                self._cache[cpu_key] = (perm, inv)
            perm, inv = self._cache[cpu_key]
            device = key[1]
            hit = self._cache[key] = (perm.to(device), inv.to(device)) if key != cpu_key else (perm, inv)
        return hit

    def index(self, shape, device=None, length: int | None = None) -> torch.Tensor:
        """LongTensor (L,): step t visits flat grid cell ``index[t]``. With ``length`` given,
        raise a ValueError naming the grid and order unless the sequence length matches."""
        if length is not None:
            check_length(self, shape, length)
        return self._get(shape, device)[0]

    def inverse(self, shape, device=None) -> torch.Tensor:
        """LongTensor (L,): flat grid cell i is visited at step ``inverse[i]``."""
        return self._get(shape, device)[1]

    def gather(self, x: torch.Tensor, shape, dim: int = 1) -> torch.Tensor:
        """Grid order -> visiting order along ``dim``."""
        return x.index_select(dim, self.index(shape, x.device, length=x.shape[dim]))

    def scatter(self, x: torch.Tensor, shape, dim: int = 1) -> torch.Tensor:
        """Visiting order -> grid order along ``dim`` (inverse of :meth:`gather`)."""
        check_length(self, shape, x.shape[dim])
        return x.index_select(dim, self.inverse(shape, x.device))

    def reversed(self) -> "ScanOrder":
        """The same path walked backwards (one shared instance, so its cache is shared too)."""
        if getattr(self, "_reversed", None) is None:
            self._reversed = ReversedOrder(self)
        return self._reversed


class ReversedOrder(ScanOrder):
    """``base`` walked backwards; keeps a handle on ``base`` (class tokens need it)."""

    def __init__(self, base: ScanOrder):
        self.base = base
        super().__init__(_reversed_name(base.name), lambda s: base.index(s).flip(0), base.extra_tokens)

    def reversed(self) -> ScanOrder:
        return self.base


def _reversed_name(name: str) -> str:
    return name[:-4] if name.endswith("_rev") else name + "_rev"


class ScanOrderSet:
    """K orders scanned together over one grid (one scan per direction)."""

    def __init__(self, orders: Iterable[ScanOrder], name: str | None = None):
        self.orders = list(orders)
        if not self.orders or not all(isinstance(o, ScanOrder) for o in self.orders):
            raise ValueError(f"ScanOrderSet: expected a non-empty list of ScanOrder, got {self.orders!r}")
        self.name = name or "+".join(o.name for o in self.orders)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.orders)

    def __iter__(self):
        return iter(self.orders)

    def __getitem__(self, k) -> ScanOrder:
        return self.orders[k]

    def __repr__(self) -> str:
        return f"ScanOrderSet({self.name!r}, {[o.name for o in self.orders]})"

    def length(self, shape) -> int:
        lengths = {o.length(shape) for o in self.orders}
        if len(lengths) != 1:
            raise ValueError(f"orders {self.name!r} on grid {as_shape(shape, self.name)}: members give different "
                             f"sequence lengths {sorted(lengths)} (mixing class-token and plain orders?)")
        return lengths.pop()

    def _get(self, shape, device):
        key = (as_shape(shape, self.name), _device_key(device))
        hit = self._cache.get(key)
        if hit is None:
            self.length(shape)
            with torch.inference_mode(False):  # cached maps outlive the caller's inference_mode
                hit = self._cache[key] = (torch.stack([o.index(shape, device) for o in self.orders]),
                                          torch.stack([o.inverse(shape, device) for o in self.orders]))
        return hit

    def index(self, shape, device=None, length: int | None = None) -> torch.Tensor:
        """LongTensor (K, L): row k is the visiting order of direction k."""
        if length is not None:
            check_length(self, shape, length)
        return self._get(shape, device)[0]

    def inverse(self, shape, device=None) -> torch.Tensor:
        """LongTensor (K, L): row k is the inverse of ``index(shape)[k]``."""
        return self._get(shape, device)[1]


def check_length(order, shape, length: int) -> None:
    """ValueError naming the grid and order when the grid does not fit a sequence of ``length``."""
    shape = as_shape(shape, order.name)
    expected = order.length(shape)
    if int(length) != expected:
        cells = math.prod(shape)
        what = f"{cells} grid cells" + (" + a class token" if expected > cells else "")
        raise ValueError(f"grid {shape} with order {order.name!r} needs a sequence of {expected} tokens "
                         f"({what}), got length {length}")
