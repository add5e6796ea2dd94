"""One decode step of the selective scan, updating the state in place.

Grid (channel blocks, batch); each program holds a [BLOCK_D, N] state tile.
"""
import torch
import triton
import triton.language as tl

from .scan_fwd import LOG2E, _softplus
from .launch import launch
from .selective_scan import _cdiv, _pow2


@triton.jit
def state_update_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
                        DIM, NSTATE, ch_per_group_B, ch_per_group_C, s_sb, s_xb, s_dtb, s_zb, s_Bb, s_Bg, s_Cb, s_Cg, s_ob,
                        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr,
                        HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    dmask = offs_d < DIM
    nmask = offs_n < NSTATE
    m2 = dmask[:, None] & nmask[None, :]
    x = tl.load(x_ptr + b * s_xb + offs_d, mask=dmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_dtb + offs_d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * NSTATE + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_Bb + (offs_d // ch_per_group_B)[:, None] * s_Bg + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_Cb + (offs_d // ch_per_group_C)[:, None] * s_Cg + offs_n[None, :], mask=m2, other=0.0).to(tl.float32)
    sp = state_ptr + b * s_sb + offs_d[:, None] * NSTATE + offs_n[None, :]
    h = tl.load(sp, mask=m2, other=0.0)
    h = h * tl.exp2(dt[:, None] * A * LOG2E) + (dt * x)[:, None] * Bv
    tl.store(sp, h, mask=m2)
    y = tl.sum(h * Cv, axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + offs_d, mask=dmask, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(out_ptr + b * s_ob + offs_d, y.to(out_ptr.dtype.element_ty), mask=dmask)


def selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """state (b, d, N) float32 contiguous, updated in place; B (b, G_B, N), C (b, G_C, N), each group
    count dividing d. Returns y (b, d)."""
    b, dim, N = state.shape
    if not state.is_contiguous():
        raise ValueError("state: the triton decode step updates the state in place and needs it contiguous")
    A32 = A.float().contiguous()
    B, C = B.contiguous(), C.contiguous()
    x, dt = x.contiguous(), dt.contiguous()
    out = torch.empty(b, dim, device=x.device, dtype=x.dtype)
    bn = _pow2(N)
    bd = max(1, min(64, 2048 // bn, _pow2(dim)))
    zz = z.contiguous() if z is not None else x
    launch(state_update_kernel, (_cdiv(dim, bd), b),
        state, x, dt, A32, B, C, D.float() if D is not None else A32, zz,
        dt_bias.float() if dt_bias is not None else A32, out,
        dim, N, dim // B.shape[1], dim // C.shape[1], state.stride(0), x.stride(0), dt.stride(0), zz.stride(0),
        B.stride(0), B.stride(1), C.stride(0), C.stride(1), out.stride(0),
        BLOCK_D=bd, BLOCK_N=bn, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), num_warps=4)
    return out
