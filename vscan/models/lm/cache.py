"""The hybrid generation cache: one state object per layer.

* recurrent layer: the mixer's own constant-size state -- :class:`~vscan.layers.mamba.MambaState`
  (conv + SSM state), :class:`~vscan.layers.liquid.LiquidScanState` (conv + scan state),
  :class:`~vscan.layers.liquid.CfCState` (RNN hidden state); each reports ``nbytes()``.
* attention layer: :class:`~vscan.layers.attention.KVCache` (full, or a ring for sliding-window
  layers), or ``None`` for a layer that reads the KV of an earlier layer.
* hybrid-head layer: :class:`~vscan.layers.hybrid_head.HybridHeadState` (both).
"""
from __future__ import annotations

from vscan.layers.attention import KVCache
from vscan.layers.hybrid_head import HybridHeadState
from vscan.layers.liquid import CfCState, LiquidScanState
from vscan.layers.mamba import MambaState


class HybridCache:
    """Per-layer states of one batch of sequences, and how many tokens they have consumed."""

    def __init__(self, states: list, batch: int, max_len: int | None):
        self.states = list(states)
        self.batch = batch
        self.max_len = max_len
        self.seqlen = 0

    def __len__(self):
        return len(self.states)

    def kv_caches(self) -> list[KVCache]:
        out = []
        for s in self.states:
            kv = s.kv if isinstance(s, HybridHeadState) else s
            if isinstance(kv, KVCache):
                out.append(kv)
        return out

    def layer_nbytes(self) -> list[int]:
        """Bytes held by each layer's own state (0 for a layer that reads a shared KV)."""
        return [s.nbytes() if s is not None else 0 for s in self.states]

    def nbytes(self) -> int:
        """Total bytes of all cache tensors; a shared KV cache is counted once."""
        return sum(self.layer_nbytes())

    def breakdown(self) -> dict:
        """Bytes by kind: {'kv': KV caches, 'ssm': every other state (Mamba / liquid / CfC
        recurrent states and the SSM half of hybrid-head layers)}."""
        kv = sum(c.nbytes() for c in self.kv_caches())
        return {"kv": kv, "ssm": self.nbytes() - kv}

    def fill_(self, length: int) -> "HybridCache":
        """Pretend ``length`` tokens were consumed (KV contents and SSM states left as they are).
        Decode cost depends on the cache's occupancy, not its contents: benchmarks use this to
        skip a long prefill."""
        for c in self.kv_caches():
            c.fill_(length)
        self.seqlen = length
        return self

    def __repr__(self):
        kinds = [type(s).__name__ if s is not None else "shared" for s in self.states]
        return f"HybridCache(batch={self.batch}, seqlen={self.seqlen}, layers={kinds}, nbytes={self.nbytes()})"


__all__ = ["HybridCache", "KVCache", "MambaState", "HybridHeadState", "LiquidScanState", "CfCState"]
