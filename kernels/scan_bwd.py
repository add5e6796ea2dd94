"""Backward selective-scan kernel.

Chunks are visited in reverse. For each chunk and state n it recomputes h from the saved
chunk-start state (forward associative scan) and gets dh from a reverse scan of triples
(a_first, prod of the rest, partial sum), which yields dh[t] = x[t] + a[t+1] dh[t+1] without
shifting tiles or dividing by a. The carry between chunks, a[t0] * dh[t0], goes through two
ping-pong slots per segment; MODE 1 computes each segment's carry from a zero carry-in so that
segments can run in parallel (chained by `segment_combine_kernel(REVERSE=True)`).
Reductions over time (dA, dD, d delta_bias, constant dB/dC) stay in registers per program;
input-dependent dB/dC are reduced over the channel block and written once per (block, t).
"""
import triton
import triton.language as tl

from .scan_fwd import LOG2E, _channel_vector, _load_bc, _load_u_dt, _pair_combine


@triton.jit
def _triple_combine(fl, ql, gl, fe, qe, ge):
    # reverse scan: (fl, ql, gl) summarises the later suffix, (fe, qe, ge) the earlier part.
    # (first a, product of the other a's, sum_j prod(a[i+1..j]) x[j])
    return fe, qe * fl * ql, ge + qe * fl * gl


@triton.jit
def _col_insert(acc, cols, n, v):
    return tl.where(cols[None, :] == n, acc + v[:, None], acc)


@triton.jit
def _bc_grad(g, acc, ptr, n, cols, t_idx, tmask, m2, g0, g_d, blk_in_group, pid_b, s_pk, s_pb, s_pl, s_pg,
             VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr):
    """One state column of dB or dC. Input-dependent: summed over the channel block and written
    once per (block, t), or added atomically when the block straddles groups. Constant: summed
    over time into the register accumulator, which is returned."""
    if VARY:
        if SINGLE_GROUP:
            tl.store(ptr + blk_in_group * s_pk + pid_b * s_pb + t_idx * s_pl + g0 * s_pg + n,
                     tl.sum(g, axis=1), mask=tmask)
        else:
            tl.atomic_add(ptr + pid_b * s_pb + t_idx[:, None] * s_pl + g_d[None, :] * s_pg + n, g, mask=m2,
                          sem="relaxed")
    else:
        acc = _col_insert(acc, cols, n, tl.sum(g, axis=0))
    return acc


@triton.jit
def scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr,
    st_ptr, carry_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    L, DIM, NSTATE, n_chunks, chunks_per_seg, n_seg, ch_per_group, blocks_per_group,
    s_ub, s_ul, s_dtb, s_dtl, s_zb, s_zl, s_gb, s_gl,
    s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg,
    s_stb, s_stc, s_cb, s_cc,
    s_pk, s_pb, s_pl, s_pg,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARY: tl.constexpr, C_VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr,
    MODE: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < DIM
    offs_t = tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_N)
    g_d = offs_d // ch_per_group
    g0 = (pid_d * BLOCK_D) // ch_per_group
    blk_in_group = pid_d % blocks_per_group
    u_ptr += pid_b * s_ub
    dt_ptr += pid_b * s_dtb
    dout_ptr += pid_b * s_gb
    du_ptr += pid_b * s_ub
    ddt_ptr += pid_b * s_ub
    if HAS_Z:
        z_ptr += pid_b * s_zb
        dz_ptr += pid_b * s_ub
    if B_VARY:
        B_ptr += pid_b * s_Bb
    if C_VARY:
        C_ptr += pid_b * s_Cb
    st_ptr += pid_b * s_stb
    carry_ptr += pid_b * s_cb
    bias = _channel_vector(bias_ptr, offs_d, dmask, HAS_BIAS)
    Dv = _channel_vector(D_ptr, offs_d, dmask, HAS_D)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dBc_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dCc_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    first_row = offs_t[:, None] == 0
    c_begin = pid_s * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, n_chunks)
    for i in range(0, c_end - c_begin):
        c = c_end - 1 - i
        t_idx = c * BLOCK_T + offs_t
        tmask = t_idx < L
        m2 = tmask[:, None] & dmask[None, :]
        u, dt_pre, dt = _load_u_dt(u_ptr, dt_ptr, t_idx, offs_d, m2, s_ul, s_dtl, bias, HAS_BIAS, SOFTPLUS)
        dout = tl.load(dout_ptr + t_idx[:, None] * s_gl + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + t_idx[:, None] * s_zl + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
        else:
            dy = dout
        dtu = dt * u
        du = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        ddt = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        yacc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        slot_in = pid_s * 2 + c % 2
        slot_out = pid_s * 2 + (c + 1) % 2
        for n in range(NSTATE):
            A_n = tl.load(A_ptr + offs_d * NSTATE + n, mask=dmask, other=0.0).to(tl.float32)
            a = tl.exp2(dt * (A_n * LOG2E)[None, :])
            Cn = _load_bc(C_ptr, n, offs_d, t_idx, tmask, dmask, g0, g_d, s_Cb, s_Cl, s_Cg, NSTATE,
                          C_VARY, SINGLE_GROUP)
            x = dy * Cn
            carry = tl.load(carry_ptr + slot_in * s_cc + offs_d * NSTATE + n, mask=dmask, other=0.0)
            ones = tl.full([BLOCK_T, BLOCK_D], 1.0, tl.float32)
            _f, Q, Fv = tl.associative_scan((a, ones, x), 0, _triple_combine, reverse=True)
            dh = Fv + Q * carry[None, :]
            c_ptrs = carry_ptr + slot_out * s_cc + offs_d[None, :] * NSTATE + n + 0 * offs_t[:, None]
            tl.store(c_ptrs, a * dh, mask=first_row & dmask[None, :])
            if MODE == 0:
                Bn = _load_bc(B_ptr, n, offs_d, t_idx, tmask, dmask, g0, g_d, s_Bb, s_Bl, s_Bg, NSTATE,
                              B_VARY, SINGLE_GROUP)
                bx = dtu * Bn
                h0 = tl.load(st_ptr + c * s_stc + offs_d * NSTATE + n, mask=dmask, other=0.0)
                P, H = tl.associative_scan((a, bx), 0, _pair_combine)
                h = H + P * h0[None, :]
                if HAS_Z:
                    yacc += h * Cn
                dhdt = dh * dt
                du += dhdt * Bn
                hm = h - bx  # = a[t] * h[t-1]
                ddt += dh * (A_n[None, :] * hm + Bn * u)
                dA_acc = _col_insert(dA_acc, cols, n, tl.sum(dhdt * hm, axis=0))
                dBc_acc = _bc_grad(dhdt * u, dBc_acc, dB_ptr, n, cols, t_idx, tmask, m2, g0, g_d, blk_in_group,
                                   pid_b, s_pk, s_pb, s_pl, s_pg, B_VARY, SINGLE_GROUP)
                dCc_acc = _bc_grad(dy * h, dCc_acc, dC_ptr, n, cols, t_idx, tmask, m2, g0, g_d, blk_in_group,
                                   pid_b, s_pk, s_pb, s_pl, s_pg, C_VARY, SINGLE_GROUP)
        tl.debug_barrier()
        if MODE == 0:
            if HAS_D:
                du += dy * Dv[None, :]
                dD_acc += tl.sum(tl.where(m2, dy * u, 0.0), axis=0)
            if HAS_Z:
                y = yacc
                if HAS_D:
                    y += u * Dv[None, :]
                dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + t_idx[:, None] * s_ul + offs_d[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_pre)
            ddt = tl.where(m2, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            tl.store(du_ptr + t_idx[:, None] * s_ul + offs_d[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
            tl.store(ddt_ptr + t_idx[:, None] * s_ul + offs_d[None, :], ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
    if MODE == 0:
        seg_off = (pid_b * n_seg + pid_s)
        nmask = dmask[:, None] & (cols[None, :] < NSTATE)
        dn_ptrs = seg_off * DIM * NSTATE + offs_d[:, None] * NSTATE + cols[None, :]
        tl.store(dA_ptr + dn_ptrs, dA_acc, mask=nmask)
        if not B_VARY:
            tl.store(dB_ptr + dn_ptrs, dBc_acc, mask=nmask)
        if not C_VARY:
            tl.store(dC_ptr + dn_ptrs, dCc_acc, mask=nmask)
        tl.store(dD_ptr + seg_off * DIM + offs_d, dD_acc, mask=dmask)
        tl.store(dbias_ptr + seg_off * DIM + offs_d, dbias_acc, mask=dmask)
