"""transformers parity: small random MambaForCausalLM / JambaForCausalLM -> vscan converter ->
the same logits within 1e-4 in float32 on CPU (transformers' PyTorch path needs no kernels)."""
import math
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers (a test-only dependency) is not installed")

from vscan.models.lm import from_transformers_jamba, from_transformers_mamba  # noqa: E402


def _randomize(model, seed=0):
    """Weights far from init (norm gains != 1, varied A, larger projections), so a wrong
    mapping cannot hide behind near-zero activations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 2.5)
            elif "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 4
                p.copy_(torch.randn(p.shape, generator=g) * 1.2 / math.sqrt(fan_in))
    return model.eval()


def _compare(hf, ours, vocab):
    ids = torch.randint(0, vocab, (2, 19), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = hf(ids).logits
        got = ours(ids)
    assert ref.abs().max() > 1.0                     # a meaningful signal
    assert (got - ref).abs().max().item() < 1e-4
    return ids, ref


def test_mamba_parity():
    cfg = transformers.MambaConfig(vocab_size=61, hidden_size=24, state_size=8, num_hidden_layers=3, expand=2,
                                   conv_kernel=4, time_step_rank=5, use_bias=True)
    hf = _randomize(transformers.MambaForCausalLM(cfg))
    ours = from_transformers_mamba(hf).eval()
    assert ours.lm_head is None                      # tied, as in transformers
    ids, ref = _compare(hf, ours, 61)
    # and the converted model's cached decoding reproduces transformers' full forward
    cache = ours.allocate_cache(2, 19)
    with torch.no_grad():
        steps = torch.cat([ours(ids[:, :6], cache)] + [ours(ids[:, t:t + 1], cache) for t in range(6, 19)], 1)
    assert (steps - ref).abs().max().item() < 1e-4


def test_jamba_parity():
    cfg = transformers.JambaConfig(vocab_size=67, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2,
                                   attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=4,
                                   num_experts_per_tok=2, mamba_d_state=8, mamba_dt_rank=4, rms_norm_eps=1e-5)
    hf = _randomize(transformers.JambaForCausalLM(cfg))
    ours = from_transformers_jamba(hf).eval()
    assert ours.config.layers_block_type == list(cfg.layers_block_type)
    assert ours.config.layers_num_experts == list(cfg.layers_num_experts)
    assert ours.layers[0].mixer.dt_norm.eps == 1e-5
    _compare(hf, ours, 67)


def test_converter_rejects_mismatched_weights():
    cfg = transformers.MambaConfig(vocab_size=11, hidden_size=8, state_size=4, num_hidden_layers=1)
    hf = transformers.MambaForCausalLM(cfg)

    class Fake:
        config = cfg

        def state_dict(self):
            sd = dict(hf.state_dict())
            sd["backbone.layers.0.mixer.surprise"] = torch.zeros(1)
            return sd

        def parameters(self):
            return hf.parameters()

    with pytest.raises(ValueError, match="surprise"):
        from_transformers_mamba(Fake())
