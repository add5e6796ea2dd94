"""What every vscan language model shares: pre-norm residual blocks, the forward pass over a
hybrid cache, logits, and cached generation.

Mixer kinds an :class:`LMBlock` takes:

* ``'attention'``: :class:`~vscan.layers.attention.CausalSelfAttention` (KV cache, may share KV);
* ``'hybrid'``: :class:`~vscan.layers.hybrid_head.HybridHeadMixer` (KV cache + SSM state);
* ``'recurrent'``: any mixer that follows the *recurrent-mixer protocol* (checked by duck
  typing, :func:`is_recurrent_mixer`) -- MambaMixer, LiquidScan ('liquid'), CfCMixer ('cfc'):

  - ``allocate_state(batch, device=None, dtype=None)`` returns a state object whose size does
    not depend on the sequence length and which reports its size with ``nbytes()``;
  - ``forward(x, state=state)``: x (batch, T, d_model); the sequence continues from ``state``,
    which is advanced in place (``state=None``: a stateless pass from the zero state);
  - ``step(x_t, state)``: one token (batch, d_model) -> (batch, d_model), advancing ``state``.

  Such a mixer is causal by construction (all it knows of the past is the state), so its cached
  steps reproduce the full forward.

Anything else (e.g. the bidirectional vision mixer 'bimamba') is refused with a TypeError when
the block is built: there is no way to cache it, and no guarantee that it is causal.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.layers.attention import CausalSelfAttention
from vscan.layers.hybrid_head import HybridHeadMixer
from vscan.layers.mamba import MambaMixer, RMSNorm
from vscan.layers.moe import MoE
from vscan.layers.registry import build_mixer, list_mixers, mixer_class

from .cache import HybridCache
from .sampling import check_sampling_args, sample_next

RECURRENT_MIXER_METHODS = ("allocate_state", "step")


def is_recurrent_mixer(mixer) -> bool:
    """Whether ``mixer`` (a module or a class) follows the recurrent-mixer protocol (see the
    module docstring): it has callable ``allocate_state`` and ``step``, and is not one of the
    KV-cached kinds (whose ``allocate_state`` takes a ``max_len``)."""
    cls = mixer if isinstance(mixer, type) else type(mixer)
    if issubclass(cls, (CausalSelfAttention, HybridHeadMixer)):
        return False
    return all(callable(getattr(cls, m, None)) for m in RECURRENT_MIXER_METHODS)


def recurrent_mixer_names() -> list[str]:
    """Registered mixer names that follow the recurrent-mixer protocol: the choices for the
    ``mixer=`` field of MambaLM and Jamba (e.g. ['cfc', 'liquid', 'mamba'])."""
    return [n for n in list_mixers() if is_recurrent_mixer(mixer_class(n))]


def check_mixer_choice(mixer, mixer_kwargs, field: str = "mixer", kwargs_field: str = "mixer_kwargs"):
    """Validate a ``mixer=`` / ``mixer_kwargs=`` pair; ValueError naming the field and the allowed names."""
    allowed = recurrent_mixer_names()
    if not isinstance(mixer, str) or mixer not in allowed:
        if isinstance(mixer, str) and mixer in list_mixers():
            why = ("is registered but is not a recurrent mixer (one with allocate_state(batch, device, dtype) "
                   "and step(x, state), causal by construction): bidirectional mixers such as 'bimamba' see "
                   "the future, and attention layers come from the model's own attention settings")
        else:
            why = "is not a registered mixer"
        raise ValueError(f"{field}: {mixer!r} {why}; allowed: {allowed}")
    if mixer_kwargs is not None and not isinstance(mixer_kwargs, dict):
        raise ValueError(f"{kwargs_field}: expected a dict of constructor arguments or None, "
                         f"got {type(mixer_kwargs).__name__}")


def make_mixer(mixer: str, dim: int, mixer_kwargs: dict | None = None, stack_kwargs: dict | None = None,
               field: str = "mixer", kwargs_field: str = "mixer_kwargs") -> nn.Module:
    """Build the recurrent mixer ``mixer`` of width ``dim`` through the registry.

    ``stack_kwargs`` are the constructor arguments the model sets itself (its Mamba fields, for
    ``mixer='mamba'``); ``mixer_kwargs`` add to them but may not repeat them. Only ``mixer_kwargs``
    reach the other mixers: a model's Mamba-specific fields (d_state, expand, ...) do not apply to them.
    """
    check_mixer_choice(mixer, mixer_kwargs, field, kwargs_field)
    extra = dict(mixer_kwargs or {})
    base = dict(stack_kwargs or {})
    clash = sorted(set(base) & set(extra))
    if clash:
        raise ValueError(f"{kwargs_field}: {clash} are set by the model's own fields for mixer={mixer!r}; "
                         f"use those fields instead")
    try:
        return build_mixer(mixer, dim, **base, **extra)
    except TypeError as err:
        raise TypeError(f"{kwargs_field}: building the {mixer!r} mixer with {extra} failed: {err}") from err


class LMBlock(nn.Module):
    """``x + mixer(norm(x))`` then, when there is an FFN, ``x + ffn(ffn_norm(x))``.

    The mixer is a CausalSelfAttention, a HybridHeadMixer or a recurrent mixer (MambaMixer,
    LiquidScan, CfCMixer, ...: see the module docstring); ``forward`` returns the new hidden
    states and the KVView the mixer attended over (None for a recurrent mixer), so that a later
    layer can share it. ``kind`` is 'attention', 'hybrid' or 'recurrent'.
    """

    def __init__(self, mixer: nn.Module, d_model: int, ffn: nn.Module | None = None, norm_eps: float = 1e-6):
        super().__init__()
        if isinstance(mixer, CausalSelfAttention):
            self.kind = "attention"
        elif isinstance(mixer, HybridHeadMixer):
            self.kind = "hybrid"
        elif is_recurrent_mixer(mixer):
            self.kind = "recurrent"
        else:
            raise TypeError(f"mixer: expected a CausalSelfAttention, a HybridHeadMixer or a recurrent mixer "
                            f"(methods {RECURRENT_MIXER_METHODS}, e.g. MambaMixer, LiquidScan, CfCMixer), "
                            f"got {type(mixer).__name__}, which cannot be cached for generation")
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.ffn_norm = RMSNorm(d_model, eps=norm_eps) if ffn is not None else None
        self.ffn = ffn

    @property
    def shares_kv(self) -> bool:
        return self.kind != "recurrent" and self.mixer.share_kv

    def allocate_state(self, batch: int, max_len: int, device=None, dtype=None):
        if self.kind == "recurrent":
            return self.mixer.allocate_state(batch, device=device, dtype=dtype)
        if self.kind == "attention":
            return None if self.mixer.share_kv else self.mixer.allocate_cache(batch, max_len, device, dtype)
        return self.mixer.allocate_state(batch, max_len, device, dtype)

    def forward(self, x, state=None, shared_kv=None):
        h = self.norm(x)
        view = None
        if self.kind == "recurrent":
            if state is not None and h.shape[1] == 1:
                y = self.mixer.step(h[:, 0], state).unsqueeze(1)
            else:
                y = self.mixer(h, state=state)
        elif self.kind == "attention":
            y, view = self.mixer(h, cache=state, shared_kv=shared_kv, return_kv=True)
        else:
            y, view = self.mixer(h, state=state, shared_kv=shared_kv, return_kv=True)
        x = x + y
        if self.ffn is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x, view


class CausalLM(nn.Module):
    """Base of MambaLM, JambaLM, HymbaLM and AttentionLM.

    Subclasses build ``embed`` (nn.Embedding), ``layers`` (ModuleList of LMBlock), ``norm_f``,
    ``lm_head`` (None when tied to the embedding), and set ``kv_source`` (for each layer, the
    index of the layer whose KV it reads, else None), ``max_seq_len`` (None: no limit) and
    optionally ``meta_tokens`` (learnable embeddings prepended to every sequence).
    """

    def __init__(self):
        super().__init__()
        self.vocab_size = 0
        self.max_seq_len: int | None = None
        self.meta_tokens: nn.Parameter | None = None
        self.aux_loss_coef = 0.0

    def _finish_init(self, d_model: int, norm_eps: float, tie_embeddings: bool, kv_source=None):
        self.norm_f = RMSNorm(d_model, eps=norm_eps)
        self.lm_head = None if tie_embeddings else nn.Linear(d_model, self.vocab_size, bias=False)
        self.kv_source = list(kv_source) if kv_source is not None else [None] * len(self.layers)
        self._kv_producers = {s for s in self.kv_source if s is not None}

    @property
    def num_meta_tokens(self) -> int:
        return 0 if self.meta_tokens is None else self.meta_tokens.shape[0]

    # ------------------------------------------------------------------ checks
    def check_ids(self, ids, name: str = "input_ids") -> torch.Tensor:
        if not isinstance(ids, torch.Tensor):
            ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"{name}: expected an integer tensor of token ids, got dtype {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"{name}: expected shape (batch, length), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"{name}: token ids must lie in [0, vocab_size={self.vocab_size}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return ids.long()

    # ------------------------------------------------------------------ forward
    def forward_hidden(self, input_ids, cache: HybridCache | None = None, check_ids: bool = True) -> torch.Tensor:
        """Token ids (batch, T) -> final-normed hidden states (batch, T, d_model). With ``cache``
        the sequence continues from it and the cache advances by T tokens. ``check_ids=False``
        skips the id range check (a device sync), for ids the model sampled itself."""
        ids = self.check_ids(input_ids) if check_ids else input_ids
        b, T = ids.shape
        x = self.embed(ids)
        n_meta = 0
        if self.meta_tokens is not None and (cache is None or cache.seqlen == 0):
            n_meta = self.num_meta_tokens
            x = torch.cat([self.meta_tokens.to(x.dtype).unsqueeze(0).expand(b, -1, -1), x], dim=1)
        past = cache.seqlen if cache is not None else 0
        if self.max_seq_len is not None and past + x.shape[1] > self.max_seq_len:
            raise ValueError(f"input_ids: {past + x.shape[1]} positions (incl. {past} cached and "
                             f"{self.num_meta_tokens} meta tokens) exceed max_seq_len={self.max_seq_len}")
        if cache is not None:
            if cache.batch != b:
                raise ValueError(f"cache: allocated for batch {cache.batch}, got input_ids of batch {b}")
            if len(cache) != len(self.layers):
                raise ValueError(f"cache: has {len(cache)} layer states, the model has {len(self.layers)} layers")
        views = {}
        for i, blk in enumerate(self.layers):
            src = self.kv_source[i]
            x, view = blk(x, cache.states[i] if cache is not None else None,
                          views[src] if src is not None else None)
            if i in self._kv_producers:
                views[i] = view
        if cache is not None:
            cache.seqlen += x.shape[1]
        return self.norm_f(x[:, n_meta:])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, w)

    def forward(self, input_ids, cache: HybridCache | None = None) -> torch.Tensor:
        """Token ids (batch, T) -> logits (batch, T, vocab_size)."""
        return self.logits(self.forward_hidden(input_ids, cache))

    def decode_step(self, token_ids: torch.Tensor, cache: HybridCache) -> torch.Tensor:
        """One cached step: token_ids (batch, 1) -> next-token logits (batch, vocab). Ids are not
        range-checked (generation feeds back its own samples), so the step needs no host sync
        besides the MoE expert split."""
        return self.logits(self.forward_hidden(token_ids, cache, check_ids=False))[:, -1]

    def aux_loss(self) -> torch.Tensor:
        """Mean load-balancing loss of the MoE layers in the last forward (0 without MoE); the
        training loss adds ``aux_loss_coef * aux_loss()``."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, MoE) and m.aux_loss is not None]
        if not losses:
            return self.embed.weight.new_zeros(())
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ cache
    def allocate_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> HybridCache:
        """Empty cache for ``batch`` sequences of up to ``max_len`` positions (meta tokens included)."""
        if max_len is None:
            max_len = self.max_seq_len
        if max_len is None:
            raise ValueError("max_len: this model has no max_seq_len; give the cache's max_len")
        if self.max_seq_len is not None and max_len > self.max_seq_len:
            raise ValueError(f"max_len: {max_len} exceeds the model's max_seq_len={self.max_seq_len}")
        device = device or self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        states = [blk.allocate_state(batch, max_len, device, dtype) for blk in self.layers]
        return HybridCache(states, batch, max_len)

    def cache_nbytes(self, seq_len: int, batch: int = 1, dtype=None) -> int:
        """Bytes of the generation cache for ``batch`` sequences of ``seq_len`` tokens (meta tokens
        added), measured on the meta device so nothing is allocated. Recurrent states (Mamba,
        liquid, CfC: each state's ``nbytes()``) are constant, sliding-window KV caches are capped
        at their window, full KV caches grow with seq_len. Divide by ``batch`` for bytes per sequence."""
        cache = self.allocate_cache(batch, seq_len + self.num_meta_tokens, device="meta", dtype=dtype)
        return cache.nbytes()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations of ``prompt_ids`` ((batch, L) or (L,) ids) with the hybrid cache:
        one prefill pass, then one cached step per new token (recurrent layers decode through
        their ``step``: Mamba and liquid layers through the operator's state update). Returns prompt + new tokens in the prompt's rank. After
        ``eos_token_id`` a sequence keeps emitting it; generation stops when all have."""
        check_sampling_args(max_new_tokens, temperature, top_k, top_p)
        ids = torch.as_tensor(prompt_ids, device=self.embed.weight.device)
        squeeze = ids.dim() == 1
        ids = ids.unsqueeze(0) if squeeze else ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"prompt_ids: expected a non-empty (batch, length) or (length,) id sequence, "
                             f"got shape {tuple(ids.shape)}")
        ids = self.check_ids(ids, "prompt_ids")
        need = self.num_meta_tokens + ids.shape[1]
        if self.max_seq_len is not None and need > self.max_seq_len:
            raise ValueError(f"prompt_ids: {ids.shape[1]} tokens (+{self.num_meta_tokens} meta) exceed "
                             f"max_seq_len={self.max_seq_len}")
        if self.max_seq_len is not None and need + max_new_tokens > self.max_seq_len:
            raise ValueError(f"max_new_tokens: prompt ({need} positions) + {max_new_tokens} new tokens exceed "
                             f"max_seq_len={self.max_seq_len}")
        was_training = self.training
        self.eval()
        try:
            cache = self.allocate_cache(ids.shape[0], need + max_new_tokens)
            logits = self.forward(ids, cache)[:, -1]
            out = [ids]
            done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            for step in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                    done |= nxt == eos_token_id
                out.append(nxt[:, None])
                if step + 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
                    break
                logits = self.decode_step(nxt[:, None], cache)
        finally:
            self.train(was_training)
        res = torch.cat(out, dim=1)
        return res[0] if squeeze else res

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            n -= self.embed.weight.numel()
        return n


def init_normal_(module: nn.Module, std: float, skip=(MambaMixer,)):
    """Normal(0, std) init of Linear / Embedding weights (biases zeroed), leaving the modules in
    ``skip`` (Mamba mixers keep their dt / A / D initialisation) untouched."""
    skipped = set()
    for m in module.modules():
        if isinstance(m, skip):
            skipped.update(id(x) for x in m.modules())
    for m in module.modules():
        if id(m) in skipped:
            continue
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
