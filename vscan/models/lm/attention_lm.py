"""AttentionLM: the attention-only baseline (pre-norm GQA attention blocks with RoPE and an
optional SwiGLU MLP), built from the same parts as the hybrids so comparisons are like for like."""
from __future__ import annotations

import torch.nn as nn

from vscan.layers.attention import CausalSelfAttention
from vscan.layers.moe import SwiGLU

from .base import CausalLM, LMBlock, init_normal_


class AttentionLM(CausalLM):
    """Transformer decoder. ``d_ff=0`` drops the MLPs (Zoology's MQAR setting); ``window`` makes
    every layer sliding-window; ``max_seq_len=None`` means no model limit (RoPE)."""

    def __init__(self, vocab_size: int = 32000, d_model: int = 768, n_layers: int = 12, num_heads: int = 12,
                 num_kv_heads: int | None = None, d_ff: int = 2048, window: int | None = None, rope: bool = True,
                 rope_theta: float = 10000.0, dropout: float = 0.0, norm_eps: float = 1e-6,
                 tie_embeddings: bool = True, max_seq_len: int | None = None, init_std: float = 0.02):
        super().__init__()
        if vocab_size < 1 or d_model < 1 or n_layers < 1:
            raise ValueError(f"vocab_size, d_model, n_layers: expected >= 1, got {vocab_size}, {d_model}, {n_layers}")
        if d_ff < 0:
            raise ValueError(f"d_ff: expected >= 0 (0 = no MLP), got {d_ff}")
        self.vocab_size, self.d_model, self.max_seq_len = vocab_size, d_model, max_seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            LMBlock(CausalSelfAttention(d_model, num_heads, num_kv_heads, window=window, rope=rope,
                                        rope_theta=rope_theta, dropout=dropout),
                    d_model, SwiGLU(d_model, d_ff) if d_ff else None, norm_eps)
            for _ in range(n_layers))
        self._finish_init(d_model, norm_eps, tie_embeddings)
        init_normal_(self, init_std)
