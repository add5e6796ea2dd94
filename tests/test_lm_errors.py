"""Bad inputs and configs raise errors that name the field; the attention layer's window / sink
semantics and cache agree with a brute-force reference."""
import math

import pytest
import torch

from vscan.layers.attention import CausalSelfAttention, KVCache
from vscan.models.lm import AttentionLM, HymbaLM, JambaConfig, JambaLM, MambaLM

TINY_JAMBA = dict(vocab_size=20, hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, attn_layer_period=2, attn_layer_offset=1, num_experts=2,
                  num_experts_per_tok=1, mamba_d_state=4, max_position_embeddings=12)


@pytest.fixture(scope="module")
def jamba():
    torch.manual_seed(0)
    return JambaLM(**TINY_JAMBA).eval()


def test_token_ids_out_of_range(jamba):
    with pytest.raises(ValueError, match="input_ids"):
        jamba(torch.tensor([[1, 20]]))
    with pytest.raises(ValueError, match="input_ids"):
        jamba(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="prompt_ids"):
        jamba.generate([3, 25], 2)
    with pytest.raises(TypeError, match="input_ids"):
        jamba(torch.tensor([[1.0, 2.0]]))


def test_prompt_longer_than_max(jamba):
    with pytest.raises(ValueError, match="prompt_ids"):
        jamba.generate(list(range(13)), 1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        jamba.generate(list(range(10)), 5)
    with pytest.raises(ValueError, match="input_ids"):
        jamba(torch.zeros(1, 13, dtype=torch.long))
    hymba = HymbaLM(vocab_size=20, hidden_size=8, intermediate_size=0, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, num_memory_tokens=4, max_position_embeddings=10, mamba_d_state=4)
    with pytest.raises(ValueError, match="prompt_ids"):           # meta tokens count against the limit
        hymba.generate(list(range(7)), 0)


@pytest.mark.parametrize("top_p", [0, -0.1, 1.5, float("nan")])
def test_top_p_outside_unit_interval(jamba, top_p):
    with pytest.raises(ValueError, match="top_p"):
        jamba.generate([1, 2], 2, top_p=top_p)


@pytest.mark.parametrize("kw,field", [
    (dict(top_k=0), "top_k"), (dict(temperature=-1.0), "temperature"), (dict(max_new_tokens=-2), "max_new_tokens"),
])
def test_other_sampling_args(jamba, kw, field):
    with pytest.raises(ValueError, match=field):
        jamba.generate([1, 2], **{"max_new_tokens": 2, **kw})


@pytest.mark.parametrize("kw,field", [
    (dict(attn_layer_offset=2), "attn_layer_offset"),                          # offset >= period
    (dict(attn_layer_period=8, attn_layer_offset=4), "attn_layer_offset"),     # no layer 4 in 2 layers
    (dict(expert_layer_period=4, expert_layer_offset=3), "expert_layer_offset"),
    (dict(expert_layer_offset=2), "expert_layer_offset"),
    (dict(attn_layer_period=0), "attn_layer_period"),
    (dict(num_experts=3, num_experts_per_tok=4), "num_experts_per_tok"),
    (dict(num_experts=6, expert_parallel_size=4), "expert_parallel_size"),
    (dict(num_attention_heads=3), "num_attention_heads"),
    (dict(num_key_value_heads=3, num_attention_heads=4), "num_key_value_heads"),
    (dict(pad_token_id=20), "pad_token_id"),
])
def test_jamba_config_errors(kw, field):
    with pytest.raises(ValueError, match=field):
        JambaConfig(**{**TINY_JAMBA, **kw})


def test_jamba_config_mirrors_transformers_defaults():
    c = JambaConfig()
    assert (c.attn_layer_period, c.attn_layer_offset, c.expert_layer_period, c.expert_layer_offset) == (8, 4, 2, 1)
    assert (c.num_experts, c.num_experts_per_tok, c.vocab_size, c.hidden_size) == (16, 2, 65536, 4096)
    assert c.layers_block_type.count("attention") == 4 and c.layers_block_type[4] == "attention"
    assert c.layers_num_experts[1] == 16 and c.layers_num_experts[0] == 1
    assert (c.mamba_d_state, c.mamba_d_conv, c.mamba_expand, c.router_aux_loss_coef) == (16, 4, 2, 0.001)
    with pytest.raises(TypeError, match="hiden_size"):
        JambaLM(hiden_size=8)


@pytest.mark.parametrize("kw,field", [
    (dict(global_attn_idx=[0, 9]), "global_attn_idx"),
    (dict(kv_reuse_group=[[0, 1]]), "kv_reuse_group"),                # mixes global and SWA
    (dict(kv_reuse_group=[[1, 2], [2, 3]]), "kv_reuse_group"),
    (dict(num_attention_heads=3), "num_attention_heads"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(attn_output_scale=float("inf")), "attn_output_scale"),
    (dict(ssm_output_scale="1"), "ssm_output_scale"),
])
def test_hymba_config_errors(kw, field):
    base = dict(vocab_size=20, hidden_size=8, num_hidden_layers=5, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=64, num_memory_tokens=2, sliding_window=4)
    with pytest.raises(ValueError, match=field):
        HymbaLM(**{**base, **kw})


def test_cache_overflow_and_batch_mismatch():
    torch.manual_seed(0)
    m = AttentionLM(vocab_size=10, d_model=8, n_layers=1, num_heads=2, d_ff=0)
    cache = m.allocate_cache(1, 4)
    m(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, 2, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="batch"):
        m(torch.zeros(2, 1, dtype=torch.long), m.allocate_cache(1, 4))
    with pytest.raises(ValueError, match="max_len"):
        MambaLM(vocab_size=10, d_model=8, n_layers=1).allocate_cache(1)


def _reference_attention(q, k, v, window, sink):
    """Explicit softmax over allowed keys: q (H, T, d), k/v (H, T, d) (no GQA), positions 0..T-1."""
    H, T, d = q.shape
    out = torch.zeros_like(q)
    for t in range(T):
        keys = [s for s in range(t + 1) if window is None or t - s < window or s < sink]
        scores = q[:, t:t + 1] @ k[:, keys].transpose(1, 2) / math.sqrt(d)
        out[:, t] = (scores.softmax(-1) @ v[:, keys])[:, 0]
    return out


@pytest.mark.parametrize("window,sink", [(None, 0), (3, 0), (4, 2)])
def test_attention_window_and_sink_against_reference(window, sink):
    torch.manual_seed(0)
    att = CausalSelfAttention(12, num_heads=3, window=window, sink=sink, out_proj=False)
    x = torch.randn(1, 11, 12)
    y = att(x)
    q = att.q_proj(x).view(1, 11, 3, 4).transpose(1, 2)[0]
    k = att.k_proj(x).view(1, 11, 3, 4).transpose(1, 2)[0]
    v = att.v_proj(x).view(1, 11, 3, 4).transpose(1, 2)[0]
    ref = _reference_attention(q, k, v, window, sink).transpose(0, 1).reshape(1, 11, 12)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # any split into cached chunks gives the same result
    for split in ([11], [1] * 11, [5, 6], [2, 7, 1, 1]):
        cache = att.allocate_cache(1, 11)
        outs, p = [], 0
        for c in split:
            outs.append(att(x[:, p:p + c], cache))
            p += c
        torch.testing.assert_close(torch.cat(outs, 1), y, atol=1e-5, rtol=1e-5)
    if window is not None:
        assert cache.capacity == window + sink


def test_kv_cache_fill_for_benchmarks():
    c = KVCache(2, 1, 4, max_len=100, window=8, sink=2)
    c.fill_(50)
    assert c.length == 50 and sorted(c.pos.tolist()) == [0, 1] + list(range(42, 50))
    with pytest.raises(ValueError, match="length"):
        c.fill_(101)
