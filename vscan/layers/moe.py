"""Sparse mixture-of-experts MLP: softmax router, top-k experts per token, SwiGLU experts.

Tokens are dispatched by sorting the (token, slot) assignments by expert id and gathering
them into one contiguous block per expert; the only Python loop runs over experts, never
over tokens. Combined outputs are scattered back with ``index_add_``.

Expert weights are stored as stacked 3-D parameters with transformers' Jamba/Mixtral layout
(``gate_up_proj`` (E, 2*d_ff, d_model), gate rows first; ``down_proj`` (E, d_model, d_ff);
``router.weight`` (E, d_model)), so checkpoints map one-to-one.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch-Transformer load-balancing loss in its top-k (Mixtral / transformers) form.

    ``router_logits`` (tokens, E). With p = softmax(logits), f_i = (number of top-k slots that
    picked expert i) / tokens (so sum_i f_i = k) and P_i = mean_t p_t,i::

        loss = E * sum_i f_i * P_i

    A uniform router gives ``k``; gradients flow through P only (f is a count).
    """
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits: expected (tokens, num_experts), got shape {tuple(router_logits.shape)}")
    T, E = router_logits.shape
    probs = router_logits.float().softmax(-1)
    idx = probs.topk(top_k, dim=-1).indices
    counts = torch.zeros(E, device=probs.device, dtype=probs.dtype).scatter_add_(
        0, idx.reshape(-1), torch.ones(idx.numel(), device=probs.device, dtype=probs.dtype))
    return E * (counts / max(T, 1) * probs.mean(0)).sum()


class SwiGLU(nn.Module):
    """Dense gated MLP ``down(act(gate(x)) * up(x))`` (names as transformers' JambaMLP / LlamaMLP)."""

    def __init__(self, d_model: int, d_ff: int, hidden_act: str = "silu", bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if d_ff < 1:
            raise ValueError(f"d_ff: expected a positive intermediate size, got {d_ff}")
        self.act = _activation(hidden_act)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias, **dd)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias, **dd)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias, **dd)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Top-k routed mixture of SwiGLU experts over (..., d_model) input.

    Args:
        d_model, d_ff: model width and per-expert intermediate size.
        num_experts, top_k: experts and experts per token (Jamba: 16, 2).
        normalize_weights: renormalise the k selected router probabilities to sum to 1
            (Mixtral-style). Jamba keeps them unnormalised (the default).
        aux_loss_coef: factor the owning model applies to :attr:`aux_loss` (Jamba: 0.001).
        expert_parallel_size: number of devices the experts would be sharded over; only
            validated here (``num_experts`` must divide evenly), all experts run locally.
        init_std: normal init std of router and expert weights.

    After each forward, ``aux_loss`` holds the load-balancing loss (:func:`load_balancing_loss`,
    unscaled), ``router_logits`` the (tokens, E) logits and ``expert_counts`` the tokens
    routed to each expert.
    """

    def __init__(self, d_model: int, d_ff: int, num_experts: int = 16, top_k: int = 2,
                 hidden_act: str = "silu", normalize_weights: bool = False, aux_loss_coef: float = 0.001,
                 expert_parallel_size: int = 1, init_std: float = 0.02, device=None, dtype=None):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts: expected >= 1, got {num_experts}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k (num_experts_per_tok): expected 1..num_experts={num_experts}, got {top_k}")
        if expert_parallel_size < 1 or num_experts % expert_parallel_size:
            raise ValueError(f"expert_parallel_size: num_experts={num_experts} must divide evenly across "
                             f"{expert_parallel_size} devices")
        if d_ff < 1:
            raise ValueError(f"d_ff: expected a positive intermediate size, got {d_ff}")
        dd = dict(device=device, dtype=dtype)
        self.d_model, self.d_ff, self.num_experts, self.top_k = d_model, d_ff, num_experts, top_k
        self.normalize_weights, self.aux_loss_coef = normalize_weights, aux_loss_coef
        self.expert_parallel_size = expert_parallel_size
        self.act = _activation(hidden_act)
        self.router = nn.Linear(d_model, num_experts, bias=False, **dd)
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * d_ff, d_model, **dd))
        self.down_proj = nn.Parameter(torch.empty(num_experts, d_model, d_ff, **dd))
        self.init_std = init_std
        self.aux_loss: torch.Tensor | None = None
        self.router_logits: torch.Tensor | None = None
        self.expert_counts: torch.Tensor | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        for p in (self.router.weight, self.gate_up_proj, self.down_proj):
            if p.device.type != "meta":
                nn.init.normal_(p, std=self.init_std)

    def route(self, h: torch.Tensor):
        """h (tokens, d) -> (logits (T, E), weights (T, k), expert ids (T, k))."""
        logits = self.router(h)
        probs = logits.float().softmax(-1)
        w, idx = probs.topk(self.top_k, dim=-1)
        if self.normalize_weights:
            w = w / w.sum(-1, keepdim=True)
        return logits, w.to(h.dtype), idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        T, k, E = h.shape[0], self.top_k, self.num_experts
        logits, w, idx = self.route(h)
        flat = idx.reshape(-1)                                 # (T*k,) expert of each slot
        order = flat.argsort(stable=True)                      # slots grouped by expert
        token_of = order // k                                  # source token of each sorted slot
        counts = torch.bincount(flat, minlength=E)
        xs = h.index_select(0, token_of)
        outs = []
        for e, chunk in enumerate(xs.split(counts.tolist())):  # loop over experts only
            if chunk.shape[0] == 0:
                continue
            g, u = F.linear(chunk, self.gate_up_proj[e]).chunk(2, dim=-1)
            outs.append(F.linear(self.act(g) * u, self.down_proj[e]))
        ys = torch.cat(outs) if outs else xs.new_zeros(0, shape[-1])
        ys = ys * w.reshape(-1)[order].unsqueeze(-1)
        out = torch.zeros_like(h).index_add_(0, token_of, ys.to(h.dtype))
        probs = logits.float().softmax(-1)
        self.router_logits, self.expert_counts = logits, counts
        self.aux_loss = E * (counts.to(probs.dtype) / max(T, 1) * probs.mean(0)).sum()
        return out.reshape(shape)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={self.num_experts}, top_k={self.top_k}, "
                f"normalize_weights={self.normalize_weights}")

