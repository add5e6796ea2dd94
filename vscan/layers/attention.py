"""Causal self-attention with grouped-query heads, an optional sliding window, attention
sinks, rotary embeddings and a KV cache (full, windowed, or shared with another layer).

Masking is defined on absolute token positions, so one rule serves training, prefill,
chunked prefill and single-token decode: key position ``kp`` is visible to query position
``qp`` iff ``kp <= qp`` and (``qp - kp < window`` or ``kp < sink``). ``window=W`` therefore
means "the W most recent tokens, the current one included"; ``sink`` leading positions
(Hymba's meta tokens) stay visible to every query.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_mixer


@dataclass
class KVView:
    """The keys/values one attention call attends over, with their absolute positions.
    A layer that shares KV with an earlier layer attends over exactly this view."""
    k: torch.Tensor        # (batch, kv_heads, S, head_dim)
    v: torch.Tensor
    k_pos: torch.Tensor    # (S,) long; -1 marks an empty slot
    q_pos: torch.Tensor    # (T,) long, positions of the current queries


class KVCache:
    """Preallocated KV cache of one attention layer, for sequences of at most ``max_len`` tokens.

    Without a window, slot = position (capacity ``max_len``). With ``window=W`` the capacity is
    ``min(max_len, sink + W)``: the first ``sink`` positions keep their slots and later ones
    live in a ring of W slots, so memory stays constant however long the sequence grows.
    """

    def __init__(self, batch: int, num_kv_heads: int, head_dim: int, max_len: int, window: int | None = None,
                 sink: int = 0, device=None, dtype=None):
        if max_len < 1:
            raise ValueError(f"max_len: expected >= 1, got {max_len}")
        self.max_len, self.window, self.sink = max_len, window, sink
        cap = max_len if window is None else min(max_len, sink + window)
        self.capacity = cap
        self.k = torch.zeros(batch, num_kv_heads, cap, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((cap,), -1, dtype=torch.long, device=device)
        self.length = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.pos))

    def _slots(self, pos: torch.Tensor) -> torch.Tensor:
        s, ring = self.sink, self.capacity - self.sink
        return torch.where(pos < s, pos, s + (pos - s) % max(ring, 1))

    def fill_(self, length: int) -> "KVCache":
        """Mark ``length`` tokens as consumed (contents left as they are): for decode benchmarks."""
        if length > self.max_len:
            raise ValueError(f"length: {length} exceeds this cache's max_len={self.max_len}")
        self.length = 0
        self.pos.fill_(-1)
        if length:
            pos = torch.arange(length, device=self.pos.device)
            keep = (pos < self.sink) | (pos >= length - (self.capacity - self.sink))
            self.pos[self._slots(pos[keep])] = pos[keep]
        self.length = length
        return self

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KVView:
        """Store T new keys/values (batch, kv_heads, T, head_dim) and return what they attend over."""
        T = k.shape[2]
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache: {end} tokens exceed the cache's max_len={self.max_len}; "
                             "allocate the cache with a larger max_len")
        q_pos = torch.arange(start, end, device=self.pos.device)
        if end <= self.capacity:                       # not wrapped yet: slot = position
            self.k[:, :, start:end] = k
            self.v[:, :, start:end] = v
            self.pos[start:end] = q_pos
            self.length = end
            return KVView(self.k[:, :, :end], self.v[:, :, :end], self.pos[:end], q_pos)
        if T == 1:                                     # ring decode: every stored key is in the window
            slot = self._slots(q_pos)
            self.k.index_copy_(2, slot, k)
            self.v.index_copy_(2, slot, v)
            self.pos.index_copy_(0, slot, q_pos)
            self.length = end
            return KVView(self.k, self.v, self.pos, q_pos)
        # chunk into a wrapped ring: attend over (old contents + new), then keep the survivors
        n_old = min(start, self.capacity)
        view = KVView(torch.cat([self.k[:, :, :n_old], k], 2), torch.cat([self.v[:, :, :n_old], v], 2),
                      torch.cat([self.pos[:n_old], q_pos]), q_pos)
        keep = (q_pos < self.sink) | (q_pos >= end - (self.capacity - self.sink))
        slot = self._slots(q_pos[keep])
        self.k.index_copy_(2, slot, k[:, :, keep])
        self.v.index_copy_(2, slot, v[:, :, keep])
        self.pos.index_copy_(0, slot, q_pos[keep])
        self.length = end
        return view


def rotary(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) of x (batch, heads, T, head_dim) at positions pos (T,)."""
    half = x.shape[-1] // 2
    inv = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., 2 * half:]], dim=-1)
    return out.to(x.dtype)


def attention_mask(q_pos, k_pos, window: int | None, sink: int, none_if_full: bool = True):
    """Boolean (T, S) visibility from positions (see the module docstring). With ``none_if_full``
    None when all is visible, which costs a host sync to find out."""
    qp, kp = q_pos[:, None], k_pos[None, :]
    allowed = (kp >= 0) & (kp <= qp)
    if window is not None:
        allowed &= ((qp - kp) < window) | (kp < sink)
    return None if none_if_full and bool(allowed.all()) else allowed


@register_mixer("causal_attention")
class CausalSelfAttention(nn.Module):
    """Grouped-query causal self-attention through ``F.scaled_dot_product_attention``.

    Args:
        d_model: input width. num_heads / num_kv_heads: query heads and key/value heads
            (num_heads must be a multiple of num_kv_heads; default: equal).
        head_dim: per-head width (default d_model // num_heads).
        window: sliding-window size in tokens (None: full causal attention). sink: leading
            positions always visible (Hymba's meta tokens).
        rope, rope_theta: rotary position embedding on q and k (off for Jamba: no positions).
        share_kv: this layer has no k/v projections and attends over the KV of an earlier
            layer, passed as ``shared_kv`` (cross-layer KV sharing).
        out_proj: with False, return the concatenated heads (num_heads * head_dim) unprojected.
    """

    def __init__(self, d_model: int, num_heads: int = 8, num_kv_heads: int | None = None,
                 head_dim: int | None = None, window: int | None = None, sink: int = 0, rope: bool = False,
                 rope_theta: float = 10000.0, bias: bool = False, dropout: float = 0.0, share_kv: bool = False,
                 out_proj: bool = True, device=None, dtype=None):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads: num_heads={num_heads} must be a positive multiple of "
                             f"num_kv_heads={num_kv_heads}")
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(f"num_heads: d_model={d_model} is not divisible by num_heads={num_heads}; "
                                 "pass head_dim explicitly")
            head_dim = d_model // num_heads
        if window is not None and window < 1:
            raise ValueError(f"window: expected None or >= 1, got {window}")
        if sink < 0:
            raise ValueError(f"sink: expected >= 0, got {sink}")
        dd = dict(device=device, dtype=dtype)
        self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = d_model, num_heads, num_kv_heads, head_dim
        self.window, self.sink, self.rope, self.rope_theta = window, sink, rope, rope_theta
        self.dropout, self.share_kv = dropout, share_kv
        self.q_proj = nn.Linear(d_model, num_heads * head_dim, bias=bias, **dd)
        if not share_kv:
            self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias, **dd)
            self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias, **dd)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=bias, **dd) if out_proj else None
        self.out_dim = d_model if out_proj else num_heads * head_dim

    def allocate_cache(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache:
        w = self.q_proj.weight
        return KVCache(batch, self.num_kv_heads, self.head_dim, max_len, self.window, self.sink,
                       device=device or w.device, dtype=dtype or w.dtype)

    def _mask(self, view: KVView):
        if view.q_pos.shape[0] == 1:   # one query attends over a cache view: all of it is in range
            return None, False
        if view.k_pos is view.q_pos:   # no cache: keys are the queries at 0..T-1; no host sync (CUDA graphs)
            if self.window is None or self.window >= view.q_pos.shape[0]:
                return None, True      # plain causal: the window covers the whole sequence
            return attention_mask(view.q_pos, view.k_pos, self.window, self.sink, none_if_full=False), False
        if (self.window is None and view.k.shape[2] == view.q_pos.shape[0] and view.q_pos.shape[0] > 1
                and bool((view.k_pos == view.q_pos).all())):
            return None, True
        return attention_mask(view.q_pos, view.k_pos, self.window, self.sink), False

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, shared_kv: KVView | None = None,
                return_kv: bool = False):
        """x (batch, T, d_model) -> (batch, T, out_dim); with ``return_kv`` also the KVView used.
        ``cache`` is advanced by T tokens (owners only; a sharing layer reads ``shared_kv``)."""
        b, T, _ = x.shape
        q = self.q_proj(x).view(b, T, self.num_heads, self.head_dim).transpose(1, 2)
        if self.share_kv:
            if shared_kv is None:
                raise ValueError("shared_kv: this layer shares KV with an earlier layer (share_kv=True) and "
                                 "needs that layer's KVView")
            view = shared_kv
            if view.q_pos.shape[0] != T:
                raise ValueError(f"shared_kv: built for {view.q_pos.shape[0]} queries, got {T}")
        else:
            k = self.k_proj(x).view(b, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
            start = cache.length if cache is not None else 0
            q_pos = torch.arange(start, start + T, device=x.device)
            if self.rope:
                k = rotary(k, q_pos, self.rope_theta)
            view = cache.append(k, v) if cache is not None else KVView(k, v, q_pos, q_pos)
        if self.rope:
            q = rotary(q, view.q_pos, self.rope_theta)
        mask, causal = self._mask(view)
        o = F.scaled_dot_product_attention(
            q, view.k.to(q.dtype), view.v.to(q.dtype), attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=view.k.shape[1] != self.num_heads)
        o = o.transpose(1, 2).reshape(b, T, self.num_heads * self.head_dim)
        if self.o_proj is not None:
            o = self.o_proj(o)
        return (o, view) if return_kv else o

    def extra_repr(self):
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"window={self.window}, sink={self.sink}, rope={self.rope}, share_kv={self.share_kv}")
