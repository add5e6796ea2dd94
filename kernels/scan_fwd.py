"""Forward selective-scan kernels.

A program owns channels [d0, d0 + BLOCK_D) of one batch row and walks its segment of the
sequence in chunks of BLOCK_T steps. Inside a chunk, for each state n, the recurrence
h[t] = a[t] h[t-1] + b[t] is an associative scan over the [BLOCK_T, BLOCK_D] tile, seeded by
the state carried from the previous chunk. The (batch, length, channels, N) tensor never
leaves the chip: only chunk-start states (batch, chunks, channels, N) are written, and only
when backward needs them (SAVE_ALL); otherwise two ping-pong slots per segment suffice.

MODE 0 writes the output; MODE 1 (segment-parallel pre-pass) computes each segment's end
state from a zero start plus the segment's sum of dt, which `_segment_combine_fwd` chains.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _pair_combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier segment: h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _channel_vector(ptr, offs_d, dmask, PRESENT: tl.constexpr):
    """An optional per-channel float32 vector (D, delta_bias); zeros when absent."""
    v = tl.zeros_like(offs_d).to(tl.float32)
    if PRESENT:
        v = tl.load(ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)
    return v


@triton.jit
def _load_u_dt(u_ptr, dt_ptr, t_idx, offs_d, m2, s_ul, s_dtl, bias,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """u and the step size dt of one chunk, plus dt before the softplus (backward's chain rule).
    Padded steps get dt = 0, so a = 1 and b = 0: the state passes through them unchanged."""
    u = tl.load(u_ptr + t_idx[:, None] * s_ul + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
    dt_pre = tl.load(dt_ptr + t_idx[:, None] * s_dtl + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt_pre += bias[None, :]
    dt = dt_pre
    if SOFTPLUS:
        dt = _softplus(dt_pre)
    return u, dt_pre, tl.where(m2, dt, 0.0)


@triton.jit
def _load_bc(ptr, n, offs_d, t_idx, tmask, dmask, g0, g_d, s_b, s_l, s_g, NSTATE,
             VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr):
    """Column n of B or C as a tile broadcastable to [BLOCK_T, BLOCK_D]."""
    if VARY:
        if SINGLE_GROUP:
            v = tl.load(ptr + t_idx * s_l + g0 * s_g + n, mask=tmask, other=0.0).to(tl.float32)
            return v[:, None]
        else:
            v = tl.load(ptr + t_idx[:, None] * s_l + g_d[None, :] * s_g + n,
                        mask=tmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            return v
    else:
        v = tl.load(ptr + offs_d * NSTATE + n, mask=dmask, other=0.0).to(tl.float32)
        return v[None, :]


@triton.jit
def scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    st_ptr, dtsum_ptr,
    L, DIM, NSTATE, n_chunks, chunks_per_seg, n_seg, ch_per_group,
    s_ub, s_ul, s_dtb, s_dtl, s_zb, s_zl, s_ob, s_ol,
    s_Bb, s_Bl, s_Bg, s_Cb, s_Cl, s_Cg,
    s_stb, s_stc,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARY: tl.constexpr, C_VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr,
    MODE: tl.constexpr, SAVE_ALL: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = offs_d < DIM
    offs_t = tl.arange(0, BLOCK_T)
    g_d = offs_d // ch_per_group
    g0 = (pid_d * BLOCK_D) // ch_per_group
    u_ptr += pid_b * s_ub
    dt_ptr += pid_b * s_dtb
    out_ptr += pid_b * s_ob
    if HAS_Z:
        z_ptr += pid_b * s_zb
    if B_VARY:
        B_ptr += pid_b * s_Bb
    if C_VARY:
        C_ptr += pid_b * s_Cb
    st_ptr += pid_b * s_stb
    bias = _channel_vector(bias_ptr, offs_d, dmask, HAS_BIAS)
    Dv = _channel_vector(D_ptr, offs_d, dmask, HAS_D)
    dtsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    last_row = offs_t[:, None] == BLOCK_T - 1
    c_begin = pid_s * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, n_chunks)
    for c in range(c_begin, c_end):
        t_idx = c * BLOCK_T + offs_t
        tmask = t_idx < L
        m2 = tmask[:, None] & dmask[None, :]
        u, _dt_pre, dt = _load_u_dt(u_ptr, dt_ptr, t_idx, offs_d, m2, s_ul, s_dtl, bias, HAS_BIAS, SOFTPLUS)
        if MODE == 1:
            dtsum += tl.sum(dt, axis=0)
        dtu = dt * u
        y = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        if SAVE_ALL:
            slot_in = c
            slot_out = c + 1
        else:
            slot_in = pid_s * 2 + c % 2
            slot_out = pid_s * 2 + (c + 1) % 2
        # the last chunk of a segment leaves the next segment's start slot to the combine kernel
        if SAVE_ALL:
            write_out = (c + 1 < c_end) | (c + 1 == n_chunks)
        else:
            write_out = c >= 0
        for n in range(NSTATE):
            A_n = tl.load(A_ptr + offs_d * NSTATE + n, mask=dmask, other=0.0).to(tl.float32) * LOG2E
            a = tl.exp2(dt * A_n[None, :])
            Bn = _load_bc(B_ptr, n, offs_d, t_idx, tmask, dmask, g0, g_d, s_Bb, s_Bl, s_Bg, NSTATE,
                          B_VARY, SINGLE_GROUP)
            bx = dtu * Bn
            h0 = tl.load(st_ptr + slot_in * s_stc + offs_d * NSTATE + n, mask=dmask, other=0.0)
            P, H = tl.associative_scan((a, bx), 0, _pair_combine)
            h = H + P * h0[None, :]
            if MODE == 0:
                Cn = _load_bc(C_ptr, n, offs_d, t_idx, tmask, dmask, g0, g_d, s_Cb, s_Cl, s_Cg, NSTATE,
                              C_VARY, SINGLE_GROUP)
                y += h * Cn
            out_ptrs = st_ptr + slot_out * s_stc + offs_d[None, :] * NSTATE + n + 0 * offs_t[:, None]
            tl.store(out_ptrs, h, mask=last_row & dmask[None, :] & write_out)
        tl.debug_barrier()
        if MODE == 0:
            if HAS_D:
                y += u * Dv[None, :]
            if HAS_Z:
                zz = tl.load(z_ptr + t_idx[:, None] * s_zl + offs_d[None, :], mask=m2, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_ptr + t_idx[:, None] * s_ol + offs_d[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)
    if MODE == 1:
        tl.store(dtsum_ptr + (pid_b * n_seg + pid_s) * DIM + offs_d, dtsum, mask=dmask)


@triton.jit
def segment_combine_kernel(
    st_ptr, loc_ptr, dtsum_ptr, A_ptr,
    DIM, NSTATE, n_chunks, chunks_per_seg, n_seg, K_DIR,
    s_stb, s_stc, s_lb, s_lc,
    BLOCK: tl.constexpr, SAVE_ALL: tl.constexpr, REVERSE: tl.constexpr, ZERO_START: tl.constexpr = False,
):
    """Chain segment summaries: S_next = exp(A * dtsum_seg) * S + E_seg (one program column per
    batch row; with K_DIR > 1 a row is a (batch, direction) pair).

    Forward: S starts at the initial state (slot of chunk 0) and each segment's start slot is
    written. Reverse (backward): S starts at the carry into the last segment and each
    segment's carry-in slot (read by its last chunk) is written. ZERO_START: S starts from zeros
    instead (no initial state / no gradient of the last state; that slot is not read).
    """
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DIM * NSTATE
    d = offs // NSTATE
    # batch rows are (batch, direction) flattened; A is (K_DIR, DIM, NSTATE)
    A = tl.load(A_ptr + (pid_b % K_DIR) * DIM * NSTATE + offs, mask=mask, other=0.0).to(tl.float32) * LOG2E
    st_ptr += pid_b * s_stb
    loc_ptr += pid_b * s_lb
    if REVERSE:
        c_last = n_chunks - 1
        s_last = n_seg - 1
        if ZERO_START:
            S = tl.zeros([BLOCK], dtype=tl.float32)
        else:
            S = tl.load(st_ptr + (s_last * 2 + c_last % 2) * s_stc + offs, mask=mask, other=0.0)
        for i in range(0, n_seg - 1):
            s = s_last - i
            c_begin = s * chunks_per_seg
            E = tl.load(loc_ptr + (s * 2 + (c_begin + 1) % 2) * s_lc + offs, mask=mask, other=0.0)
            ds = tl.load(dtsum_ptr + (pid_b * n_seg + s) * DIM + d, mask=mask, other=0.0)
            S = tl.exp2(A * ds) * S + E
            c_last_prev = c_begin - 1
            tl.store(st_ptr + ((s - 1) * 2 + c_last_prev % 2) * s_stc + offs, S, mask=mask)
    else:
        if ZERO_START:
            S = tl.zeros([BLOCK], dtype=tl.float32)
        else:
            S = tl.load(st_ptr + offs, mask=mask, other=0.0)  # slot 0: the initial state
        for s in range(0, n_seg - 1):
            c_end = (s + 1) * chunks_per_seg
            E = tl.load(loc_ptr + (s * 2 + c_end % 2) * s_lc + offs, mask=mask, other=0.0)
            ds = tl.load(dtsum_ptr + (pid_b * n_seg + s) * DIM + d, mask=mask, other=0.0)
            S = tl.exp2(A * ds) * S + E
            if SAVE_ALL:
                slot = c_end
            else:
                slot = (s + 1) * 2 + c_end % 2
            tl.store(st_ptr + slot * s_stc + offs, S, mask=mask)
