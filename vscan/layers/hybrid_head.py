"""Hymba's hybrid-head mixer: attention heads and SSM (Mamba) heads read the same input in
parallel; each branch's output is RMS-normalised with its own learnable per-channel scale
(the RMSNorm weights play the role of Hymba's beta_1 / beta_2), the two are averaged and one
output projection maps back to d_model::

    y = out_proj( (norm_attn(attn(x)) + norm_ssm(ssm(x))) / 2 )

Both branches work at width ``d_inner = expand * d_model``; attention heads have
``head_dim = d_inner / num_heads`` as in Hymba.

At small scale (d_model 64-128, 2 layers, MQAR) the layer placement matters more than the
norm. With every layer's attention global, the Hymba-style model never learned recall: the
first layer's normalised attention branch adds, at unit size, an average over the whole prefix
to every position, which drowns the previous-token signal the next layer's keys need. A short
sliding window in the first layer (``window=2``; Hymba's SWA layers) turns that branch into a
previous-token mixer, and recall is learned with the norm kept (model_zoo/lm_results.md,
run 11). ``attn_norm=False`` replaces the attention branch's RMSNorm by a learnable
per-channel scale alone (no normalisation), the earlier, weaker fix: with two global layers it
let recall be learned in about half the runs at 16 key-value pairs and not at 64 (runs 9-10).
``attn_scale`` / ``ssm_scale`` set the initial value of the two branch scales (Hymba: 1 and 1);
``attn_scale=None`` with ``attn_norm=False`` passes the attention output on as it is (no scale
parameter).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import CausalSelfAttention, KVCache, KVView
from .mamba import MambaMixer, MambaState, RMSNorm
from .registry import register_mixer


class ChannelScale(nn.Module):
    """A learnable per-channel scale (an RMSNorm's weight without the normalisation)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x):
        return x * self.weight


@dataclass
class HybridHeadState:
    """Cache of one hybrid-head layer. ``kv`` is None for a layer that reads a shared KV."""
    kv: KVCache | None
    ssm: MambaState

    def nbytes(self) -> int:
        return (self.kv.nbytes() if self.kv is not None else 0) + self.ssm.nbytes()


@register_mixer("hybrid_head")
class HybridHeadMixer(nn.Module):
    """Parallel attention + SSM heads (Hymba, arXiv 2411.13676, Eq. 3) on (batch, T, d_model).

    Keywords: attention ones (num_heads, num_kv_heads, window, sink, rope, rope_theta,
    share_kv) are those of :class:`CausalSelfAttention`; SSM ones (d_state, d_conv, dt_rank,
    bcdt_norm, conv_bias) those of :class:`MambaMixer`; ``expand`` sets both branches' width;
    ``attn_norm``, ``attn_scale``, ``ssm_scale``: see the module docstring.
    """

    def __init__(self, d_model: int, num_heads: int = 4, num_kv_heads: int | None = None, expand: float = 2.0,
                 window: int | None = None, sink: int = 0, rope: bool = True, rope_theta: float = 10000.0,
                 share_kv: bool = False, d_state: int = 16, d_conv: int = 4, dt_rank: int | str = "auto",
                 bcdt_norm: bool = True, conv_bias: bool = True, bias: bool = False, norm_eps: float = 1e-6,
                 attn_norm: bool = True, attn_scale: float | None = 1.0, ssm_scale: float = 1.0,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        d_inner = int(expand * d_model)
        if d_inner % num_heads:
            raise ValueError(f"num_heads: expand * d_model = {d_inner} is not divisible by num_heads={num_heads}")
        self.d_model, self.d_inner = d_model, d_inner
        self.attn = CausalSelfAttention(d_model, num_heads, num_kv_heads, d_inner // num_heads, window=window,
                                        sink=sink, rope=rope, rope_theta=rope_theta, bias=bias, share_kv=share_kv,
                                        out_proj=False, **dd)
        self.ssm = MambaMixer(d_model, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                              conv_bias=conv_bias, bias=bias, bcdt_norm=bcdt_norm, **dd)
        # the SSM branch must stay at d_inner until after the normalised average
        self.ssm.out_proj = nn.Identity()
        if attn_scale is None and attn_norm:
            raise ValueError("attn_scale: None (no learnable scale) needs attn_norm=False")
        if attn_norm:
            self.attn_norm = RMSNorm(d_inner, eps=norm_eps, **dd)
        else:
            self.attn_norm = ChannelScale(d_inner, **dd) if attn_scale is not None else nn.Identity()
        self.ssm_norm = RMSNorm(d_inner, eps=norm_eps, **dd)
        with torch.no_grad():
            if attn_scale is not None:
                self.attn_norm.weight.fill_(attn_scale)
            self.ssm_norm.weight.fill_(ssm_scale)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **dd)

    @property
    def share_kv(self) -> bool:
        return self.attn.share_kv

    def allocate_state(self, batch: int, max_len: int, device=None, dtype=None) -> HybridHeadState:
        kv = None if self.share_kv else self.attn.allocate_cache(batch, max_len, device, dtype)
        return HybridHeadState(kv, self.ssm.allocate_state(batch, device, dtype))

    def forward(self, x: torch.Tensor, state: HybridHeadState | None = None, shared_kv: KVView | None = None,
                return_kv: bool = False):
        a, view = self.attn(x, cache=state.kv if state is not None else None, shared_kv=shared_kv,
                            return_kv=True)
        s = self.ssm(x, state.ssm if state is not None else None)
        y = self.out_proj(0.5 * (self.attn_norm(a) + self.ssm_norm(s)))
        return (y, view) if return_kv else y
