"""Jamba (AI21, arXiv 2403.19887): Mamba layers with one attention layer per block of
``attn_layer_period`` layers, and an MoE MLP every ``expert_layer_period`` layers.
``mixer='liquid'`` (or any recurrent mixer of the registry) replaces Mamba in the
non-attention layers.

:class:`JambaConfig` mirrors the field names and defaults of transformers' ``JambaConfig``
(so a config dict moves between the two); the Mamba mixers carry RMSNorms on dt, B and C,
attention has no positional encoding and uses grouped-query heads.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn as nn

from vscan.layers.attention import CausalSelfAttention
from vscan.layers.mamba import MambaMixer
from vscan.layers.moe import ACTIVATIONS, MoE, SwiGLU

from .base import CausalLM, LMBlock, check_mixer_choice, init_normal_, make_mixer


@dataclass
class JambaConfig:
    """Field names and defaults as transformers' JambaConfig (Jamba-v0.1 sizes).

    vscan additions: ``expert_parallel_size`` (validated: must divide num_experts),
    ``intermediate_size=0`` meaning "no MLP" (for the 2-layer recall experiments), and
    ``mixer`` / ``mixer_kwargs``: the recurrent mixer of the non-attention layers ('mamba', the
    default, built from the ``mamba_*`` fields; or e.g. 'liquid' / 'cfc', built as
    ``mixer(hidden_size, **mixer_kwargs)`` with the ``mamba_*`` fields unused).
    Fields without effect here (use_cache, num_logits_to_keep, output_router_logits,
    use_mamba_kernels) are kept so configs round-trip.
    """
    vocab_size: int = 65536
    tie_word_embeddings: bool = False
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    num_logits_to_keep: int | None = 1
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    sliding_window: int | None = None
    max_position_embeddings: int = 262144
    attention_dropout: float = 0.0
    num_experts_per_tok: int = 2
    num_experts: int = 16
    expert_layer_period: int = 2
    expert_layer_offset: int = 1
    attn_layer_period: int = 8
    attn_layer_offset: int = 4
    use_mamba_kernels: bool = True
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_dt_rank: int | str = "auto"
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    expert_parallel_size: int = 1
    mixer: str = "mamba"
    mixer_kwargs: dict | None = None

    def __post_init__(self):
        def need(cond, field, msg):
            if not cond:
                raise ValueError(f"{field}: {msg}")
        check_mixer_choice(self.mixer, self.mixer_kwargs)
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "attn_layer_period", "expert_layer_period", "num_experts", "mamba_d_state", "mamba_d_conv",
                  "max_position_embeddings", "expert_parallel_size"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f,
                 f"expected an int >= 1, got {getattr(self, f)!r}")
        need(self.intermediate_size >= 0, "intermediate_size", f"expected >= 0 (0 = no MLP), got {self.intermediate_size}")
        L = self.num_hidden_layers
        need(0 <= self.attn_layer_offset < self.attn_layer_period, "attn_layer_offset",
             f"must lie in [0, attn_layer_period={self.attn_layer_period}), got {self.attn_layer_offset}")
        need(self.attn_layer_offset < L, "attn_layer_offset",
             f"{self.attn_layer_offset} does not fit num_hidden_layers={L} (no layer would be attention)")
        need(0 <= self.expert_layer_offset < self.expert_layer_period, "expert_layer_offset",
             f"must lie in [0, expert_layer_period={self.expert_layer_period}), got {self.expert_layer_offset}")
        need(self.num_experts == 1 or self.expert_layer_offset < L, "expert_layer_offset",
             f"{self.expert_layer_offset} does not fit num_hidden_layers={L} (no layer would be MoE)")
        need(self.num_experts == 1 or self.intermediate_size > 0, "intermediate_size",
             "MoE layers (num_experts > 1) need intermediate_size > 0")
        need(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
             f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"num_attention_heads={self.num_attention_heads} is not a multiple of {self.num_key_value_heads}")
        need(1 <= self.num_experts_per_tok <= self.num_experts, "num_experts_per_tok",
             f"must lie in [1, num_experts={self.num_experts}], got {self.num_experts_per_tok}")
        need(self.num_experts % self.expert_parallel_size == 0, "expert_parallel_size",
             f"num_experts={self.num_experts} cannot be divided across {self.expert_parallel_size} devices")
        need(self.sliding_window is None or self.sliding_window >= 1, "sliding_window",
             f"expected None or >= 1, got {self.sliding_window}")
        need(self.mamba_dt_rank == "auto" or (isinstance(self.mamba_dt_rank, int) and self.mamba_dt_rank >= 1),
             "mamba_dt_rank", f"expected 'auto' or an int >= 1, got {self.mamba_dt_rank!r}")
        need(self.hidden_act in ACTIVATIONS, "hidden_act", f"expected one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        for f in ("pad_token_id", "bos_token_id", "eos_token_id"):
            v = getattr(self, f)
            need(v is None or 0 <= v < self.vocab_size, f, f"{v} is outside [0, vocab_size={self.vocab_size})")

    @property
    def layers_block_type(self) -> list[str]:
        return ["attention" if i % self.attn_layer_period == self.attn_layer_offset else "mamba"
                for i in range(self.num_hidden_layers)]

    @property
    def layers_num_experts(self) -> list[int]:
        return [self.num_experts if i % self.expert_layer_period == self.expert_layer_offset else 1
                for i in range(self.num_hidden_layers)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_config(cls, config, kwargs, owner: str):
    """``config`` (a dataclass or dict) updated with keyword overrides; unknown names are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"{owner}: unknown keyword(s) {unknown}; valid names are the {cls.__name__} fields")
    if config is None:
        return cls(**kwargs)
    if isinstance(config, dict):
        return make_config(cls, None, {**config, **kwargs}, owner)
    return dataclasses.replace(config, **kwargs)


class JambaLM(CausalLM):
    """Jamba language model. ``JambaLM(config)`` or ``JambaLM(hidden_size=..., num_hidden_layers=...)``:
    every JambaConfig field is a keyword."""

    def __init__(self, config: JambaConfig | dict | None = None, **kwargs):
        super().__init__()
        cfg = self.config = make_config(JambaConfig, config, kwargs, "JambaLM")
        d = cfg.hidden_size
        self.vocab_size, self.d_model = cfg.vocab_size, d
        self.max_seq_len = cfg.max_position_embeddings
        self.aux_loss_coef = cfg.router_aux_loss_coef
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_token_id)
        layers = []
        for kind, n_exp in zip(cfg.layers_block_type, cfg.layers_num_experts):
            if kind == "attention":
                mixer = CausalSelfAttention(d, cfg.num_attention_heads, cfg.num_key_value_heads,
                                            window=cfg.sliding_window, rope=False, dropout=cfg.attention_dropout)
            elif cfg.mixer == "mamba":
                mixer = make_mixer("mamba", d, cfg.mixer_kwargs, dict(
                    d_state=cfg.mamba_d_state, d_conv=cfg.mamba_d_conv, expand=cfg.mamba_expand,
                    dt_rank=cfg.mamba_dt_rank, conv_bias=cfg.mamba_conv_bias, bias=cfg.mamba_proj_bias,
                    bcdt_norm=True))
                for norm in (mixer.dt_norm, mixer.B_norm, mixer.C_norm):
                    norm.eps = cfg.rms_norm_eps
            else:
                mixer = make_mixer(cfg.mixer, d, cfg.mixer_kwargs)
            if n_exp > 1:
                ffn = MoE(d, cfg.intermediate_size, n_exp, cfg.num_experts_per_tok, cfg.hidden_act,
                          aux_loss_coef=cfg.router_aux_loss_coef, expert_parallel_size=cfg.expert_parallel_size,
                          init_std=cfg.initializer_range)
            elif cfg.intermediate_size > 0:
                ffn = SwiGLU(d, cfg.intermediate_size, cfg.hidden_act)
            else:
                ffn = None
            layers.append(LMBlock(mixer, d, ffn, cfg.rms_norm_eps))
        self.layers = nn.ModuleList(layers)
        self._finish_init(d, cfg.rms_norm_eps, cfg.tie_word_embeddings)
        # the recurrent mixers keep their own initialisation (dt / rate biases, A, D, ...)
        recurrent = tuple({type(blk.mixer) for blk in self.layers if blk.kind == "recurrent"})
        init_normal_(self, cfg.initializer_range, skip=(MambaMixer,) + recurrent)
        if cfg.pad_token_id is not None:
            self.embed.weight.data[cfg.pad_token_id].zero_()
