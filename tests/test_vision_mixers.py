"""``mixer=`` in the vision stacks: registry mixers (liquid, CfC, ...) as the token mixer of Vim,
VMamba, VideoMamba and Mamba-ND blocks, and the :class:`OrderedMixer` adapter that runs a 1-D
mixer along a grid's scan orders. Tiny shapes, CPU."""
import pytest
import torch

import vscan  # noqa: F401  (registers the models and mixers)
from vscan.layers import list_mixers
from vscan.layers.liquid import LiquidScan
from vscan.layers.ordered import OrderedMixer, build_grid_mixer
from vscan.models.vision import MambaND, VideoMamba, VisionMamba, VMamba
from vscan.scans import get_order, with_cls_token

TINY_VIM = dict(img_size=16, patch_size=4, embed_dim=16, depth=1, d_state=4, num_classes=5)
TINY_VMAMBA = dict(depths=(1, 1), dims=8, mlp_ratio=2.0, num_classes=5)
MIXER_KW = {"liquid": dict(d_state=4), "cfc": dict(units=8)}

# state_dict keys of the same tiny models before ``mixer=`` existed (commit f5796c6)
VIM_KEYS = [
    "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.norm.weight",
    "blocks.0.mixer.conv_weight", "blocks.0.mixer.conv_bias", "blocks.0.mixer.in_proj.weight",
    "blocks.0.mixer.ssm.x_proj_weight", "blocks.0.mixer.ssm.dt_proj_weight", "blocks.0.mixer.ssm.dt_proj_bias",
    "blocks.0.mixer.ssm.A_log", "blocks.0.mixer.ssm.D", "blocks.0.mixer.out_proj.weight", "norm.weight",
    "head.weight", "head.bias"]
VMAMBA_KEYS = [
    "stem.conv1.weight", "stem.conv1.bias", "stem.norm1.weight", "stem.norm1.bias", "stem.conv2.weight",
    "stem.conv2.bias", "stem.norm2.weight", "stem.norm2.bias", "stages.0.blocks.0.norm.weight",
    "stages.0.blocks.0.norm.bias", "stages.0.blocks.0.mixer.in_proj.weight", "stages.0.blocks.0.mixer.conv.weight",
    "stages.0.blocks.0.mixer.conv.bias", "stages.0.blocks.0.mixer.ssm.x_proj_weight",
    "stages.0.blocks.0.mixer.ssm.dt_proj_weight", "stages.0.blocks.0.mixer.ssm.dt_proj_bias",
    "stages.0.blocks.0.mixer.ssm.A_log", "stages.0.blocks.0.mixer.ssm.D", "stages.0.blocks.0.mixer.out_norm.weight",
    "stages.0.blocks.0.mixer.out_norm.bias", "stages.0.blocks.0.mixer.out_proj.weight",
    "stages.0.blocks.0.norm2.weight", "stages.0.blocks.0.norm2.bias", "stages.0.blocks.0.mlp.fc1.weight",
    "stages.0.blocks.0.mlp.fc1.bias", "stages.0.blocks.0.mlp.fc2.weight", "stages.0.blocks.0.mlp.fc2.bias",
    "norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"]


def _x(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _check_forward_backward(model, x, num_classes):
    y = model(x)
    assert y.shape == (x.shape[0], num_classes)
    y.square().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{n}: non-finite gradient"


@pytest.mark.parametrize("mixer", ["liquid", "cfc"])
def test_vim_with_registry_mixer(mixer):
    torch.manual_seed(0)
    model = VisionMamba(**TINY_VIM, mixer=mixer, mixer_kwargs=MIXER_KW[mixer])
    mix = model.blocks[0].mixer
    assert isinstance(mix, OrderedMixer) and len(mix.mixers) == 2      # forward + backward, class token in
    assert model.forward_features(_x(2, 3, 16, 16)).shape == (2, 1 + 16, 16)
    _check_forward_backward(model, _x(2, 3, 16, 16), 5)


@pytest.mark.parametrize("mixer", ["liquid", "cfc"])
def test_vmamba_with_registry_mixer(mixer):
    torch.manual_seed(0)
    model = VMamba(**TINY_VMAMBA, orders=["raster", "col_rev"], mixer=mixer, mixer_kwargs=MIXER_KW[mixer])
    assert isinstance(model.stages[0].blocks[0].mixer, OrderedMixer)
    assert model.forward_features(_x(2, 3, 16, 16)).shape == (2, 2, 2, 16)   # NHWC
    _check_forward_backward(model, _x(2, 3, 16, 16), 5)


def test_video_and_nd_take_a_mixer_too():
    torch.manual_seed(0)
    video = VideoMamba(img_size=16, patch_size=8, num_frames=2, embed_dim=8, depth=1, d_state=4, num_classes=3,
                       mixer="liquid", mixer_kwargs=dict(d_state=4))
    assert video(_x(1, 3, 2, 16, 16)).shape == (1, 3)
    nd = MambaND(img_size=8, patch_size=4, spatial_dims=3, embed_dim=8, depth=2, num_classes=2, mixer="cfc",
                 mixer_kwargs=dict(units=8))
    assert [len(b.mixer.mixers) for b in nd.blocks] == [1, 1]              # one order per Mamba-ND layer
    assert nd(_x(1, 1, 8, 8, 8)).shape == (1, 2)


@pytest.mark.parametrize("share", [False, True])
def test_ordered_mixer_raster_is_the_mixer_on_flat_tokens(share):
    torch.manual_seed(0)
    inner = LiquidScan(8, d_state=4)
    adapter = OrderedMixer(lambda: inner, "raster", share=share)
    x = _x(2, 3 * 4, 8)
    torch.testing.assert_close(adapter(x, (3, 4)), inner(x), rtol=0, atol=0)


def test_ordered_mixer_reversed_is_flip_mixer_flip():
    torch.manual_seed(0)
    inner = LiquidScan(8, d_state=4)
    adapter = OrderedMixer(lambda: inner, "raster_rev")
    x = _x(2, 3 * 4, 8)
    torch.testing.assert_close(adapter(x, (3, 4)), inner(x.flip(1)).flip(1), rtol=0, atol=0)


def test_ordered_mixer_averages_the_directions_and_carries_the_class_token():
    torch.manual_seed(0)
    inner = LiquidScan(8, d_state=4)
    x = _x(2, 1 + 2 * 3, 8)                                                # class token at the middle (3)
    adapter = OrderedMixer(lambda: inner, with_cls_token("bidirectional", "middle"), share=True)
    expected = 0.5 * (inner(x) + inner(x.flip(1)).flip(1))             # class token: one more position
    torch.testing.assert_close(adapter(x, (2, 3)), expected)
    # per-direction mixers: one per order, each run in its own order
    adapter = OrderedMixer(lambda: LiquidScan(8, d_state=4), get_order("cross"))
    assert len(adapter.mixers) == 4 and adapter(_x(1, 6, 8), (2, 3)).shape == (1, 6, 8)


def test_default_mixer_keeps_state_dict_keys():
    torch.manual_seed(0)
    assert list(VisionMamba(**TINY_VIM).state_dict()) == VIM_KEYS
    assert list(VisionMamba(**TINY_VIM, mixer="bimamba").state_dict()) == VIM_KEYS
    assert list(VMamba(**dict(TINY_VMAMBA, depths=(1,))).state_dict()) == VMAMBA_KEYS
    assert list(VMamba(**dict(TINY_VMAMBA, depths=(1,)), mixer="ss2d").state_dict()) == VMAMBA_KEYS


def test_default_mixer_takes_mixer_kwargs_on_top():
    vim = VisionMamba(**TINY_VIM, mixer_kwargs=dict(divide_out=False, d_state=2))
    assert vim.blocks[0].mixer.divide_out is False and vim.blocks[0].mixer.ssm.d_state == 2
    vm = VMamba(**TINY_VMAMBA, mixer_kwargs=dict(merge="mean"))
    assert vm.stages[0].blocks[0].mixer.merge == "mean"


def test_grid_mixer_gets_the_orders_and_1d_mixers_are_wrapped():
    bim = build_grid_mixer("bimamba", 8, "cross", d_state=4)               # scans grids itself
    assert not isinstance(bim, OrderedMixer) and len(bim.orders) == 4
    vm = VMamba(**TINY_VMAMBA, mixer="bimamba", mixer_kwargs=dict(d_state=4))
    assert vm(_x(1, 3, 16, 16)).shape == (1, 5)
    assert isinstance(build_grid_mixer("mamba", 8, "cross", d_state=4), OrderedMixer)


def test_registry_mixer_keeps_its_own_init():
    torch.manual_seed(0)
    vim = VisionMamba(**TINY_VIM, mixer="liquid", mixer_kwargs=dict(d_state=4))
    liquid = vim.blocks[0].mixer.mixers[0]
    # LiquidScan's rates start in [1e-3, 1e-1] (dt-style bias), not at the model's zero bias
    rate = torch.nn.functional.softplus(liquid.rate_proj.bias)
    assert bool((rate > 0.9e-3).all() and (rate < 0.11).all())
    assert liquid.in_proj.weight.std() > 0.05                              # nn.Linear's init, not std 0.02


@pytest.mark.parametrize("cls,kw", [(VisionMamba, TINY_VIM), (VMamba, TINY_VMAMBA)])
def test_unknown_mixer_is_value_error(cls, kw):
    with pytest.raises(ValueError, match="registered mixer") as err:
        cls(**kw, mixer="no_such_mixer")
    assert all(name in str(err.value) for name in list_mixers())


def test_orders_in_mixer_kwargs_is_value_error():
    with pytest.raises(ValueError, match="orders"):
        VisionMamba(**TINY_VIM, mixer="liquid", mixer_kwargs=dict(orders="cross"))
    with pytest.raises(ValueError, match="orders"):
        VMamba(**TINY_VMAMBA, mixer_kwargs=dict(orders="cross"))
