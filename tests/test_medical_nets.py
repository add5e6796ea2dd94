"""MONAI-style network tests for vscan.models.medical (UMambaBot, UMambaEnc, ScanSegNet):
output shape over 2-D / 3-D, channels and sizes (non-square, odd), backward, deep supervision,
train vs eval, padding / size errors, bad-argument ValueErrors. Tiny widths and sizes for CPU."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("monai")

from monai.networks import eval_mode  # noqa: E402

from vscan.models.medical import ScanSegNet, UMambaBot, UMambaEnc  # noqa: E402

TINY = {
    UMambaBot: dict(features=(4, 8, 16), d_state=4),
    UMambaEnc: dict(features=(4, 8, 16), d_state=4),
    ScanSegNet: dict(features=(4, 8), depths=1, d_state=2),
}
NETS = list(TINY)
# square / cubic, non-square, odd: (in_channels, out_channels) alternate over the sizes
SIZES = {2: [(16, 16), (33, 20), (7, 12)], 3: [(8, 8, 8), (9, 6, 13), (5, 12, 7)]}
CASES = [(cls, sd, *((1, 2) if k % 2 == 0 else (2, 3)), size)
         for cls in NETS for sd in (2, 3) for k, size in enumerate(SIZES[sd])]


def _id(case):
    cls, sd, i, o, size = case
    return f"{cls.__name__}-{sd}d-in{i}-out{o}-{'x'.join(map(str, size))}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_shape(case):
    cls, sd, in_ch, out_ch, size = case
    net = cls(sd, in_ch, out_ch, **TINY[cls])
    with eval_mode(net):
        out = net(torch.randn(2, in_ch, *size))
    assert out.shape == (2, out_ch, *size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", NETS)
@pytest.mark.parametrize("sd,size", [(2, (12, 10)), (3, (7, 6, 5))])
def test_backward(cls, sd, size):
    net = cls(sd, 1, 3, **TINY[cls])
    net.train()
    x = torch.randn(2, 1, *size, requires_grad=True)
    out = net(x)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(int(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


@pytest.mark.parametrize("cls", NETS)
@pytest.mark.parametrize("sd,size", [(2, (10, 14)), (3, (5, 8, 7))])
def test_deep_supervision_train_vs_eval(cls, sd, size):
    net = cls(sd, 2, 3, deep_supervision=True, deep_supr_num=1, **TINY[cls])
    x = torch.randn(2, 2, *size)
    net.train()
    out = net(x)
    assert out.shape == (2, 2, 3, *size)        # DynUNet convention: stacked on dim 1 in training mode
    out.mean().backward()
    with eval_mode(net):
        out = net(x)
    assert out.shape == (2, 3, *size)           # one tensor in eval mode (sliding-window inference)


def test_deep_supr_num_two():
    net = UMambaBot(2, 1, 2, features=(4, 8, 16, 32), deep_supervision=True, deep_supr_num=2)
    net.train()
    assert net(torch.randn(1, 1, 24, 16)).shape == (1, 3, 2, 24, 16)


@pytest.mark.parametrize("cls", NETS)
def test_eval_is_deterministic_with_dropout(cls):
    net = cls(2, 1, 2, dropout=0.3, **TINY[cls])
    x = torch.randn(1, 1, 16, 12)
    with eval_mode(net):
        a, b = net(x), net(x)
    assert torch.equal(a, b)
    net.train()
    assert net(x).shape == a.shape


@pytest.mark.parametrize("cls", NETS)
def test_pad_input_false_lists_valid_sizes(cls):
    net = cls(3, 1, 2, pad_input=False, **TINY[cls])
    stride = net.total_stride[0]
    with pytest.raises(ValueError, match=r"total stride.*valid sizes"):
        net(torch.randn(1, 1, stride + 1, stride, stride))
    with eval_mode(net):
        assert net(torch.randn(1, 1, stride, 2 * stride, stride)).shape == (1, 2, stride, 2 * stride, stride)


@pytest.mark.parametrize("cls", NETS)
def test_bad_input_shape(cls):
    net = cls(3, 2, 2, **TINY[cls])
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 1, 8, 8, 8))          # wrong channel count
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 2, 8, 8))             # 2-D input to a 3-D net


BAD_ARGS = [
    (UMambaBot, dict(spatial_dims=4)),
    (UMambaBot, dict(spatial_dims=1)),
    (UMambaBot, dict(in_channels=0)),
    (UMambaBot, dict(out_channels=-1)),
    (UMambaBot, dict(features=(8,))),
    (UMambaBot, dict(features=(8, 0))),
    (UMambaBot, dict(features=None, feature_size=0)),
    (UMambaBot, dict(norm_name="nonorm")),
    (UMambaBot, dict(norm_name=("group", {"num_groups": 3}))),
    (UMambaBot, dict(act="notanact")),
    (UMambaBot, dict(dropout=1.5)),
    (UMambaBot, dict(dropout=-0.1)),
    (UMambaBot, dict(kernel_size=4)),
    (UMambaBot, dict(strides=(1, 2))),
    (UMambaBot, dict(strides=(1, 2, 0))),
    (UMambaBot, dict(blocks_per_stage=0)),
    (UMambaBot, dict(deep_supervision=True, deep_supr_num=5)),
    (UMambaBot, dict(mamba_stages="middle")),
    (UMambaBot, dict(mamba_stages=(7,))),
    (UMambaBot, dict(d_state=0)),
    (UMambaBot, dict(expand=0)),
    (UMambaEnc, dict(spatial_dims=5)),
    (UMambaEnc, dict(features="wide")),
    (ScanSegNet, dict(spatial_dims=4)),
    (ScanSegNet, dict(orders="no_such_order")),
    (ScanSegNet, dict(depths=-1)),
    (ScanSegNet, dict(depths=(1, 1, 1))),
    (ScanSegNet, dict(stem_kernel_size=4)),
    (ScanSegNet, dict(deep_supervision=True, deep_supr_num=3)),
    (ScanSegNet, dict(norm_name="bogus")),
]


@pytest.mark.parametrize("cls,bad", BAD_ARGS, ids=[f"{c.__name__}-{'-'.join(map(str, b))}" for c, b in BAD_ARGS])
def test_ill_arg(cls, bad):
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=2, **TINY[cls])
    kwargs.update(bad)
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_mamba_stages_placement():
    bot = UMambaBot(3, 1, 2, features=(4, 8, 16, 32))
    enc = UMambaEnc(3, 1, 2, features=(4, 8, 16, 32))
    some = UMambaEnc(3, 1, 2, features=(4, 8, 16, 32), mamba_stages=(-1, 2))
    assert bot.mamba_stages == (3,) and enc.mamba_stages == (0, 1, 2, 3) and some.mamba_stages == (2, 3)
    assert UMambaBot(3, 1, 2, features=(4, 8), mamba_stages="none").mamba_stages == ()


def test_anisotropic_strides_and_feature_size():
    net = UMambaBot(3, 1, 2, feature_size=4, num_stages=3, strides=(1, (1, 2, 2), 2), max_features=8)
    assert net.features == (4, 8, 8) and net.total_stride == (2, 4, 4)
    with eval_mode(net):
        assert net(torch.randn(1, 1, 5, 9, 6)).shape == (1, 2, 5, 9, 6)


@pytest.mark.parametrize("orders", ["tri", "cross", "hilbert", "alternating", "bidirectional",
                                    ["raster", "slice_wise"]])
def test_scan_orders_any_size(orders):
    """Orders are computed from the feature-map shape at run time: one net, several sizes."""
    net = ScanSegNet(3, 1, 2, features=(4, 8), depths=2, d_state=2, orders=orders)
    with eval_mode(net):
        for size in ((8, 8, 8), (10, 6, 12)):
            assert net(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_alternating_orders_change_per_layer():
    net = ScanSegNet(3, 1, 2, features=(4, 8), depths=3, orders="alternating")
    names = [b.orders.name for b in net.scan_blocks()]
    assert len(names) == 6 and len(set(names)) == 6        # W+ W- H+ H- D+ D-
    tri = ScanSegNet(3, 1, 2, features=(4, 8), depths=1, orders="tri")
    assert [len(b.orders) for b in tri.scan_blocks()] == [3, 3]


def test_autocast_keeps_scan_in_fp32():
    net = UMambaBot(3, 1, 2, features=(4, 8))
    with eval_mode(net), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 1, 8, 8, 8))
    assert out.shape == (1, 2, 8, 8, 8) and torch.isfinite(out.float()).all()


def test_config_target_instantiation():
    from monai.bundle import ConfigParser
    parser = ConfigParser({"net": {"_target_": "vscan.models.medical.UMambaEnc", "spatial_dims": 2,
                                   "in_channels": 1, "out_channels": 2, "features": [4, 8],
                                   "mamba_stages": [1], "norm_name": ["group", {"num_groups": 2}]}})
    net = parser.get_parsed_content("net")
    assert isinstance(net, UMambaEnc) and net.mamba_stages == (1,)
