"""Liquid mixers inside the text stacks (issue 7): ``mixer='liquid'`` / ``'cfc'`` for MambaLM and
for Jamba's non-attention layers. Training runs, cached generation reproduces the full forward,
the cache reports the new states, the default stays bit-for-bit the old Mamba stack, and bad
choices fail naming the field."""
import os

import pytest
import torch
import torch.nn as nn

from vscan.layers import CfCMixer, LiquidScan, MambaMixer, build_mixer
from vscan.layers.liquid import CfCState, LiquidScanState
from vscan.models.lm import JambaConfig, JambaLM, LMBlock, MambaLM
from vscan.models.lm.base import is_recurrent_mixer, recurrent_mixer_names

V = 37
D = 32


def mamba_liquid():
    return MambaLM(vocab_size=V, d_model=D, n_layers=2, mixer="liquid", mixer_kwargs=dict(d_state=4))


def mamba_liquid_multiscale():
    return MambaLM(vocab_size=V, d_model=D, n_layers=3, d_ff=24, mixer="liquid",
                   mixer_kwargs=dict(d_state=4, expand=2, multiscale=True))


def mamba_cfc():
    return MambaLM(vocab_size=V, d_model=D, n_layers=2, mixer="cfc", mixer_kwargs=dict(units=24))


def jamba_kw(**kw):
    # [recurrent, attention(window 5), recurrent, attention(window 5)], MoE (top-2 of 2) on odd layers
    return dict(vocab_size=V, hidden_size=D, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, num_experts=2,
                num_experts_per_tok=2, sliding_window=5, mamba_d_state=4, max_position_embeddings=64, **kw)


def jamba_liquid():
    return JambaLM(**jamba_kw(mixer="liquid", mixer_kwargs=dict(d_state=4)))


def jamba_cfc():
    return JambaLM(**jamba_kw(mixer="cfc"))


FACTORIES = [mamba_liquid, mamba_liquid_multiscale, mamba_cfc, jamba_liquid, jamba_cfc]
MIXER_CLASS = {"liquid": LiquidScan, "cfc": CfCMixer}


@pytest.fixture(params=FACTORIES, ids=lambda f: f.__name__)
def model(request):
    torch.manual_seed(0)
    return request.param().eval()


def _recurrent_blocks(m):
    return [blk for blk in m.layers if blk.kind == "recurrent"]


def test_layers_use_the_chosen_mixer(model):
    rec = _recurrent_blocks(model)
    assert rec and all(isinstance(blk.mixer, (LiquidScan, CfCMixer)) for blk in rec)
    assert not any(isinstance(m, MambaMixer) for m in model.modules())
    if isinstance(model, JambaLM):
        assert [blk.kind for blk in model.layers] == ["recurrent", "attention"] * 2


def test_forward_backward_finite(model):
    model.train()
    ids = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(4))
    logits = model(ids)
    assert logits.shape == (2, 10, V) and torch.isfinite(logits).all()
    loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1)) + model.aux_loss()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # the mixers really learn: their parameters receive non-zero gradients
    for blk in _recurrent_blocks(model):
        assert sum(float(p.grad.abs().sum()) for p in blk.mixer.parameters()) > 0


@pytest.mark.parametrize("chunks", [(), (5, 3), (1, 1)])
def test_cached_steps_equal_full_forward(model, chunks):
    """Prefill in chunks (forward with a state), then one decode step per token (the mixers'
    ``step``): the logits equal one full forward within 1e-5 (float32)."""
    b, L = 2, 12
    ids = torch.randint(0, V, (b, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(b, L)
        outs, pos = [], 0
        for c in chunks:
            outs.append(model(ids[:, pos:pos + c], cache))
            pos += c
        while pos < L:
            outs.append(model(ids[:, pos:pos + 1], cache))
            pos += 1
    stepped = torch.cat(outs, dim=1)
    assert cache.seqlen == L
    assert float((stepped - full).abs().max()) <= 1e-5


def test_greedy_generate_matches_full_forward_rollout(model):
    prompt = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 10) and torch.equal(out[:, :4], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def _expected_state_bytes(mixer, batch):
    if isinstance(mixer, LiquidScan):
        conv = mixer.d_inner * (mixer.d_conv - 1) if mixer.d_conv else 0
        return batch * 4 * (conv + mixer.d_inner * mixer.d_state)
    return batch * 4 * mixer.rnn.units


def test_cache_memory_counts_the_new_states(model):
    cache = model.allocate_cache(3, 16)
    rec = [i for i, blk in enumerate(model.layers) if blk.kind == "recurrent"]
    want = {i: _expected_state_bytes(model.layers[i].mixer, 3) for i in rec}
    layer = cache.layer_nbytes()
    for i in rec:
        assert isinstance(cache.states[i], (LiquidScanState, CfCState))
        assert layer[i] == want[i] > 0
    assert cache.breakdown()["ssm"] == sum(want.values())
    assert cache.breakdown()["kv"] + cache.breakdown()["ssm"] == cache.nbytes()
    if isinstance(model, MambaLM):   # only recurrent layers: constant per sequence, linear in the batch
        assert model.cache_nbytes(16) == model.cache_nbytes(4000) == sum(want.values()) // 3
        assert model.cache_nbytes(16, batch=5) == 5 * model.cache_nbytes(16)
    else:                            # Jamba: the sliding-window KV is capped, the recurrent part constant
        assert model.cache_nbytes(60) == model.cache_nbytes(20)
        assert model.cache_nbytes(60) - model.allocate_cache(1, 60, device="meta").breakdown()["kv"] \
            == sum(want.values()) // 3


# ----------------------------------------------------------------------------- the mixers alone

MIXERS = {
    "liquid": lambda: LiquidScan(16, d_state=4),
    "liquid_multiscale": lambda: LiquidScan(16, d_state=4, expand=2, multiscale=True),
    "liquid_noconv": lambda: LiquidScan(16, d_state=4, d_conv=0),
    "cfc": lambda: CfCMixer(16, units=12),
    "cfc_pure": lambda: CfCMixer(16, mode="pure"),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_mixer_state_protocol(name):
    torch.manual_seed(0)
    m = MIXERS[name]()
    assert is_recurrent_mixer(m)
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(5))
    ts = torch.rand(2, 9, generator=torch.Generator().manual_seed(6)) * 2
    with torch.no_grad():
        for gaps in (None, ts):
            full = m(x, timespans=gaps)
            st = m.allocate_state(2)
            zero_bytes = st.nbytes()
            parts = [m(x[:, :4], timespans=None if gaps is None else gaps[:, :4], state=st)]
            for t in range(4, 9):
                parts.append(m.step(x[:, t], st, timespans=None if gaps is None else gaps[:, t]).unsqueeze(1))
            assert float((torch.cat(parts, 1) - full).abs().max()) <= 1e-5
            assert st.nbytes() == zero_bytes   # constant size
    with pytest.raises((TypeError, ValueError), match="state"):
        m(x, state=m.allocate_state(3))


def test_mixer_states_on_meta_and_dtype():
    liq = LiquidScan(16, d_state=4)
    st = liq.allocate_state(2, device="meta", dtype=torch.bfloat16)
    assert st.conv.dtype == torch.bfloat16 and st.ssm.dtype == torch.float32 and st.ssm.device.type == "meta"
    assert st.nbytes() == 2 * 16 * 3 * 2 + 2 * 16 * 4 * 4
    assert LiquidScan(16, d_conv=0).allocate_state(1).conv is None
    cfc = CfCMixer(16, units=8).allocate_state(4, device="meta")
    assert cfc.h.shape == (4, 8) and cfc.nbytes() == 4 * 8 * 4


# ----------------------------------------------------------------------------- default unchanged

MAMBA_KEYS = ["embed.weight"] + [f"layers.{i}.{k}" for i in range(2) for k in (
    "norm.weight", "mixer.conv_weight", "mixer.conv_bias", "mixer.A_log", "mixer.D", "mixer.in_proj.weight",
    "mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.out_proj.weight")] + ["norm_f.weight"]

_JAMBA_MAMBA = ("norm.weight", "mixer.conv_weight", "mixer.conv_bias", "mixer.A_log", "mixer.D", "mixer.in_proj.weight",
                "mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.out_proj.weight",
                "mixer.dt_norm.weight", "mixer.B_norm.weight", "mixer.C_norm.weight", "ffn_norm.weight",
                "ffn.gate_proj.weight", "ffn.up_proj.weight", "ffn.down_proj.weight")
_JAMBA_ATTN = ("norm.weight", "mixer.q_proj.weight", "mixer.k_proj.weight", "mixer.v_proj.weight",
               "mixer.o_proj.weight", "ffn_norm.weight", "ffn.gate_up_proj", "ffn.down_proj", "ffn.router.weight")
JAMBA_KEYS = (["embed.weight"] + [f"layers.{i}.{k}" for i in range(4) for k in (_JAMBA_ATTN if i % 2 else _JAMBA_MAMBA)]
              + ["norm_f.weight", "lm_head.weight"])


def test_default_mixer_keeps_keys_and_weights():
    """The keys of the stacks before ``mixer=`` existed, and the very same weights as the old
    construction (LMBlock(MambaMixer(...)) per layer) under one seed."""
    torch.manual_seed(0)
    m = MambaLM(vocab_size=V, d_model=D, n_layers=2, d_state=4)
    assert list(m.state_dict()) == MAMBA_KEYS
    assert list(MambaLM(vocab_size=V, d_model=D, n_layers=2, d_state=4, mixer="mamba").state_dict()) == MAMBA_KEYS
    torch.manual_seed(0)
    embed = nn.Embedding(V, D)
    nn.init.normal_(embed.weight, std=0.02)
    old = [LMBlock(MambaMixer(D, d_state=4, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False,
                              bcdt_norm=False), D, None, 1e-5) for _ in range(2)]
    ref = {"embed.weight": embed.weight, **{f"layers.{i}.{k}": v for i, blk in enumerate(old)
                                            for k, v in blk.state_dict().items()}}
    for k, v in m.state_dict().items():
        if k != "norm_f.weight":
            assert torch.equal(v, ref[k]), k
    j_kw = jamba_kw()
    j_kw.update(num_experts_per_tok=1)
    j = JambaLM(**j_kw)
    assert list(j.state_dict()) == JAMBA_KEYS
    assert j.config.mixer == "mamba" and j.config.mixer_kwargs is None
    assert all(isinstance(blk.mixer, MambaMixer) for blk in _recurrent_blocks(j))


def test_jamba_config_round_trip_and_mixer_init():
    cfg = JambaConfig(**jamba_kw(mixer="liquid", mixer_kwargs=dict(d_state=4)))
    assert JambaConfig(**cfg.to_dict()) == cfg
    torch.manual_seed(0)
    j = JambaLM(cfg)
    # Jamba's normal(0, 0.02) init skips the recurrent mixers: the liquid rate bias keeps its
    # dt-style initialisation (softplus^-1 of 1e-3..1e-1, far below 0) instead of being zeroed
    for blk in _recurrent_blocks(j):
        assert float(blk.mixer.rate_proj.bias.detach().max()) < -2
    fresh = build_mixer("liquid", D, d_state=4)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in j.layers[0].mixer.state_dict().items()}


# ----------------------------------------------------------------------------- bad choices

def test_recurrent_mixer_names():
    names = recurrent_mixer_names()
    assert {"mamba", "liquid", "cfc"} <= set(names)
    assert not {"bimamba", "causal_attention", "hybrid_head"} & set(names)


@pytest.mark.parametrize("bad", ["bimamba", "causal_attention", "hybrid_head", "no_such_mixer", 7])
def test_bad_mixer_name_raises(bad):
    with pytest.raises(ValueError, match=r"mixer: .*allowed: \['cfc', 'liquid', 'mamba'\]"):
        MambaLM(vocab_size=V, d_model=D, n_layers=2, mixer=bad)
    with pytest.raises(ValueError, match=r"mixer: .*allowed: .*'liquid'"):
        JambaLM(**jamba_kw(mixer=bad))
    with pytest.raises(ValueError, match="mixer: "):
        JambaConfig(mixer=bad)


def test_bad_mixer_kwargs_raise():
    with pytest.raises(ValueError, match="mixer_kwargs: expected a dict"):
        MambaLM(vocab_size=V, d_model=D, n_layers=1, mixer="liquid", mixer_kwargs=[("d_state", 4)])
    with pytest.raises(TypeError, match="mixer_kwargs: building the 'cfc' mixer with .*d_state.* failed: .*unexpected keyword"):
        MambaLM(vocab_size=V, d_model=D, n_layers=1, mixer="cfc", mixer_kwargs=dict(d_state=4))
    with pytest.raises(ValueError, match=r"mixer_kwargs: \['d_state'\] are set by the model's own fields"):
        MambaLM(vocab_size=V, d_model=D, n_layers=1, mixer_kwargs=dict(d_state=4))
    # mamba with a genuinely extra argument is fine
    m = MambaLM(vocab_size=V, d_model=D, n_layers=1, mixer_kwargs=dict(dt_min=1e-2))
    assert m.layers[0].mixer._dt_range == (1e-2, 1e-1)


def test_lm_block_refuses_uncacheable_mixers():
    with pytest.raises(TypeError, match="cannot be cached"):
        LMBlock(build_mixer("bimamba", D), D)
    with pytest.raises(TypeError, match="cannot be cached"):
        LMBlock(nn.Linear(D, D), D)


@pytest.mark.interpret
@pytest.mark.parametrize("multiscale", [False, True], ids=["shared_B", "multiscale"])
def test_liquid_step_on_the_triton_kernels(multiscale, monkeypatch):
    """The decode step and the stateful prefill on the Triton kernels (under the interpreter on
    CPU, as conftest sets it; on the GPU with TRITON_INTERPRET=0): the multiscale step passes a
    per-channel B, which the decode kernel must pair with a matching C."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    dev = "cpu" if interpret else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("no GPU and the Triton interpreter is off")
    monkeypatch.setenv("VSCAN_BACKEND", "triton")
    torch.manual_seed(0)
    m = LiquidScan(8, d_state=4, expand=2, multiscale=multiscale).to(dev)
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(7)).to(dev)
    with torch.no_grad():
        full = m(x)
        st = m.allocate_state(2)
        parts = [m(x[:, :3], state=st)] + [m.step(x[:, t], st).unsqueeze(1) for t in range(3, 6)]
        monkeypatch.setenv("VSCAN_BACKEND", "reference")
        ref = m(x)
    assert float((full - ref).abs().max()) <= 1e-5
    assert float((torch.cat(parts, 1) - ref).abs().max()) <= 1e-5
