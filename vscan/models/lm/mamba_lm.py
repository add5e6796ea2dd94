"""MambaLM: embedding, pre-norm Mamba blocks, final RMSNorm, tied head (Mamba-1 LM layout,
as transformers' MambaForCausalLM)."""
from __future__ import annotations

import torch.nn as nn

from vscan.layers.moe import SwiGLU

from .base import CausalLM, LMBlock, check_mixer_choice, make_mixer


class MambaLM(CausalLM):
    """Pure Mamba language model -- or, with ``mixer=``, the same stack around another
    recurrent mixer.

    Args mirror transformers' MambaConfig: vocab_size, d_model (hidden_size), n_layers
    (num_hidden_layers), d_state (state_size), d_conv (conv_kernel), expand, dt_rank
    (time_step_rank), conv_bias (use_conv_bias), bias (use_bias), norm_eps (layer_norm_epsilon),
    tie_embeddings (tie_word_embeddings). vscan extras: ``bcdt_norm`` (Jamba's dt/B/C norms)
    and ``d_ff`` (a SwiGLU MLP after each mixer; 0 = none, as in Mamba).

    ``mixer``: the registered recurrent mixer of every layer, 'mamba' (default) or e.g.
    'liquid' / 'cfc' (:func:`~vscan.models.lm.base.recurrent_mixer_names` lists them; cached
    generation works for all of them). ``mixer_kwargs``: extra constructor arguments. The Mamba
    arguments (d_state, d_conv, expand, dt_rank, conv_bias, bias, bcdt_norm) configure the
    'mamba' mixer only; another mixer is built as ``mixer(d_model, **mixer_kwargs)`` with its
    own defaults (give e.g. ``mixer_kwargs=dict(d_state=16, expand=2)`` to match sizes).
    """

    def __init__(self, vocab_size: int = 50280, d_model: int = 768, n_layers: int = 24, d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto", conv_bias: bool = True,
                 bias: bool = False, norm_eps: float = 1e-5, tie_embeddings: bool = True, bcdt_norm: bool = False,
                 d_ff: int = 0, embed_init_std: float = 0.02, mixer: str = "mamba", mixer_kwargs: dict | None = None):
        super().__init__()
        if vocab_size < 1 or d_model < 1 or n_layers < 1:
            raise ValueError(f"vocab_size, d_model, n_layers: expected >= 1, got {vocab_size}, {d_model}, {n_layers}")
        if d_ff < 0:
            raise ValueError(f"d_ff: expected >= 0 (0 = no MLP), got {d_ff}")
        check_mixer_choice(mixer, mixer_kwargs)
        self.mixer_name = mixer
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=embed_init_std)
        own = (dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, conv_bias=conv_bias, bias=bias,
                    bcdt_norm=bcdt_norm) if mixer == "mamba" else None)
        self.layers = nn.ModuleList(
            LMBlock(make_mixer(mixer, d_model, mixer_kwargs, own),
                    d_model, SwiGLU(d_model, d_ff) if d_ff else None, norm_eps)
            for _ in range(n_layers))
        self._finish_init(d_model, norm_eps, tie_embeddings)
