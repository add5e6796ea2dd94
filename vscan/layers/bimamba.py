"""``BidirectionalMamba``: Vision Mamba's bimamba v2 mixer, on top of ``multi_scan``.

Vim: one shared in_proj gives x and z; a forward and a backward branch, each with its own
causal conv1d, x_proj, dt_proj, A_log and D, scan x (the backward one on the flipped
sequence); both outputs are gated by silu(z), averaged (``if_divide_out=True``) and go
through one shared out_proj.

Design here: the directions are rows of a ScanOrderSet's index map (forward = arange,
backward = its flip by default; any orders work, with or without a class token). The
causal conv must run in each direction's own visiting order: in grid order for a forward
order, as the equivalent anti-causal conv for a reversed one, and on the gathered sequence
(scattered back) for any other order (cheap: d_conv taps); from there on everything
is in grid order: u is (b, L, K, d_inner), x_proj / dt_proj run once for all K directions,
and ``multi_scan`` merges with 'mean' (or 'sum' with ``divide_out=False``). Gating after the
merge equals Vim's per-branch gating, since the gate is per token and the merge is linear.
Parameters are stacked over the K directions (``conv_weight`` (K, d_inner, d_conv), and
``ssm.*`` as in :class:`MultiDirSSM`), not Vim's ``*_b`` names.

Memory (inference peak, see tools/mem_profile.py): in_proj runs as its x and z halves, z
after the scan, so the scan runs next to u (b, L, K, d_inner), delta and its output only;
the conv writes each direction into one u buffer; gating is in place when no grad is kept;
and when no grad is kept a batch of more than ``infer_chunk_tokens`` tokens (default 16384;
None or 0: never) runs in balanced passes of about that many tokens (the samples are
independent, so the output is the same), which bounds u, delta and the scan output.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.ops import causal_conv1d
from vscan.scans import as_order_set

from .multidir import MultiDirSSM, _dt_rank
from .registry import register_mixer


@register_mixer("bimamba")
class BidirectionalMamba(nn.Module):
    """Bimamba v2 mixer on token-major (batch, L, d_model) input.

    ``forward(x, grid_shape=None)``: the tokens form a grid of ``grid_shape`` (default: the
    1-D sequence) scanned in ``orders`` (default 'bidirectional'); with class-token orders
    (``vscan.scans.with_cls_token``) L is prod(grid_shape) + 1.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2.0,
                 dt_rank="auto", orders="bidirectional", divide_out: bool = True, conv_bias: bool = True,
                 bias: bool = False, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, infer_chunk_tokens: int | None = 16384, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.infer_chunk_tokens = infer_chunk_tokens
        self.orders = as_order_set(orders)
        K = len(self.orders)
        self.d_model, self.d_conv, self.divide_out = d_model, d_conv, divide_out
        self.d_inner = d_inner = int(expand * d_model)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **dd)
        self.conv_weight = nn.Parameter(torch.empty(K, d_inner, d_conv, **dd))
        self.conv_bias = nn.Parameter(torch.empty(K, d_inner, **dd)) if conv_bias else None
        self.ssm = MultiDirSSM(d_inner, K, d_state, _dt_rank(dt_rank, d_model), dt_min, dt_max,
                               dt_init_floor, dt_scale, **dd)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **dd)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        bound = 1 / math.sqrt(self.d_conv)          # nn.Conv1d's default for a depthwise conv
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)

    # The mixer's only use of its input is in_proj (two linears): under autocast, feeding it the
    # input already cast to the autocast dtype gives the same result (VimBlock uses this to hold
    # a bf16 rather than a float32 normalised copy of the residual stream).
    input_autocast_safe = True

    def forward(self, x: torch.Tensor, grid_shape=None) -> torch.Tensor:
        b, L, _ = x.shape
        if grid_shape is None:
            grid_shape = (L - self.orders[0].extra_tokens,)
        grid_shape = tuple(grid_shape)
        index = self.orders.index(grid_shape, x.device, length=L)
        step = self._batch_step(x)
        if step >= b:
            return self._mix(x, grid_shape, index)
        out = None
        for i in range(0, b, step):          # samples are independent: same result, smaller peak
            yi = self._mix(x[i:i + step], grid_shape, index)
            if out is None:
                out = yi.new_empty((b, *yi.shape[1:]))
            out[i:i + step] = yi
            del yi
        return out

    def _batch_step(self, x: torch.Tensor) -> int:
        """Samples per pass: the whole batch, except when no grad is kept and the batch holds
        more than ``infer_chunk_tokens`` tokens; then about that many tokens per pass (balanced
        passes), which bounds the inference working set (u, delta, the scan output)."""
        b, L = x.shape[:2]
        limit = self.infer_chunk_tokens
        if not limit or b * L <= limit or b == 1:
            return b
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return b
        n = math.ceil(b * L / limit)
        return math.ceil(b / n)

    def _mix(self, x: torch.Tensor, grid_shape, index) -> torch.Tensor:
        d, W, bias = self.d_inner, self.in_proj.weight, self.in_proj.bias
        # x and z halves of in_proj as two GEMMs: z is made after the scan, so neither it nor
        # the (b, L, 2*d_inner) product is alive while the scan runs
        xs = F.linear(x, W[:d], None if bias is None else bias[:d])
        u = self._conv(xs, grid_shape, index)                                # (b, L, K, d_inner), grid order
        del xs
        y = self.ssm(u, index, "mean" if self.divide_out else "sum")
        del u
        z = F.linear(x, W[d:], None if bias is None else bias[d:])
        no_grad = not (torch.is_grad_enabled() and (y.requires_grad or z.requires_grad))
        if no_grad and y.dtype == torch.promote_types(y.dtype, z.dtype):
            y = y.mul_(F.silu(z, inplace=True))                              # inference: no temporaries
        else:
            y = y * F.silu(z)
        del z
        return self.out_proj(y)

    def _order_kinds(self, grid_shape, L):
        """Per direction: 'forward' (index = arange), 'reverse' (its flip) or None (any other
        order), from the CPU index map; cached per (grid shape, L)."""
        cache = self.__dict__.setdefault("_kinds_cache", {})
        key = (grid_shape, L)
        if key not in cache:
            idx = self.orders.index(grid_shape, torch.device("cpu"), length=L)
            ar = torch.arange(L, dtype=idx.dtype)
            cache[key] = tuple("forward" if torch.equal(row, ar) else "reverse" if torch.equal(row, ar.flip(0))
                               else None for row in idx)
        return cache[key]

    def _conv(self, xs: torch.Tensor, grid_shape, index) -> torch.Tensor:
        """Each direction's causal conv (+ silu) in its own visiting order, in grid order:
        (b, L, d_inner) -> (b, L, K, d_inner), written direction by direction into one buffer.

        A forward order's conv is the causal conv in grid order; a reversed order's is the
        anti-causal conv in grid order, i.e. the causal conv with the taps reversed, on the
        input padded by d_conv-1 zeros at the end, shifted by d_conv-1 (no flipped copies);
        any other order gathers, convolves and scatters back."""
        b, L, d = xs.shape
        kinds = self._order_kinds(grid_shape, L)
        w = self.d_conv
        inverse = None
        u = xs.new_empty((b, L, len(kinds), d))
        padded = None
        for k, kind in enumerate(kinds):
            weight = self.conv_weight[k]
            cb = None if self.conv_bias is None else self.conv_bias[k]
            if kind == "forward":
                yk = causal_conv1d(xs, weight, cb, activation="silu")
            elif kind == "reverse":
                if padded is None:
                    padded = F.pad(xs, (0, 0, 0, w - 1))                    # (b, L + w - 1, d)
                yk = causal_conv1d(padded, weight.flip(-1), cb, activation="silu")[:, w - 1:]
            else:
                if inverse is None:
                    inverse = self.orders.inverse(grid_shape, xs.device)
                yk = causal_conv1d(xs.index_select(1, index[k]), weight, cb,
                                   activation="silu").index_select(1, inverse[k])
            u[:, :, k] = yk
            del yk
        return u
