"""vscan.models.lm: Mamba, Jamba, Hymba and attention-only language models over one hybrid
cache, byte-level variants, and converters from transformers checkpoints."""
from .attention_lm import AttentionLM
from .base import CausalLM, LMBlock
from .byte import BYTE_MODELS, ByteTokenizer, attention_byte_lm, hymba_byte_lm, jamba_byte_lm, mamba_byte_lm
from .cache import HybridCache
from .convert import from_transformers_jamba, from_transformers_mamba
from .hymba import HymbaConfig, HymbaLM
from .jamba import JambaConfig, JambaLM
from .mamba_lm import MambaLM
from .sampling import sample_next

__all__ = ["AttentionLM", "CausalLM", "LMBlock", "HybridCache", "MambaLM", "JambaLM", "JambaConfig", "HymbaLM",
           "HymbaConfig", "ByteTokenizer", "BYTE_MODELS", "mamba_byte_lm", "jamba_byte_lm", "hymba_byte_lm",
           "attention_byte_lm", "from_transformers_mamba", "from_transformers_jamba", "sample_next"]
