"""HybridHeadMixer's branch combination: out_proj of the average of the two scaled branches,
with or without the RMSNorm on the attention branch, from the branches computed on their own."""
import pytest
import torch

from vscan.layers.hybrid_head import HybridHeadMixer


def _rms(x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _check_branch_average(m, attn_norm, attn_scale, ssm_scale):
    x = torch.randn(2, 9, m.d_model, dtype=torch.float64)
    a, s = m.attn(x), m.ssm(x)                      # the two branches, each at width d_inner
    a_out = attn_scale * (_rms(a) if attn_norm else a)
    expected = m.out_proj(0.5 * (a_out + ssm_scale * _rms(s)))
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)   # RMSNorm computes in float32


@pytest.mark.parametrize("attn_norm", [True, False])
def test_output_is_the_average_of_the_scaled_branches(attn_norm):
    torch.manual_seed(0)
    m = HybridHeadMixer(12, num_heads=2, expand=2, d_state=4, attn_norm=attn_norm, attn_scale=0.3,
                        ssm_scale=1.7).double()
    torch.testing.assert_close(m.attn_norm.weight, torch.full((24,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(m.ssm_norm.weight, torch.full((24,), 1.7, dtype=torch.float64))
    _check_branch_average(m, attn_norm, 0.3, 1.7)


def test_unscaled_unnormed_attention_branch():
    torch.manual_seed(0)
    m = HybridHeadMixer(12, num_heads=2, expand=2, d_state=4, attn_norm=False, attn_scale=None,
                        ssm_scale=1.7).double()
    assert not list(m.attn_norm.parameters())
    _check_branch_average(m, False, 1.0, 1.7)
    with pytest.raises(ValueError, match="attn_scale"):
        HybridHeadMixer(12, num_heads=2, attn_norm=True, attn_scale=None)


def test_unnormed_attention_branch_keeps_its_magnitude():
    # scaling the attention values by 10 scales the un-normalised branch's contribution by 10
    # and leaves the normalised one unchanged: the property the option exists for
    torch.manual_seed(0)
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    for attn_norm, ratio in ((True, 1.0), (False, 10.0)):
        m = HybridHeadMixer(8, num_heads=2, d_state=4, attn_norm=attn_norm, norm_eps=1e-30).double()
        a1 = m.attn_norm(m.attn(x))
        with torch.no_grad():
            m.attn.v_proj.weight.mul_(10)
        a10 = m.attn_norm(m.attn(x))
        torch.testing.assert_close(a10, ratio * a1, rtol=1e-5, atol=1e-6)   # RMSNorm computes in float32
