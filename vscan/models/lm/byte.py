"""Byte-level language models (MambaByte-style): raw UTF-8 bytes are the tokens, 256 of them,
plus three specials. No tokenizer files, no out-of-vocabulary input."""
from __future__ import annotations

import torch


class ByteTokenizer:
    """UTF-8 bytes -> ids 0..255; specials ``pad_id=256``, ``bos_id=257``, ``eos_id=258``."""

    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids, errors: str = "replace") -> str:
        """Ids (list or 1-D tensor) -> text; specials are dropped, invalid UTF-8 is replaced."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids: expected a 1-D sequence, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: {bad[:5]} are outside [0, vocab_size={self.vocab_size})")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors=errors)

    def __call__(self, text: str, **kw) -> torch.Tensor:
        return torch.tensor(self.encode(text, **kw), dtype=torch.long)


_SPECIALS = dict(vocab_size=ByteTokenizer.vocab_size, pad_token_id=ByteTokenizer.pad_id,
                 bos_token_id=ByteTokenizer.bos_id, eos_token_id=ByteTokenizer.eos_id)


def mamba_byte_lm(**kwargs):
    """MambaLM over bytes (MambaByte)."""
    from .mamba_lm import MambaLM
    return MambaLM(vocab_size=ByteTokenizer.vocab_size, **kwargs)


def attention_byte_lm(**kwargs):
    from .attention_lm import AttentionLM
    return AttentionLM(vocab_size=ByteTokenizer.vocab_size, **kwargs)


def jamba_byte_lm(config=None, **kwargs):
    from .jamba import JambaLM
    return JambaLM(config, **{**_SPECIALS, **kwargs})


def hymba_byte_lm(config=None, **kwargs):
    from .hymba import HymbaLM
    return HymbaLM(config, **{**_SPECIALS, **kwargs})


BYTE_MODELS = {"mamba": mamba_byte_lm, "jamba": jamba_byte_lm, "hymba": hymba_byte_lm, "attention": attention_byte_lm}
