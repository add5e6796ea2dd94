"""Load transformers' MambaForCausalLM / JambaForCausalLM weights into vscan models.

The mapping is by state-dict name; the only reshapes are the depthwise conv weight
((d, 1, w) -> (d, w)) and, for transformers releases that stored Jamba experts one module
each, stacking them into vscan's (E, ...) expert tensors. transformers itself is never
imported here: the converters read ``hf_model.config`` and ``hf_model.state_dict()``.

    hf = transformers.JambaForCausalLM(cfg)        # or .from_pretrained(...)
    model = from_transformers_jamba(hf)            # vscan JambaLM, same logits
"""
from __future__ import annotations

import re

import torch

from .jamba import JambaConfig, JambaLM
from .mamba_lm import MambaLM

_MAMBA_MIXER = {
    "in_proj.weight": "in_proj.weight", "in_proj.bias": "in_proj.bias",
    "conv1d.weight": "conv_weight", "conv1d.bias": "conv_bias",
    "x_proj.weight": "x_proj.weight", "dt_proj.weight": "dt_proj.weight", "dt_proj.bias": "dt_proj.bias",
    "A_log": "A_log", "D": "D", "out_proj.weight": "out_proj.weight", "out_proj.bias": "out_proj.bias",
    "dt_layernorm.weight": "dt_norm.weight", "b_layernorm.weight": "B_norm.weight",
    "c_layernorm.weight": "C_norm.weight",
}


def _get(cfg, name, default=None):
    return getattr(cfg, name, default)


def _load(model, sd: dict, source: str):
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the vscan model; missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}")
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, vscan expects {tuple(own[k].shape)}")
    model.load_state_dict(sd)
    return model


def _mixer_key(rest: str, source: str) -> str:
    if rest not in _MAMBA_MIXER:
        raise ValueError(f"{source}: unknown Mamba mixer weight {rest!r}")
    return _MAMBA_MIXER[rest]


def _conv(k: str, v: torch.Tensor) -> torch.Tensor:
    return v.squeeze(1) if k.endswith("conv1d.weight") and v.dim() == 3 else v


def from_transformers_mamba(hf_model) -> MambaLM:
    """transformers ``MambaForCausalLM`` (or ``MambaModel``) -> :class:`MambaLM` with the same weights."""
    cfg = hf_model.config
    if _get(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"hf_model.config.hidden_act: vscan's Mamba mixer uses silu, got {cfg.hidden_act!r}")
    sd = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    tie = bool(_get(cfg, "tie_word_embeddings", True))
    model = MambaLM(vocab_size=cfg.vocab_size, d_model=cfg.hidden_size, n_layers=cfg.num_hidden_layers,
                    d_state=cfg.state_size, d_conv=cfg.conv_kernel, expand=cfg.expand,
                    dt_rank=cfg.time_step_rank, conv_bias=cfg.use_conv_bias, bias=cfg.use_bias,
                    norm_eps=cfg.layer_norm_epsilon, tie_embeddings=tie)
    out = {}
    for k, v in sd.items():
        k2 = k[len("backbone."):] if k.startswith("backbone.") else k
        if k2 in ("embeddings.weight", "embedding.weight"):
            out["embed.weight"] = v
        elif k2 == "norm_f.weight":
            out["norm_f.weight"] = v
        elif k2 == "lm_head.weight":
            if not tie:
                out["lm_head.weight"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.norm\.weight", k2):
            out[f"layers.{m[1]}.norm.weight"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.mixer\.(.+)", k2):
            out[f"layers.{m[1]}.mixer.{_mixer_key(m[2], 'from_transformers_mamba')}"] = _conv(k2, v)
        else:
            raise ValueError(f"from_transformers_mamba: unexpected weight {k!r}")
    return _load(model, out, "from_transformers_mamba").to(next(hf_model.parameters()).dtype)


JAMBA_FIELDS = [f for f in JambaConfig.__dataclass_fields__
                if f not in ("expert_parallel_size", "mixer", "mixer_kwargs")]   # vscan-only fields


def jamba_config_from_transformers(cfg) -> JambaConfig:
    kw = {f: _get(cfg, f) for f in JAMBA_FIELDS if hasattr(cfg, f)}
    if kw.get("num_logits_to_keep") is None:
        kw.pop("num_logits_to_keep", None)
    return JambaConfig(**kw)


def from_transformers_jamba(hf_model) -> JambaLM:
    """transformers ``JambaForCausalLM`` -> :class:`JambaLM` with the same weights (both the stacked
    expert layout of transformers >= 5 and the per-expert modules of 4.x are accepted)."""
    jcfg = jamba_config_from_transformers(hf_model.config)
    model = JambaLM(jcfg)
    sd = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    out, experts = {}, {}
    for k, v in sd.items():
        k2 = k[len("model."):] if k.startswith("model.") else k
        if k2 == "embed_tokens.weight":
            out["embed.weight"] = v
        elif k2 == "final_layernorm.weight":
            out["norm_f.weight"] = v
        elif k2 == "lm_head.weight":
            if not jcfg.tie_word_embeddings:
                out["lm_head.weight"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.(input_layernorm|pre_ff_layernorm)\.weight", k2):
            out[f"layers.{m[1]}.{'norm' if m[2] == 'input_layernorm' else 'ffn_norm'}.weight"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.self_attn\.([qkvo]_proj\.(weight|bias))", k2):
            out[f"layers.{m[1]}.mixer.{m[2]}"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.mamba\.(.+)", k2):
            out[f"layers.{m[1]}.mixer.{_mixer_key(m[2], 'from_transformers_jamba')}"] = _conv(k2, v)
        elif m := re.fullmatch(r"layers\.(\d+)\.feed_forward\.((gate|up|down)_proj\.weight)", k2):
            out[f"layers.{m[1]}.ffn.{m[2]}"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.feed_forward\.router\.weight", k2):
            out[f"layers.{m[1]}.ffn.router.weight"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.feed_forward\.experts\.(gate_up_proj|down_proj)", k2):
            out[f"layers.{m[1]}.ffn.{m[2]}"] = v
        elif m := re.fullmatch(r"layers\.(\d+)\.feed_forward\.experts\.(\d+)\.(gate|up|down)_proj\.weight", k2):
            experts.setdefault(int(m[1]), {}).setdefault(m[3], {})[int(m[2])] = v
        else:
            raise ValueError(f"from_transformers_jamba: unexpected weight {k!r}")
    for layer, parts in experts.items():   # transformers 4.x: one module per expert
        stack = {p: torch.stack([parts[p][e] for e in sorted(parts[p])]) for p in ("gate", "up", "down")}
        out[f"layers.{layer}.ffn.gate_up_proj"] = torch.cat([stack["gate"], stack["up"]], dim=1)
        out[f"layers.{layer}.ffn.down_proj"] = stack["down"]
    return _load(model, out, "from_transformers_jamba").to(next(hf_model.parameters()).dtype)
