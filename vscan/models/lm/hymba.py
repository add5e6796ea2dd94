"""Hymba (NVIDIA, arXiv 2411.13676): hybrid-head layers (attention and SSM heads in parallel),
learnable meta tokens prepended to every sequence, sliding-window attention except in the
first, middle and last layers, and KV caches shared by pairs of consecutive SWA layers."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from vscan.layers.hybrid_head import HybridHeadMixer
from vscan.layers.moe import ACTIVATIONS, SwiGLU

from .base import CausalLM, LMBlock, init_normal_
from .jamba import make_config


def default_global_layers(n_layers: int) -> list[int]:
    """First, middle and last layer (Hymba-1.5B, 32 layers: [0, 15, 31])."""
    return sorted({0, (n_layers - 1) // 2, n_layers - 1})


def default_kv_groups(n_layers: int, global_layers) -> list[list[int]]:
    """Consecutive runs of SWA layers cut into pairs; an odd run's first group takes three
    (Hymba-1.5B: [1,2], [3,4], ..., [13,14], [16,17,18], [19,20], ..., [29,30])."""
    g = set(global_layers)
    groups, run = [], []
    for i in list(range(n_layers)) + [None]:
        if i is not None and i not in g:
            run.append(i)
            continue
        if len(run) >= 2:
            head = 3 if len(run) % 2 else 2      # an odd run opens with a group of three
            groups.append(run[:head])
            groups += [run[j:j + 2] for j in range(head, len(run), 2)]
        run = []
    return groups


@dataclass
class HymbaConfig:
    """Hymba hyper-parameters (defaults: Hymba-1.5B as listed in text_ltc.md section 2.2).

    ``global_attn_idx=None``: first/middle/last layer; ``kv_reuse_group=None``: pairs of
    consecutive SWA layers (:func:`default_kv_groups`); ``[]`` turns sharing off.
    ``intermediate_size=0`` drops the MLPs. ``max_position_embeddings`` counts meta tokens.
    ``attn_output_norm`` / ``attn_output_scale`` / ``ssm_output_scale`` (not Hymba-1.5B fields):
    whether the attention branch is RMS-normalised before the average (Hymba: yes) and the
    initial branch scales (Hymba: 1, 1); see :mod:`vscan.layers.hybrid_head` for why a small
    model may want ``attn_output_norm=False``.
    """
    vocab_size: int = 32001
    hidden_size: int = 1600
    intermediate_size: int = 5504
    num_hidden_layers: int = 32
    num_attention_heads: int = 25
    num_key_value_heads: int = 5
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 8192
    num_memory_tokens: int = 128
    sliding_window: int | None = 1024
    global_attn_idx: list[int] | None = None
    kv_reuse_group: list[list[int]] | None = None
    rope: bool = True
    rope_theta: float = 10000.0
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_inner_layernorms: bool = True
    attn_output_norm: bool = True
    attn_output_scale: float | None = 1.0
    ssm_output_scale: float = 1.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2

    def __post_init__(self):
        def need(cond, field, msg):
            if not cond:
                raise ValueError(f"{field}: {msg}")
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "mamba_d_state", "mamba_d_conv", "max_position_embeddings"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f,
                 f"expected an int >= 1, got {getattr(self, f)!r}")
        L = self.num_hidden_layers
        need(self.intermediate_size >= 0, "intermediate_size", f"expected >= 0, got {self.intermediate_size}")
        need(self.num_memory_tokens >= 0, "num_memory_tokens", f"expected >= 0, got {self.num_memory_tokens}")
        need(self.num_memory_tokens < self.max_position_embeddings, "num_memory_tokens",
             f"{self.num_memory_tokens} meta tokens leave no room in max_position_embeddings="
             f"{self.max_position_embeddings}")
        need(self.sliding_window is None or self.sliding_window >= 1, "sliding_window",
             f"expected None or >= 1, got {self.sliding_window}")
        need(int(self.mamba_expand * self.hidden_size) % self.num_attention_heads == 0, "num_attention_heads",
             f"mamba_expand * hidden_size = {int(self.mamba_expand * self.hidden_size)} is not divisible by "
             f"num_attention_heads={self.num_attention_heads}")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"num_attention_heads={self.num_attention_heads} is not a multiple of {self.num_key_value_heads}")
        for f in ("attn_output_scale", "ssm_output_scale"):
            v = getattr(self, f)
            if f == "attn_output_scale" and v is None:
                need(not self.attn_output_norm, f, "None (no learnable scale) needs attn_output_norm=False")
                continue
            need(isinstance(v, (int, float)) and math.isfinite(v), f, f"expected a finite number, got {v!r}")
        need(self.hidden_act in ACTIVATIONS, "hidden_act", f"expected one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.global_attn_idx is None:
            self.global_attn_idx = default_global_layers(L)
        bad = [i for i in self.global_attn_idx if not 0 <= i < L]
        need(not bad, "global_attn_idx", f"indices {bad} do not fit num_hidden_layers={L}")
        if self.kv_reuse_group is None:
            self.kv_reuse_group = default_kv_groups(L, self.global_attn_idx) if self.sliding_window else []
        seen = set()
        for grp in self.kv_reuse_group:
            need(len(grp) >= 1 and all(0 <= i < L for i in grp), "kv_reuse_group",
                 f"group {grp} does not fit num_hidden_layers={L}")
            need(not seen & set(grp), "kv_reuse_group", f"layer(s) {sorted(seen & set(grp))} appear in two groups")
            seen |= set(grp)
            kinds = {i in self.global_attn_idx for i in grp}
            need(len(kinds) == 1, "kv_reuse_group",
                 f"group {grp} mixes global and sliding-window layers; shared KV needs one attention span")
        for f in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, f)
            need(v is None or 0 <= v < self.vocab_size, f, f"{v} is outside [0, vocab_size={self.vocab_size})")

    def kv_source(self) -> list[int | None]:
        """For each layer, the earlier layer whose KV it reads (None: owns its KV)."""
        src: list[int | None] = [None] * self.num_hidden_layers
        for grp in self.kv_reuse_group:
            first = min(grp)
            for i in grp:
                if i != first:
                    src[i] = first
        return src


class HymbaLM(CausalLM):
    """Hymba language model: ``HymbaLM(config)`` or ``HymbaLM(**HymbaConfig fields)``."""

    def __init__(self, config: HymbaConfig | dict | None = None, **kwargs):
        super().__init__()
        cfg = self.config = make_config(HymbaConfig, config, kwargs, "HymbaLM")
        d = cfg.hidden_size
        self.vocab_size, self.d_model = cfg.vocab_size, d
        self.max_seq_len = cfg.max_position_embeddings
        self.embed = nn.Embedding(cfg.vocab_size, d)
        kv_source = cfg.kv_source()
        layers = []
        for i in range(cfg.num_hidden_layers):
            window = None if i in cfg.global_attn_idx else cfg.sliding_window
            mixer = HybridHeadMixer(
                d, cfg.num_attention_heads, cfg.num_key_value_heads, expand=cfg.mamba_expand, window=window,
                sink=cfg.num_memory_tokens, rope=cfg.rope, rope_theta=cfg.rope_theta,
                share_kv=kv_source[i] is not None, d_state=cfg.mamba_d_state, d_conv=cfg.mamba_d_conv,
                dt_rank=cfg.mamba_dt_rank, bcdt_norm=cfg.mamba_inner_layernorms, conv_bias=cfg.mamba_conv_bias,
                bias=cfg.mamba_proj_bias, norm_eps=cfg.rms_norm_eps, attn_norm=cfg.attn_output_norm,
                attn_scale=cfg.attn_output_scale, ssm_scale=cfg.ssm_output_scale)
            ffn = SwiGLU(d, cfg.intermediate_size, cfg.hidden_act) if cfg.intermediate_size else None
            layers.append(LMBlock(mixer, d, ffn, cfg.rms_norm_eps))
        self.layers = nn.ModuleList(layers)
        self.meta_tokens = (nn.Parameter(torch.randn(cfg.num_memory_tokens, d) * cfg.initializer_range)
                            if cfg.num_memory_tokens else None)
        self._finish_init(d, cfg.rms_norm_eps, cfg.tie_word_embeddings, kv_source)
        init_normal_(self, cfg.initializer_range)
