"""Bad input gets a TypeError / ValueError naming the argument and what came in."""
import pytest
import torch

from vscan.ops import causal_conv1d, selective_scan, selective_state_update


def ok_args(b=2, L=5, d=4, N=3):
    return dict(u=torch.randn(b, L, d), delta=torch.randn(b, L, d), A=-torch.rand(d, N),
                B=torch.randn(b, L, 1, N), C=torch.randn(b, L, 1, N))


@pytest.mark.parametrize("change,exc,match", [
    (dict(u=torch.randn(2, 5)), ValueError, "u: expected a 3-D tensor"),
    (dict(delta=torch.randn(2, 6, 4)), ValueError, "delta: expected the shape of u"),
    (dict(A=-torch.rand(5, 3)), ValueError, "A: expected shape"),
    (dict(A=-torch.rand(4, 300)), ValueError, "N must be in"),
    (dict(B=torch.randn(2, 5, 3, 3)), ValueError, "groups .3. must divide"),
    (dict(C=torch.randn(2, 4, 1, 3)), ValueError, "C: expected"),
    (dict(u=torch.randint(0, 3, (2, 5, 4))), TypeError, "u: expected a floating tensor"),
    (dict(A=torch.full((4, 3), float("nan"))), ValueError, "A: must be finite"),
    (dict(D=torch.randn(5)), ValueError, "D: expected shape"),
    (dict(initial_state=torch.randn(2, 4, 2)), ValueError, "initial_state"),
    (dict(z=torch.randn(2, 5, 3)), ValueError, "z: expected the shape of u"),
    (dict(B="nope"), TypeError, "B: expected a torch.Tensor"),
])
def test_selective_scan_bad_inputs(change, exc, match):
    args = ok_args()
    args.update(change)
    with pytest.raises(exc, match=match):
        selective_scan(**args)


def test_device_mismatch_named():
    args = ok_args()
    args["A"] = args["A"].to("meta")
    with pytest.raises(ValueError, match="one device"):
        selective_scan(**args)


def test_bad_layout_and_backend():
    with pytest.raises(ValueError, match="layout"):
        selective_scan(**ok_args(), layout="lbd")
    with pytest.raises(ValueError, match="VSCAN_BACKEND"):
        selective_scan(**ok_args(), backend="cuda-please")


def test_state_update_and_conv_bad_inputs():
    with pytest.raises(ValueError, match="x: expected shape"):
        selective_state_update(torch.zeros(2, 4, 3), torch.randn(2, 5), torch.randn(2, 4), -torch.rand(4, 3),
                               torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="width must be 2 to 4"):
        causal_conv1d(torch.randn(2, 5, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(2, 5, 4), torch.randn(4, 3), activation="relu6")
