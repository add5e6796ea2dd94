"""``BidirectionalMamba``: Vision Mamba's bimamba v2 mixer, on top of ``multi_scan``.

Vim: one shared in_proj gives x and z; a forward and a backward branch, each with its own
causal conv1d, x_proj, dt_proj, A_log and D, scan x (the backward one on the flipped
sequence); both outputs are gated by silu(z), averaged (``if_divide_out=True``) and go
through one shared out_proj.

Design here: the directions are rows of a ScanOrderSet's index map (forward = arange,
backward = its flip by default; any orders work, with or without a class token). The
causal conv must run in each direction's own visiting order, so it runs per direction on
the gathered sequence (cheap: d_conv taps) and is scattered back; from there on everything
is in grid order: u is (b, L, K, d_inner), x_proj / dt_proj run once for all K directions,
and ``multi_scan`` merges with 'mean' (or 'sum' with ``divide_out=False``). Gating after the
merge equals Vim's per-branch gating, since the gate is per token and the merge is linear.
Parameters are stacked over the K directions (``conv_weight`` (K, d_inner, d_conv), and
``ssm.*`` as in :class:`MultiDirSSM`), not Vim's ``*_b`` names.
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
                 dt_scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
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

    def forward(self, x: torch.Tensor, grid_shape=None) -> torch.Tensor:
        b, L, _ = x.shape
        if grid_shape is None:
            grid_shape = (L - self.orders[0].extra_tokens,)
        index = self.orders.index(grid_shape, x.device, length=L)
        inverse = self.orders.inverse(grid_shape, x.device)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        u = torch.stack([
            causal_conv1d(xs.index_select(1, index[k]), self.conv_weight[k],
                          None if self.conv_bias is None else self.conv_bias[k], activation="silu")
            .index_select(1, inverse[k])
            for k in range(len(self.orders))], dim=2)                        # (b, L, K, d_inner), grid order
        y = self.ssm(u, index, "mean" if self.divide_out else "sum")
        return self.out_proj(y * F.silu(z))
