"""What every vscan language model shares: pre-norm residual blocks, the forward pass over a
hybrid cache, logits, and cached generation."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vscan.layers.attention import CausalSelfAttention
from vscan.layers.hybrid_head import HybridHeadMixer
from vscan.layers.mamba import MambaMixer, RMSNorm
from vscan.layers.moe import MoE

from .cache import HybridCache
from .sampling import check_sampling_args, sample_next


class LMBlock(nn.Module):
    """``x + mixer(norm(x))`` then, when there is an FFN, ``x + ffn(ffn_norm(x))``.

    The mixer is a MambaMixer, a CausalSelfAttention or a HybridHeadMixer; ``forward`` returns
    the new hidden states and the KVView the mixer attended over (None for Mamba), so that a
    later layer can share it.
    """

    def __init__(self, mixer: nn.Module, d_model: int, ffn: nn.Module | None = None, norm_eps: float = 1e-6):
        super().__init__()
        if isinstance(mixer, MambaMixer):
            self.kind = "mamba"
        elif isinstance(mixer, CausalSelfAttention):
            self.kind = "attention"
        elif isinstance(mixer, HybridHeadMixer):
            self.kind = "hybrid"
        else:
            raise TypeError(f"mixer: expected MambaMixer, CausalSelfAttention or HybridHeadMixer, "
                            f"got {type(mixer).__name__}")
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        self.ffn_norm = RMSNorm(d_model, eps=norm_eps) if ffn is not None else None
        self.ffn = ffn

    @property
    def shares_kv(self) -> bool:
        return self.kind != "mamba" and self.mixer.share_kv

    def allocate_state(self, batch: int, max_len: int, device=None, dtype=None):
        if self.kind == "mamba":
            return self.mixer.allocate_state(batch, device, dtype)
        if self.kind == "attention":
            return None if self.mixer.share_kv else self.mixer.allocate_cache(batch, max_len, device, dtype)
        return self.mixer.allocate_state(batch, max_len, device, dtype)

    def forward(self, x, state=None, shared_kv=None):
        h = self.norm(x)
        view = None
        if self.kind == "mamba":
            y = self.mixer(h, state)
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
        added), measured on the meta device so nothing is allocated. Mamba states are constant,
        sliding-window KV caches are capped at their window, full KV caches grow with seq_len."""
        cache = self.allocate_cache(batch, seq_len + self.num_meta_tokens, device="meta", dtype=dtype)
        return cache.nbytes()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int = 32, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample continuations of ``prompt_ids`` ((batch, L) or (L,) ids) with the hybrid cache:
        one prefill pass, then one cached step per new token (Mamba layers decode through the
        operator's state update). Returns prompt + new tokens in the prompt's rank. After
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
