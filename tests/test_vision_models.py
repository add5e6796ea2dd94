"""vscan's vision backbones as timm models: every family at CI size, on CPU.

timm's own suite runs in tests/test_timm_suite.py; these are vscan's promises: shapes,
gradients, checkpointing, features, any resolution, heads, save/load, meta device, optimizer
groups, configs matching the published sizes.
"""
import math

import pytest
import timm
import torch

import vscan  # noqa: F401  (registers the models)
from vscan.engine.io import atomic_torch_save, load_checkpoint

# family -> (CI model, input at its default size, a small input, another valid size, an invalid one)
CI = {
    "vim": ("vscan_vim_ci", (2, 3, 64, 64), (2, 3, 32, 48), (1, 3, 96, 128), (1, 3, 60, 64)),
    "vmamba": ("vscan_vmamba_ci", (2, 3, 64, 64), (2, 3, 32, 32), (1, 3, 40, 72), None),
    "hybrid": ("vscan_hybrid_ci", (2, 3, 64, 64), (2, 3, 32, 32), (1, 3, 40, 72), None),
    "video": ("vscan_videomamba_ci", (2, 3, 4, 64, 64), (2, 3, 2, 32, 32), (1, 3, 3, 48, 80), (1, 3, 4, 50, 64)),
    "nd": ("vscan_mamba3d_ci", (2, 1, 32, 32, 32), (2, 1, 16, 16, 16), (1, 1, 16, 24, 40), (1, 1, 30, 32, 32)),
}
FAMILIES = list(CI)

# published parameter counts (millions): Vim README, VMamba v2 table, MambaVision table, VideoMamba
PUBLISHED = {
    "vscan_vim_tiny_patch16_224": 7, "vscan_vim_small_patch16_224": 26, "vscan_vim_base_patch16_224": 98,
    "vscan_vmamba_tiny": 30, "vscan_vmamba_small": 50, "vscan_vmamba_base": 89,
    "vscan_hybrid_tiny": 31.8, "vscan_hybrid_small": 50.1, "vscan_hybrid_base": 97.7,
    "vscan_videomamba_tiny": 7, "vscan_videomamba_small": 26,
}


def _build(family, **kw):
    torch.manual_seed(0)
    return timm.create_model(CI[family][0], **kw)


def _small(family):
    return _x(CI[family][2])


def _x(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_registry_names():
    names = timm.list_models("vscan_*")
    for fam_prefix in ("vscan_vim_", "vscan_vmamba_", "vscan_hybrid_", "vscan_videomamba_", "vscan_mamba3d_"):
        assert any(n.startswith(fam_prefix) for n in names), fam_prefix
    for n in names:    # none of them may fall into timm's name-based test filters
        assert not n.startswith(("test_", "vit_", "deit")) and "mixer_" not in n and "huge" not in n
        assert timm.models.get_pretrained_cfg(n) is not None, f"{n} has no default cfg"


@pytest.mark.parametrize("name,millions", sorted(PUBLISHED.items()))
def test_sizes_match_published(name, millions):
    model = timm.create_model(name, device="meta")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - millions) / millions < 0.05, f"{name}: {n:.1f}M params, published {millions}M"


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward(family):
    model = _build(family, num_classes=7).train()
    x = _small(family)
    out = model(x)
    assert out.shape == (x.shape[0], 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_grad_checkpointing_same_output_and_grads(family):
    model = _build(family, num_classes=5).train()
    x = _small(family)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    for g, r in zip((p.grad for p in model.parameters()), ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_only_shapes(family):
    name, shape = CI[family][:2]
    model = timm.create_model(name, features_only=True).eval()
    x = _x((1, *shape[1:]))
    with torch.no_grad():
        feats = model(x)
    info = model.feature_info
    assert len(feats) == len(info.channels()) >= 3
    for f, c, r in zip(feats, info.channels(), info.reduction()):
        assert f.shape[0] == 1 and f.shape[1] == c
        spatial = [math.ceil(s / r) for s in shape[2:]]
        if family == "video":       # (T, H, W) maps; tubelets are one frame, so T keeps its length
            spatial[0] = shape[2]
        assert list(f.shape[2:]) == spatial


@pytest.mark.parametrize("family", FAMILIES)
def test_any_resolution(family):
    name, _, _, other, bad = CI[family]
    model = _build(family, num_classes=3).eval()
    with torch.no_grad():
        assert model(_x(other)).shape == (1, 3)
    if bad is not None:
        with pytest.raises(ValueError, match="divisible"):
            model(_x(bad))


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_channels_is_value_error(family):
    shape = list(CI[family][2])
    shape[1] += 1
    with pytest.raises(ValueError, match="channels"):
        _build(family)(_x(shape))


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_classifier(family):
    model = _build(family).eval()
    x = _small(family)
    model.reset_classifier(4)
    assert model(x).shape == (x.shape[0], 4)
    model.reset_classifier(0)
    assert model(x).shape == (x.shape[0], model.head_hidden_size)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    model = model.to(torch.float64)
    model.reset_classifier(6)
    assert model.get_classifier().weight.dtype == torch.float64


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_roundtrip(family, tmp_path):
    model = _build(family, num_classes=4).eval()
    path = atomic_torch_save({"model": model.state_dict()}, tmp_path / "m.pt")
    torch.manual_seed(123)
    other = timm.create_model(CI[family][0], num_classes=4).eval()
    other.load_state_dict(load_checkpoint(path)["model"])
    x = _small(family)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_device_and_unknown_kwargs(family):
    name, shape = CI[family][:2]
    with pytest.raises(TypeError):
        timm.create_model(name, not_a_model_arg=1)
    model = timm.create_model(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    out = model(torch.empty(shape, device="meta"))
    assert out.device.type == "meta" and out.shape == (shape[0], model.num_classes)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_weights_give_bf16_output(family):
    model = _build(family, num_classes=3).eval().to(torch.bfloat16)
    with torch.no_grad():
        out = model(_small(family).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_optimizer_groups_skip_ssm_params(family):
    from timm.optim import create_optimizer_v2
    model = _build(family)
    patterns = model.no_weight_decay()
    assert "*.A_log" in patterns
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for n, p in model.named_parameters():
        if n.endswith("A_log"):
            assert id(p) not in decayed, f"{n} is weight-decayed"
    assert len(opt.param_groups) > 2     # layer decay used group_matcher


def test_vim_class_token_sits_in_the_middle():
    model = _build("vim").eval()
    x = _x((1, 3, 64, 64))
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
    assert tokens.shape[1] == 17           # 4x4 patches + class token
    torch.testing.assert_close(pooled, tokens[:, 8])
    assert "cls@middle" in model.blocks[0].mixer.orders.name


def test_vim_and_vmamba_take_other_scan_orders():
    vim = timm.create_model("vscan_vim_ci", orders="cross", num_classes=2)
    assert vim(_x((1, 3, 64, 64))).shape == (1, 2)
    vm = timm.create_model("vscan_vmamba_ci", orders="zigzag", num_classes=2)
    assert vm(_x((1, 3, 64, 64))).shape == (1, 2)


def test_video_scan_orders_differ():
    x = _x((1, 3, 4, 64, 64))
    outs = []
    for order in ("spatial_first", "temporal_first"):
        torch.manual_seed(0)
        model = timm.create_model("vscan_videomamba_ci", scan_order=order, num_classes=3).eval()
        with torch.no_grad():
            outs.append(model(x))
    assert not torch.allclose(outs[0], outs[1])


def test_mamba_nd_alternates_axes_and_directions():
    model = _build("nd")
    names = [blk.mixer.orders.name for blk in model.blocks]
    assert names == ["axes012", "axes012_rev", "axes021", "axes021_rev", "axes210", "axes210_rev"]


def test_hybrid_first_half_mamba_second_half_attention():
    from timm.layers import Attention

    from vscan.models.vision.mamba_hybrid import HybridMambaMixer
    model = timm.create_model("vscan_hybrid_tiny", device="meta")
    for stage, depth in ((model.stages[2], 8), (model.stages[3], 4)):
        kinds = [type(b.mixer) for b in stage.blocks]
        assert kinds == [HybridMambaMixer] * math.ceil(depth / 2) + [Attention] * (depth // 2)


def test_timm_train_script_path():
    """What timm's train.py does with --model <vscan model> (after --device-modules vscan)."""
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2
    model = timm.create_model("vscan_vim_ci", pretrained=False, in_chans=3, num_classes=10, drop_rate=0.0,
                              drop_path_rate=0.1, global_pool=None, bn_momentum=None, bn_eps=None,
                              scriptable=False, checkpoint_path="")
    model.set_grad_checkpointing()
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 64, 64)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    loss = model(_x((2, *cfg["input_size"]))).logsumexp(-1).mean()
    loss.backward()
    opt.step()
    assert model.get_classifier().out_features == 10


def test_training_after_inference_mode_forward():
    """Scan-order index maps first built under inference_mode must not break a later backward
    (regression: the cache used to hold inference tensors)."""
    model = timm.create_model("vscan_vim_ci", num_classes=2, img_size=48)
    x = _x((1, 3, 48, 48))
    with torch.inference_mode():
        model(x)
    model(x).sum().backward()
