"""Causal depthwise conv against torch.nn.functional.conv1d, and its decode step."""
import pytest
import torch
import torch.nn.functional as F

from vscan.ops import causal_conv1d, causal_conv1d_update


@pytest.mark.parametrize("w", [2, 3, 4])
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("layout", ["bld", "bdl"])
def test_conv_matches_conv1d(w, act, layout):
    torch.manual_seed(w)
    b, L, d = 2, 11, 5
    x = torch.randn(b, L, d, dtype=torch.float64)
    wt, bias = torch.randn(d, w, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    # independent expectation: full conv1d with left padding, computed channel by channel
    ref = torch.stack([F.conv1d(F.pad(x[:, :, c:c + 1].transpose(1, 2), (w - 1, 0)), wt[c].view(1, 1, w), bias[c:c + 1])[:, 0]
                       for c in range(d)], dim=-1)
    if act:
        ref = F.silu(ref)
    inp = x if layout == "bld" else x.transpose(1, 2)
    y = causal_conv1d(inp, wt, bias, act, layout=layout)
    y = y if layout == "bld" else y.transpose(1, 2)
    torch.testing.assert_close(y, ref)


def test_conv_update_equals_full():
    torch.manual_seed(0)
    b, L, d, w = 2, 9, 4, 4
    x, wt, bias = torch.randn(b, L, d), torch.randn(d, w), torch.randn(d)
    full = causal_conv1d(x, wt, bias, "silu")
    state = torch.zeros(b, d, w - 1)
    steps = torch.stack([causal_conv1d_update(x[:, t], state, wt, bias, "silu") for t in range(L)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-6)
    # continuing a sequence from a state equals the full conv's tail
    state2 = x[:, 4:7].transpose(1, 2).contiguous()
    tail = causal_conv1d(x[:, 7:], wt, bias, "silu", initial_state=state2)
    torch.testing.assert_close(tail, full[:, 7:], rtol=1e-5, atol=1e-6)
