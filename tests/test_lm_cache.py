"""Cached decoding equals the full forward, step by step, for every LM family (including
sliding-window layers with windows shorter than the sequence and cross-layer shared KV)."""
import pytest
import torch

from vscan.models.lm import AttentionLM, HymbaLM, JambaLM, MambaLM

V = 37


def mamba():
    return MambaLM(vocab_size=V, d_model=16, n_layers=2, d_state=4)


def jamba_swa():
    # [mamba, attn(window 5), mamba, attn(window 5)], MoE on odd layers, GQA 4:2
    return JambaLM(vocab_size=V, hidden_size=32, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, num_experts=4,
                   sliding_window=5, mamba_d_state=4, max_position_embeddings=64)


def jamba_full():
    return JambaLM(vocab_size=V, hidden_size=16, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
                   num_key_value_heads=1, attn_layer_period=3, attn_layer_offset=1, num_experts=2,
                   num_experts_per_tok=1, mamba_d_state=4, max_position_embeddings=64)


def hymba():
    # 6 layers: global [0, 2, 5], SWA (window 4) in 1, 3, 4; layers 3 and 4 share KV; 3 meta tokens
    return HymbaLM(vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=6, num_attention_heads=2,
                   num_key_value_heads=1, num_memory_tokens=3, sliding_window=4, mamba_d_state=4,
                   max_position_embeddings=64)


def hymba_unnormed_attention():
    # the attention branch without its RMSNorm (a learnable scale only), branch scales not 1
    return HymbaLM(vocab_size=V, hidden_size=16, intermediate_size=0, num_hidden_layers=3, num_attention_heads=2,
                   num_key_value_heads=2, num_memory_tokens=2, sliding_window=4, mamba_d_state=4,
                   max_position_embeddings=64, attn_output_norm=False, attn_output_scale=0.5, ssm_output_scale=2.0)


def attention_swa():
    return AttentionLM(vocab_size=V, d_model=16, n_layers=2, num_heads=4, num_kv_heads=2, d_ff=32, window=6)


FACTORIES = [mamba, jamba_swa, jamba_full, hymba, hymba_unnormed_attention, attention_swa]


@pytest.fixture(params=FACTORIES, ids=lambda f: f.__name__)
def model(request):
    torch.manual_seed(0)
    return request.param().eval()


def test_hymba_layout():
    m = hymba()
    assert m.config.global_attn_idx == [0, 2, 5]
    assert m.config.kv_reuse_group == [[3, 4]]
    assert m.kv_source == [None, None, None, None, 3, None]
    assert m.layers[4].mixer.attn.share_kv and not hasattr(m.layers[4].mixer.attn, "k_proj")
    assert [blk.mixer.attn.window for blk in m.layers] == [None, 4, None, 4, 4, None]


@pytest.mark.parametrize("chunks", [(), (7, 1, 5), (11,)])
def test_cached_steps_match_full_forward(model, chunks):
    L, b = 20, 2
    ids = torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(b, L + model.num_meta_tokens)
        outs, pos = [], 0
        for c in chunks:                 # chunked prefill (crosses the window boundaries)
            outs.append(model(ids[:, pos:pos + c], cache))
            pos += c
        while pos < L:                   # then one token at a time
            outs.append(model(ids[:, pos:pos + 1], cache))
            pos += 1
    stepped = torch.cat(outs, dim=1)
    assert cache.seqlen == L + model.num_meta_tokens
    torch.testing.assert_close(stepped, full, atol=2e-5, rtol=1e-4)


def test_greedy_generate_matches_uncached_rollout(model):
    prompt = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_sampling_is_seeded_and_in_range(model):
    prompt = [1, 2, 3]
    a = model.generate(prompt, 5, temperature=0.9, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 5, temperature=0.9, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert a.dim() == 1 and a.shape[0] == 8 and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < V


def test_eos_stops_generation():
    torch.manual_seed(0)
    m = mamba().eval()
    first = int(m.generate([4, 5], 1, temperature=0)[-1])
    out = m.generate([4, 5], 10, temperature=0, eos_token_id=first)
    assert out.tolist() == [4, 5, first]


def test_cache_memory_reports():
    torch.manual_seed(0)
    mb = mamba()
    assert mb.cache_nbytes(16) == mb.cache_nbytes(4096)               # constant state
    att = AttentionLM(vocab_size=V, d_model=16, n_layers=2, num_heads=4, d_ff=0)
    assert att.cache_nbytes(2000) > 1.9 * att.cache_nbytes(1000)      # grows with the context
    swa = attention_swa()
    assert swa.cache_nbytes(100) == swa.cache_nbytes(10_000)          # ring of `window` slots
    shared, unshared = hymba(), HymbaLM(hymba().config, kv_reuse_group=[])
    c1, c2 = shared.allocate_cache(1, 40), unshared.allocate_cache(1, 40)
    assert c1.layer_nbytes()[4] == c1.states[4].ssm.nbytes()          # shared layer holds no KV
    assert c1.nbytes() < c2.nbytes()
    assert c1.breakdown()["kv"] + c1.breakdown()["ssm"] == c1.nbytes()
    assert 2.9 < shared.cache_nbytes(40, batch=3) / shared.cache_nbytes(40, batch=1) <= 3   # + shared positions


def test_training_mode_backward_through_all_families(model):
    model.train()
    ids = torch.randint(0, V, (2, 9))
    loss = model(ids).logsumexp(-1).mean() + model.aux_loss()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
