"""Sequential selective-scan kernels: each thread owns whole channels and walks time step by step.

Why: the chunked kernels (scan_fwd.py / scan_bwd.py) run ``tl.associative_scan`` over a
[time, channel] tile per state, and Triton spreads the time axis over lanes and warps, so
every element pays shuffle and shared-memory rounds. Here the register tile is
[BLOCK_N, BLOCK_D] (states x channels); with BLOCK_D = 32 * num_warps the lanes and warps
fall on the channel axis and each thread keeps all N states of its channel(s), so one step
costs about one exp2 and three FMAs per (channel, state) and the sum over states for y is
register-local. Every loop issues the loads of step t+1 (t-1 going backwards) before the
arithmetic of step t: they do not depend on the state, and the loop is latency-bound without.

Parallelism over the sequence comes from segments exactly as in the chunked kernels (and with
the same state slots, so `segment_combine_kernel` chains both): MODE 1 computes a segment's
end state (forward) or carry (backward) from a zero start. The combine never reads the last
segment's summary going forwards or the first one's going backwards, so the host launches
MODE 1 over the other n_seg - 1 segments only.

Backward, per chunk of BLOCK_T steps (reversed): recompute the states forward from the saved
chunk-start state, keeping one state per SUB steps in a small per-program scratch buffer; then
per sub-chunk (reversed) recompute its SUB states into the scratch and walk it backwards (with
BLOCK_T == SUB the first recompute is skipped: the saved state starts the only sub-chunk). The
scratch is (SUB + BLOCK_T / SUB) state tiles per program, written and re-read by the same
thread within a few steps (it stays in L1/L2); nothing of size batch*length*channels*N exists.
dB and dC, when time-varying, are summed over the channel block at every step (cross-lane
reductions) and added atomically into one float32 buffer; batching that per sub-chunk through
the scratch was measured slower on an H100.

Several scan directions in one launch (``vscan.kernels.multi_scan``): the batch grid axis runs
over (batch, direction) pairs; direction k reads the grid row ``index[k, t]`` at step t (one
scalar load, prefetched with the rest) and uses its own A, D and delta_bias; outputs go to the
grid row, added atomically when the directions are merged by sum/mean (OUT_ATOMIC, and DU_ATOMIC
for the gradient of a shared u). Without an index (HAS_IDX off) a direction reads row t: the
single scan is the case K = 1.

The backward can split a block's N states over NSPLIT programs (grid axis 0 = channel block x
split): a thread then holds N / NSPLIT states, which cuts the reverse pass's registers (about
255 at N = 16 without the split); the sums over N (du, ddelta, dz) become float32 atomic adds,
one per split. The host splits from N = 32 on (from N = 16 in the build with dt_proj inside);
see SEQ_NSPLIT in selective_scan.py for the measurements.

The per-step sums over a block's channels (dB and dC when they vary in time, and the low-rank
dt gradient) are warp reduce-scatters in inline PTX (``_lane_sum``) on a GPU, and cross-lane
sums under the interpreter. All of this assumes the register layout described in
LANES_ON_CHANNELS below; ``tools/kernel_report.py`` shows the layout a Triton version builds.

Every atomic add here is ``sem="relaxed"``: nothing reads the summed buffers before the kernel
ends, and the default (acq_rel) compiles to a GPU-wide memory fence plus an L1 invalidation
around each add (MEMBAR.ALL.GPU / CCTL.IVALL in the SASS), which cost the backward 5-7% and the
multi-direction forward 30% on an H200 (results/bench_scan_h200.md).
"""
import triton
import triton.language as tl

from .scan_fwd import LOG2E, _channel_vector, _softplus

LN2 = tl.constexpr(0.6931471805599453)

# SEGMENT_ARGS: the host picks the segment split per launch from the compiled kernel's occupancy
# (kernels/selective_scan.py, _segments), so the integer arguments that follow from it (the
# split itself and the strides of buffers sized by it) are not specialised on: the kernel
# compiled before the split is chosen is the one that runs.


def _lane_sum_ptx(m: int) -> str:
    """PTX of a reduce-scatter over the 32 lanes of a warp: each lane brings m values (m a power
    of two <= 32), and after log2(m) halving rounds (lane bit 16, 8, ...: a lane keeps one half of
    its values, sends the other half to its partner and adds what it receives) plus the plain
    butterfly rounds left, every lane holds the warp-wide sum of one of the m slots (slot
    ``(lane >> (5 - log2 m)) & (m - 1)``), copied to all its m outputs. m - 1 + 5 - log2(m)
    shuffles instead of the 5 m of m separate butterfly sums (9 vs 40 at m = 8)."""
    lines = ["{", ".reg .pred %_ls_p;", ".reg .b32 %_ls_l, %_ls_b;",
             f".reg .f32 %_ls_a<{m}>, %_ls_s, %_ls_k, %_ls_r;", "mov.u32 %_ls_l, %laneid;"]
    lines += [f"mov.f32 %_ls_a{i}, ${m + i};" for i in range(m)]
    width, bit = m, 16
    while width > 1:
        half = width // 2
        lines += [f"and.b32 %_ls_b, %_ls_l, {bit};", "setp.ne.u32 %_ls_p, %_ls_b, 0;"]
        for i in range(half):   # lane bit set: keep the upper half (slots i + half), send the lower
            lines += [f"selp.f32 %_ls_s, %_ls_a{i}, %_ls_a{i + half}, %_ls_p;",
                      f"selp.f32 %_ls_k, %_ls_a{i + half}, %_ls_a{i}, %_ls_p;",
                      f"shfl.sync.bfly.b32 %_ls_r, %_ls_s, {bit}, 0x1f, 0xffffffff;",
                      f"add.f32 %_ls_a{i}, %_ls_k, %_ls_r;"]
        width, bit = half, bit // 2
    while bit >= 1:
        lines += [f"shfl.sync.bfly.b32 %_ls_r, %_ls_a0, {bit}, 0x1f, 0xffffffff;", "add.f32 %_ls_a0, %_ls_a0, %_ls_r;"]
        bit //= 2
    lines += [f"mov.f32 ${i}, %_ls_a0;" for i in range(m)]
    return "\n".join(lines + ["}"])


def _lane_sum_constraints(m: int) -> str:
    return ",".join(["=f"] * m + ["f"] * m)


_LS1, _LS1_C = tl.constexpr(_lane_sum_ptx(1)), tl.constexpr(_lane_sum_constraints(1))
_LS2, _LS2_C = tl.constexpr(_lane_sum_ptx(2)), tl.constexpr(_lane_sum_constraints(2))
_LS4, _LS4_C = tl.constexpr(_lane_sum_ptx(4)), tl.constexpr(_lane_sum_constraints(4))
_LS8, _LS8_C = tl.constexpr(_lane_sum_ptx(8)), tl.constexpr(_lane_sum_constraints(8))
_LS16, _LS16_C = tl.constexpr(_lane_sum_ptx(16)), tl.constexpr(_lane_sum_constraints(16))
_LS32, _LS32_C = tl.constexpr(_lane_sum_ptx(32)), tl.constexpr(_lane_sum_constraints(32))


@triton.jit
def _first(a, b):
    return a


@triton.jit
def _lane_sum(x, M: tl.constexpr):
    """Sums over the channels of a one-warp channel block (BLOCK_D = 32, num_warps 1) of an
    [M, BLOCK_D] tile whose M rows of a channel are held by one thread (the sequential layout).
    Returns (v, j, lead), each [BLOCK_D]: the element of channel c holds v = the sum over all 32
    channels of row j (tensor row, not state index); ``lead`` marks one copy of each row's sum.
    A warp reduce-scatter (``_lane_sum_ptx``) instead of M cross-lane sums: the per-step dB / dC
    and low-rank dt sums took 5 shuffles per row and value, which the shuffle unit (one warp
    instruction per clock per SM) could not keep up with."""
    if M == 1:
        T = tl.inline_asm_elementwise(_LS1, _LS1_C, [x], dtype=tl.float32, is_pure=True, pack=1)
        sh = 5
    elif M == 2:
        T = tl.inline_asm_elementwise(_LS2, _LS2_C, [x], dtype=tl.float32, is_pure=True, pack=2)
        sh = 4
    elif M == 4:
        T = tl.inline_asm_elementwise(_LS4, _LS4_C, [x], dtype=tl.float32, is_pure=True, pack=4)
        sh = 3
    elif M == 8:
        T = tl.inline_asm_elementwise(_LS8, _LS8_C, [x], dtype=tl.float32, is_pure=True, pack=8)
        sh = 2
    elif M == 16:
        T = tl.inline_asm_elementwise(_LS16, _LS16_C, [x], dtype=tl.float32, is_pure=True, pack=16)
        sh = 1
    else:
        T = tl.inline_asm_elementwise(_LS32, _LS32_C, [x], dtype=tl.float32, is_pure=True, pack=32)
        sh = 0
    v = tl.reduce(T, 0, _first)      # all M outputs of a thread hold its sum
    lane = tl.inline_asm_elementwise("mov.u32 $0, %laneid;", "=r,f", [v], dtype=tl.int32, is_pure=True, pack=1)
    return v, (lane >> sh) & (M - 1), (lane & (32 // M - 1)) == 0


@triton.jit
def _state_index(BLOCK_N: tl.constexpr):
    """State indices N-1 .. 0. Counting down hides the contiguity of the N axis from Triton's
    coalescing pass, so that (with the LANES_ON_CHANNELS hint) each thread keeps all N states
    of its channel (lanes and warps on channels; no shuffles for sums over N), and the
    per-state addresses stay compile-time offsets. The order of the states is immaterial."""
    return BLOCK_N - 1 - tl.arange(0, BLOCK_N)


@triton.jit
def _tile_index(pid_d, DIM, NSTATE, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr, pid_n):
    """Channel and state indices of a program's [BLOCK_N, BLOCK_D] tile and their masks; the
    tile holds states pid_n * BLOCK_N ... (pid_n > 0 only when a backward splits N)."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    local_n = _state_index(BLOCK_N)
    offs_n = pid_n * BLOCK_N + local_n
    dmask = offs_d < DIM
    if EVEN_N:  # a mask of compile-time trues, folded away: no per-state mask arithmetic per step
        nmask = local_n < BLOCK_N
    else:
        nmask = offs_n < NSTATE
    return offs_d, offs_n, dmask, nmask, nmask[:, None] & dmask[None, :]


@triton.jit
def _opaque(p, GPU: tl.constexpr):
    """The pointer(s) p, passed through an empty inline asm on a GPU. Loads at ``_opaque(row) +
    constant offsets`` then compile to one base register with immediate offsets: given ``ptr +
    variant + constant`` with ptr loop-invariant, LLVM's LICM re-associates it to hoist ``ptr +
    constant`` out of the loop, which kept one 64-bit pointer per state of B, C and the scratch
    tile live across the backward's loops, and an address computation per load inside them."""
    if GPU:
        q = tl.inline_asm_elementwise("mov.b64 $0, $1;", "=l,l", [p.to(tl.int64, bitcast=True)], dtype=tl.int64,
                                      is_pure=True, pack=1)
        out = q.to(p.dtype, bitcast=True)
    else:
        out = p
    return out


@triton.jit
def _lane_rows(lane_ptr, rows, GPU: tl.constexpr):
    """[BLOCK_N, BLOCK_D] pointers for a tile accessed inside a loop: each lane's pointer
    ``lane_ptr`` ([BLOCK_D]) through ``_opaque``, plus the rows' constant offsets ``rows``
    ([BLOCK_N, 1]), so each row is an immediate offset rather than a hoisted 64-bit pointer (the
    forward's chunk-state store alone held 70 registers that way). Used for the chunk states
    (``rows`` = the state index) and the backward's scratch tiles."""
    return tl.max_contiguous(_opaque(lane_ptr, GPU)[None, :] + rows, [1, 4])      # LANES_ON_CHANNELS


@triton.jit
def _exp2(x, FAST: tl.constexpr):
    """2**x; on a GPU one ex2.approx.ftz (flushing results below 2**-126, the state's decay, to 0)
    instead of ex2 plus its denormal-range fix-up. The interpreter has no inline assembly."""
    if FAST:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _approx(x, OP: tl.constexpr):
    """One MUFU instruction on a GPU: OP = ``lg2`` (log2) or ``rcp`` (1 / x), PTX's .approx forms."""
    if OP == "lg2":
        y = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        y = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    return y


@triton.jit
def _softplus_seq(x, FAST: tl.constexpr):
    """softplus(x) = max(x, 0) + log(1 + exp(-|x|)); on a GPU the log is one lg2.approx instead
    of libdevice's logf polynomial, which compiled to 11 FFMA in each of the backward's three
    loops. Its absolute error near 1 (about 2**-22) is of the order of the float32 rounding of
    1 + exp(-|x|) that the exact form already has, so for very negative x both are accurate in
    absolute, not relative, terms; both give 0 where exp(-|x|) < 2**-24."""
    if FAST:
        y = tl.maximum(x, 0.0) + _approx(1.0 + _exp2(-tl.abs(x) * LOG2E, True), "lg2") * LN2
    else:
        y = _softplus(x)
    return y


@triton.jit
def _sigmoid_seq(x, FAST: tl.constexpr):
    """1 / (1 + exp(-x)); on a GPU with one rcp.approx instead of an IEEE division (a MUFU.RCP
    plus Newton steps and a slow-path branch)."""
    if FAST:
        y = _approx(1.0 + _exp2(-x * LOG2E, True), "rcp")
    else:
        y = tl.sigmoid(x)
    return y


# LANES_ON_CHANNELS: the [BLOCK_N, BLOCK_D] tiles that touch memory carry the hint
# ``tl.max_contiguous(off, [1, 4])`` (applied where the offsets are computed: a hint on a
# function argument is dropped). Triton's coalescing pass orders a tile's axes by contiguity,
# and neither axis of these offsets is contiguous (the state index counts down). Triton 3.8
# then keeps the default order (lanes and warps on channels, each thread holding all states of
# its channel), but Triton 3.6 puts the states on the fastest axis and spreads them over 8-16
# lanes, which turns every sum over states into shuffles (64 per step in the N = 16 forward)
# and every [BLOCK_D] vector into layout conversions. The hint claims 4-element runs along
# channels; the counting-down state index keeps the tile's divisibility at 1, so no access
# is vectorized on that claim.


@triton.jit
def _state_ptrs(ptr, offs_n, offs_d, NSTATE):
    """[BLOCK_N, BLOCK_D] pointers into a (channels, N) row-major state / parameter block."""
    off = offs_d[None, :] * NSTATE + offs_n[:, None]
    return ptr + tl.max_contiguous(off, [1, 4])      # see LANES_ON_CHANNELS


# VEC_BC (the forward): one 16-byte load per 8 states of a B / C row (bf16 or fp16), unpacked to
# float32 in the same inline PTX, instead of one 2-byte load per state. Triton cannot vectorize
# these loads itself: the state index counts down (see _state_index), so it sees no contiguous
# run. Each instance of the asm takes 8 consecutive elements of a thread's states, which with
# the counting-down index are states 8g + 7 .. 8g of one group g, and all 8 of its pointer
# operands are that group's base: it reads the first and returns the fields in that descending
# order. The host turns it on only where each thread holds all of its channel's states and every
# group base is 16-byte aligned (kernels/selective_scan.py, _vec_bc).
# The pointers carry a per-lane zero (_lane_zero): with a warp-uniform address ptxas moves the
# unpacking to the uniform datapath (R2UR, USHF, ULOP3, UMOV back), and the forward's step was
# as long as with 2-byte loads. With it the training forward's loop is 216 instructions instead
# of 256 (static SASS, sm90, Triton 3.8; the 1-D scan with z). The backward keeps 2-byte loads:
# the same loads there measured no faster (see SEQ_VEC_BC).
_BF16X8 = tl.constexpr("""{ .reg .b32 w<4>;
ld.global.nc.v4.b32 {w0, w1, w2, w3}, [$8];
and.b32 $0, w3, 0xFFFF0000; shl.b32 $1, w3, 16; and.b32 $2, w2, 0xFFFF0000; shl.b32 $3, w2, 16;
and.b32 $4, w1, 0xFFFF0000; shl.b32 $5, w1, 16; and.b32 $6, w0, 0xFFFF0000; shl.b32 $7, w0, 16; }""")
_F16X8 = tl.constexpr("""{ .reg .b32 w<4>; .reg .b16 h<8>;
ld.global.nc.v4.b32 {w0, w1, w2, w3}, [$8];
mov.b32 {h0, h1}, w0; mov.b32 {h2, h3}, w1; mov.b32 {h4, h5}, w2; mov.b32 {h6, h7}, w3;
cvt.f32.f16 $0, h7; cvt.f32.f16 $1, h6; cvt.f32.f16 $2, h5; cvt.f32.f16 $3, h4;
cvt.f32.f16 $4, h3; cvt.f32.f16 $5, h2; cvt.f32.f16 $6, h1; cvt.f32.f16 $7, h0; }""")
_X8_CONSTRAINTS = tl.constexpr("=r,=r,=r,=r,=r,=r,=r,=r,l,l,l,l,l,l,l,l")


@triton.jit
def _lane_zero(offs_d):
    """0 for every lane, computed from the lane's channel so that the compiler cannot tell."""
    return offs_d // 2147483647


@triton.jit
def _row_x8(row, offs_n, offs_d):
    """A B / C row's states offs_n (counting down, 8 per group) as a float32 [BLOCK_N, BLOCK_D]
    tile (every channel the same), one 16-byte load per group of 8 (see VEC_BC)."""
    base = (row + _lane_zero(offs_d)[None, :] + ((offs_n // 8) * 8)[:, None]).to(tl.int64, bitcast=True)
    if row.dtype.element_ty == tl.bfloat16:
        w = tl.inline_asm_elementwise(_BF16X8, _X8_CONSTRAINTS, [base], dtype=tl.int32, is_pure=True, pack=8)
    else:
        w = tl.inline_asm_elementwise(_F16X8, _X8_CONSTRAINTS, [base], dtype=tl.int32, is_pure=True, pack=8)
    return w.to(tl.float32, bitcast=True)


@triton.jit
def _step_bc(ptr, t, const, offs_n, nmask, offs_d, dmask, g0, g_d, s_l, s_g,
             VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr, GPU: tl.constexpr = False, VEC: tl.constexpr = False):
    """B or C at step t, broadcastable to [BLOCK_N, BLOCK_D]; the constant tile when not VARY.
    GPU: the row pointer goes through ``_opaque`` (the backward; the forward was not measured).
    VEC: 8 states per load (see VEC_BC; the forward only)."""
    # one return: compiled Triton (unlike the interpreter) rejects returns of different shapes
    if VARY:
        if SINGLE_GROUP and VEC:
            v = _row_x8(ptr + t * s_l + g0 * s_g, offs_n, offs_d)
        elif SINGLE_GROUP:
            v = tl.load(_opaque(ptr + t * s_l + g0 * s_g, GPU) + offs_n, mask=nmask, other=0.0).to(tl.float32)[:, None]
        else:
            off = g_d[None, :] * s_g + offs_n[:, None]
            v = tl.load(ptr + t * s_l + tl.max_contiguous(off, [1, 4]),      # LANES_ON_CHANNELS
                        mask=nmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    else:
        v = const
    return v


@triton.jit
def _row(ptr, t, s_l, offs_d, dmask, PRESENT: tl.constexpr):
    """Row t of a (length, channels) input as float32 [BLOCK_D]; zeros when absent."""
    if PRESENT:
        v = tl.load(ptr + t * s_l + offs_d, mask=dmask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros_like(offs_d).to(tl.float32)
    return v


@triton.jit
def _row_id(idx_ptr, t, HAS_IDX: tl.constexpr):
    """The grid row visited at step t: ``index[t]`` of this program's direction, else t."""
    if HAS_IDX:
        r = tl.load(idx_ptr + t)
    else:
        r = t
    return r


@triton.jit
def _dir_split(pid_b, K_DIR):
    """The batch grid axis is (batch, direction) flattened: pid_b = batch * K_DIR + direction."""
    return pid_b // K_DIR, pid_b % K_DIR


@triton.jit
def _dir_params(A_ptr, D_ptr, bias_ptr, idx_ptr, kk, L, DIM, NSTATE, HAS_IDX: tl.constexpr):
    """Direction kk's A (K, d, N), D and delta_bias (K, d), all contiguous, and its index row."""
    if HAS_IDX:
        idx_ptr += kk * L
    return A_ptr + kk * DIM * NSTATE, D_ptr + kk * DIM, bias_ptr + kk * DIM, idx_ptr


@triton.jit
def _rank_index(BLOCK_R: tl.constexpr, RANK, LOWRANK: tl.constexpr):
    """Indices R-1 .. 0 of the low-rank dt axis (counting down for the register layout, as
    ``_state_index``) and their mask."""
    offs_r = BLOCK_R - 1 - tl.arange(0, BLOCK_R)
    return offs_r, offs_r < RANK


@triton.jit
def _lowrank_tile(W_ptr, offs_r, rmask, offs_d, dmask, RANK, LOWRANK: tl.constexpr):
    """The [BLOCK_R, BLOCK_D] tile of a direction's dt_proj weight (d, R) row-major, float32."""
    if LOWRANK:
        off = offs_d[None, :] * RANK + offs_r[:, None]
        v = tl.load(W_ptr + tl.max_contiguous(off, [1, 4]), mask=rmask[:, None] & dmask[None, :],   # LANES_ON_CHANNELS
                    other=0.0).to(tl.float32)
    else:
        v = tl.zeros([1, 1], dtype=tl.float32)
    return v


@triton.jit
def _dt_load(dt_ptr, r, s_l, offs_d, dmask, offs_r, rmask, LOWRANK: tl.constexpr):
    """Row r of dt: the (channels,) raw delta, or with LOWRANK the (R,) low-rank dt of the row."""
    if LOWRANK:
        v = tl.load(dt_ptr + r * s_l + offs_r, mask=rmask, other=0.0).to(tl.float32)
    else:
        v = _row(dt_ptr, r, s_l, offs_d, dmask, True)
    return v


@triton.jit
def _dt_expand(v, Wt, LOWRANK: tl.constexpr):
    """The raw delta of a row: v itself, or with LOWRANK dt_proj applied, sum_r W[c, r] v[r]."""
    if LOWRANK:
        out = tl.sum(Wt * v[:, None], axis=0)
    else:
        out = v
    return out


@triton.jit
def _dt(dt_raw, dmask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FAST: tl.constexpr):
    """(dt before the softplus, dt) from the loaded row; masked channels get dt = 0."""
    dt_pre = dt_raw
    if HAS_BIAS:
        dt_pre += bias
    dt = dt_pre
    if SOFTPLUS:
        dt = _softplus_seq(dt_pre, FAST)
    return dt_pre, tl.where(dmask, dt, 0.0)


@triton.jit
def _const_tile(ptr, offs_n, nmask, offs_d, dmask, NSTATE, VARY: tl.constexpr):
    if VARY:
        v = tl.zeros([1, 1], dtype=tl.float32)
    else:
        v = tl.load(_state_ptrs(ptr, offs_n, offs_d, NSTATE), mask=nmask[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)
    return v


@triton.jit
def _fwd_step_loads(t, idx_ptr, u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, Bc, Cc, offs_n, nmask, offs_d, dmask,
                    offs_r, rmask, g0, g_d, s_ul, s_dtl, s_Bl, s_Bg, s_Cl, s_Cg, s_zl,
                    HAS_IDX: tl.constexpr, LOWRANK: tl.constexpr, LOAD_B: tl.constexpr, LOAD_C: tl.constexpr,
                    LOAD_Z: tl.constexpr, SINGLE_GROUP: tl.constexpr, VEC_BC: tl.constexpr):
    """Everything the forward step t reads: its grid row, u, dt, B, C, z (issued a step ahead)."""
    r = _row_id(idx_ptr, t, HAS_IDX)
    u = _row(u_ptr, r, s_ul, offs_d, dmask, True)
    dt = _dt_load(dt_ptr, r, s_dtl, offs_d, dmask, offs_r, rmask, LOWRANK)
    B = _step_bc(B_ptr, r, Bc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Bl, s_Bg, LOAD_B, SINGLE_GROUP, False,
                 VEC_BC)
    C = _step_bc(C_ptr, r, Cc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Cl, s_Cg, LOAD_C, SINGLE_GROUP, False,
                 VEC_BC)
    z = _row(z_ptr, r, s_zl, offs_d, dmask, LOAD_Z)
    return r, u, dt, B, C, z


@triton.jit(do_not_specialize=["chunks_per_seg", "n_seg", "s_stb"])   # see SEGMENT_ARGS
def scan_fwd_seq_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, idx_ptr, W_ptr,
    st_ptr, dtsum_ptr,
    L, DIM, NSTATE, n_chunks, chunks_per_seg, n_seg, ch_per_group, K_DIR, out_scale, RANK,
    s_ub, s_ul, s_uk, s_dtb, s_dtl, s_dtk, s_zb, s_zl, s_ob, s_ol, s_ok,
    s_Bb, s_Bl, s_Bg, s_Bk, s_Cb, s_Cl, s_Cg, s_Ck,
    s_stb, s_stc,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARY: tl.constexpr, C_VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr,
    EVEN_N: tl.constexpr, FAST_EXP: tl.constexpr, MODE: tl.constexpr, SAVE_ALL: tl.constexpr,
    HAS_IDX: tl.constexpr, OUT_ATOMIC: tl.constexpr, LOWRANK: tl.constexpr = False, BLOCK_R: tl.constexpr = 1,
    VEC_BC: tl.constexpr = False, ZERO_START: tl.constexpr = False,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_d, offs_n, dmask, nmask, m_nd = _tile_index(pid_d, DIM, NSTATE, BLOCK_D, BLOCK_N, EVEN_N, 0)
    g_d = offs_d // ch_per_group
    g0 = (pid_d * BLOCK_D) // ch_per_group
    bb, kk = _dir_split(pid_b, K_DIR)
    u_ptr += bb * s_ub + kk * s_uk
    dt_ptr += bb * s_dtb + kk * s_dtk
    out_ptr += bb * s_ob + kk * s_ok
    if HAS_Z:
        z_ptr += bb * s_zb
    if B_VARY:
        B_ptr += bb * s_Bb + kk * s_Bk
    if C_VARY:
        C_ptr += bb * s_Cb + kk * s_Ck
    A_ptr, D_ptr, bias_ptr, idx_ptr = _dir_params(A_ptr, D_ptr, bias_ptr, idx_ptr, kk, L, DIM, NSTATE, HAS_IDX)
    offs_r, rmask = _rank_index(BLOCK_R, RANK, LOWRANK)
    Wt = _lowrank_tile(W_ptr + kk * DIM * RANK, offs_r, rmask, offs_d, dmask, RANK, LOWRANK)
    st_ptr += pid_b * s_stb
    A2 = tl.load(_state_ptrs(A_ptr, offs_n, offs_d, NSTATE), mask=m_nd, other=0.0).to(tl.float32) * LOG2E
    bias = _channel_vector(bias_ptr, offs_d, dmask, HAS_BIAS)
    Dv = _channel_vector(D_ptr, offs_d, dmask, HAS_D)
    Bc = _const_tile(B_ptr, offs_n, nmask, offs_d, dmask, NSTATE, B_VARY)
    Cc = _const_tile(C_ptr, offs_n, nmask, offs_d, dmask, NSTATE, C_VARY)
    c_begin = pid_s * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, n_chunks)
    t_begin = c_begin * BLOCK_T
    t_end = tl.minimum(c_end * BLOCK_T, L)
    if SAVE_ALL:
        slot0 = c_begin
    else:
        slot0 = pid_s * 2 + c_begin % 2
    if MODE == 1:   # a segment's own contribution: from a zero state (its slot is never read)
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    elif ZERO_START:   # no initial state: segment 0 starts from zeros and writes them to slot 0
        h = tl.load(_state_ptrs(st_ptr + slot0 * s_stc, offs_n, offs_d, NSTATE), mask=m_nd & (pid_s > 0), other=0.0)
        if SAVE_ALL:    # the backward reads slot 0 as chunk 0's start
            tl.store(_state_ptrs(st_ptr, offs_n, offs_d, NSTATE), h, mask=m_nd & (pid_s == 0))
    else:
        h = tl.load(_state_ptrs(st_ptr + slot0 * s_stc, offs_n, offs_d, NSTATE), mask=m_nd, other=0.0)
    dtsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    # software prefetch: the loads of step t + 1 are issued before step t's arithmetic, so their
    # latency hides behind it (nothing they read depends on the state). Two steps ahead measured
    # slower on an H200 (forward +6% to +41%; results/bench_scan_split_h200/).
    LOAD_C: tl.constexpr = C_VARY and MODE == 0
    LOAD_Z: tl.constexpr = HAS_Z and MODE == 0
    r_n, u_n, dt_n, B_n, C_n, z_n = _fwd_step_loads(
        t_begin, idx_ptr, u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, Bc, Cc, offs_n, nmask, offs_d, dmask, offs_r, rmask,
        g0, g_d, s_ul, s_dtl, s_Bl, s_Bg, s_Cl, s_Cg, s_zl, HAS_IDX, LOWRANK, B_VARY, LOAD_C, LOAD_Z, SINGLE_GROUP,
        VEC_BC)
    for t in range(t_begin, t_end):
        r = r_n
        u = u_n
        _dt_pre, dt = _dt(_dt_expand(dt_n, Wt, LOWRANK), dmask, bias, HAS_BIAS, SOFTPLUS, FAST_EXP)
        Bt = B_n
        Ct = C_n
        zz = z_n
        r_n, u_n, dt_n, B_n, C_n, z_n = _fwd_step_loads(
            tl.minimum(t + 1, t_end - 1), idx_ptr, u_ptr, dt_ptr, B_ptr, C_ptr, z_ptr, Bc, Cc, offs_n, nmask,
            offs_d, dmask, offs_r, rmask, g0, g_d, s_ul, s_dtl, s_Bl, s_Bg, s_Cl, s_Cg, s_zl,
            HAS_IDX, LOWRANK, B_VARY, LOAD_C, LOAD_Z, SINGLE_GROUP, VEC_BC)
        h = _exp2(A2 * dt[None, :], FAST_EXP) * h + (dt * u)[None, :] * Bt
        if MODE == 1:
            dtsum += dt
        else:
            y = tl.sum(h * Ct, axis=0)
            if HAS_D:
                y += u * Dv
            if HAS_Z:
                y = y * zz * _sigmoid_seq(zz, FAST_EXP)
            if OUT_ATOMIC:  # directions merged by sum/mean into a float32 output in grid order
                tl.atomic_add(out_ptr + r * s_ol + offs_d, y * out_scale, mask=dmask, sem="relaxed")
            else:
                tl.store(out_ptr + r * s_ol + offs_d, y.to(out_ptr.dtype.element_ty), mask=dmask)
            if SAVE_ALL:
                # chunk-start states for backward; a segment's end slot belongs to the combine kernel
                if ((t + 1) % BLOCK_T == 0) & (t + 1 < t_end):
                    tl.store(_lane_rows(st_ptr + ((t + 1) // BLOCK_T) * s_stc + offs_d * NSTATE, offs_n[:, None],
                                        FAST_EXP), h, mask=m_nd)
    if MODE == 1:
        tl.store(_state_ptrs(st_ptr + (pid_s * 2 + c_end % 2) * s_stc, offs_n, offs_d, NSTATE), h, mask=m_nd)
        tl.store(dtsum_ptr + (pid_b * n_seg + pid_s) * DIM + offs_d, dtsum, mask=dmask)
    else:
        if t_end == L:  # only the last segment: the final state
            if SAVE_ALL:
                last_slot = n_chunks
            else:
                last_slot = (n_seg - 1) * 2 + n_chunks % 2
            tl.store(_state_ptrs(st_ptr + last_slot * s_stc, offs_n, offs_d, NSTATE), h, mask=m_nd)


@triton.jit
def _recompute(h, ta, tb, every, dst, s_rows, tile, u_ptr, dt_ptr, B_ptr, idx_ptr, Bc, A2, bias, Wt, offs_r, rmask,
               offs_n, nmask, offs_d, dmask, g0, g_d, s_ul, s_dtl, s_Bl, s_Bg,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, B_VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr,
               FAST_EXP: tl.constexpr, HAS_IDX: tl.constexpr, LOWRANK: tl.constexpr):
    """Walk the state forward over steps [ta, tb) from h (loads one step ahead); before every
    ``every``-th step store it to scratch tile k (dst: the lanes' slots of tile 0, s_rows the
    rows' offsets; tiles ``tile`` elements apart). Returns the state after step tb - 1."""
    r_n = _row_id(idx_ptr, ta, HAS_IDX)
    u_n = _row(u_ptr, r_n, s_ul, offs_d, dmask, True)
    dt_n = _dt_load(dt_ptr, r_n, s_dtl, offs_d, dmask, offs_r, rmask, LOWRANK)
    B_n = _step_bc(B_ptr, r_n, Bc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Bl, s_Bg, B_VARY, SINGLE_GROUP,
                   FAST_EXP)
    for t in range(ta, tb):
        u = u_n
        _dt_pre, dt = _dt(_dt_expand(dt_n, Wt, LOWRANK), dmask, bias, HAS_BIAS, SOFTPLUS, FAST_EXP)
        Bt = B_n
        tn = tl.minimum(t + 1, tb - 1)
        r_n = _row_id(idx_ptr, tn, HAS_IDX)
        u_n = _row(u_ptr, r_n, s_ul, offs_d, dmask, True)
        dt_n = _dt_load(dt_ptr, r_n, s_dtl, offs_d, dmask, offs_r, rmask, LOWRANK)
        B_n = _step_bc(B_ptr, r_n, Bc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Bl, s_Bg, B_VARY, SINGLE_GROUP,
                       FAST_EXP)
        if (t - ta) % every == 0:
            tl.store(_lane_rows(dst + ((t - ta) // every) * tile, s_rows, FAST_EXP), h)
        h = _exp2(A2 * dt[None, :], FAST_EXP) * h + (dt * u)[None, :] * Bt
    return h


@triton.jit
def _bc_step_grad(g, acc, ptr, t, offs_n, nmask, offs_d, dmask, g0, g_d, s_pl, s_pg, n0, NSTATE,
                  VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr, LANE_SUM: tl.constexpr, BLOCK_N: tl.constexpr):
    """dB or dC at one step (row t) from the [BLOCK_N, BLOCK_D] tile g: summed over this channel
    block and added atomically into one float32 (batch, L, groups, N) buffer (one add per state
    when the block lies in one group, per element when it straddles groups); for constant B/C
    summed over time into the register accumulator, which is returned. One buffer instead of a
    partial sum per channel block: at N = 16 those partials were the largest allocation of the
    backward (e.g. 2 x 616 MB for a VMamba-T stage-1 layer at batch 128)."""
    if VARY:
        if SINGLE_GROUP and LANE_SUM and BLOCK_N > 1:   # one add per state, from the lane holding its sum
            v, j, lead = _lane_sum(g, BLOCK_N)
            st = n0 + BLOCK_N - 1 - j        # tensor row j is state n0 + BLOCK_N - 1 - j (_state_index)
            tl.atomic_add(ptr + t * s_pl + g0 * s_pg + st, v, mask=lead & (st < NSTATE), sem="relaxed")
        elif SINGLE_GROUP:
            tl.atomic_add(ptr + t * s_pl + g0 * s_pg + offs_n, tl.sum(g, axis=1), mask=nmask, sem="relaxed")
        else:
            off = g_d[None, :] * s_pg + offs_n[:, None]
            tl.atomic_add(ptr + t * s_pl + tl.max_contiguous(off, [1, 4]), g,      # LANES_ON_CHANNELS
                          mask=nmask[:, None] & dmask[None, :], sem="relaxed")
        out = acc
    else:
        out = acc + g
    return out


@triton.jit(do_not_specialize=["chunks_per_seg", "n_seg", "s_cb"])   # see SEGMENT_ARGS
def scan_bwd_seq_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, idx_ptr, W_ptr,
    st_ptr, carry_ptr, scratch_ptr, dtsum_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, dW_ptr,
    L, DIM, NSTATE, n_chunks, chunks_per_seg, n_seg, ch_per_group, blocks_per_group, K_DIR, dout_scale, RANK,
    s_ub, s_ul, s_uk, s_dtb, s_dtl, s_dtk, s_zb, s_zl, s_gb, s_gl, s_gk,
    s_Bb, s_Bl, s_Bg, s_Bk, s_Cb, s_Cl, s_Cg, s_Ck,
    s_stb, s_stc, s_cb, s_cc,
    s_pk, s_pb, s_pl, s_pg, s_pkk,   # s_pk, blocks_per_group: the chunked kernels' layout, unused here
    s_par,                            # partial rows of dA / dD / delta_bias: one per (batch row, segment)
    BLOCK_T: tl.constexpr, SUB: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    B_VARY: tl.constexpr, C_VARY: tl.constexpr, SINGLE_GROUP: tl.constexpr,
    EVEN_N: tl.constexpr, FAST_EXP: tl.constexpr, MODE: tl.constexpr,
    HAS_IDX: tl.constexpr, DU_ATOMIC: tl.constexpr, PREFETCH_BC: tl.constexpr = True,
    LOWRANK: tl.constexpr = False, BLOCK_R: tl.constexpr = 1, NSPLIT: tl.constexpr = 1,
    LANE_SUM: tl.constexpr = False, ZERO_END: tl.constexpr = False,
):
    # NSPLIT > 1: the N states are split over NSPLIT programs (grid axis 0 = channel block x
    # split), BLOCK_N = N / NSPLIT each, for fewer registers per thread; the sums over N (du,
    # ddelta, dz) are then added atomically into float32 buffers, and the per-channel
    # accumulators (dD, delta_bias, dW) get one slot per split.
    pid_x = tl.program_id(0)
    pid_d = pid_x // NSPLIT
    pid_n = pid_x % NSPLIT
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    if MODE == 1:   # the host launches the summary pass for segments 1 .. n_seg - 1 (no one reads segment 0's)
        pid_s += 1
    offs_d, offs_n, dmask, nmask, m_nd = _tile_index(pid_d, DIM, NSTATE, BLOCK_D, BLOCK_N, EVEN_N, pid_n)
    g_d = offs_d // ch_per_group
    g0 = (pid_d * BLOCK_D) // ch_per_group
    bb, kk = _dir_split(pid_b, K_DIR)
    # du is laid out like u (float32 and shared by the directions when DU_ATOMIC), ddt like dt
    u_ptr += bb * s_ub + kk * s_uk
    du_ptr += bb * s_ub + kk * s_uk
    dt_ptr += bb * s_dtb + kk * s_dtk
    ddt_ptr += bb * s_dtb + kk * s_dtk
    dout_ptr += bb * s_gb + kk * s_gk
    if HAS_Z:
        z_ptr += bb * s_zb
        dz_ptr += bb * s_ub
    if B_VARY:
        B_ptr += bb * s_Bb + kk * s_Bk
        dB_ptr += bb * s_pb + kk * s_pkk
    if C_VARY:
        C_ptr += bb * s_Cb + kk * s_Ck
        dC_ptr += bb * s_pb + kk * s_pkk
    A_ptr, D_ptr, bias_ptr, idx_ptr = _dir_params(A_ptr, D_ptr, bias_ptr, idx_ptr, kk, L, DIM, NSTATE, HAS_IDX)
    offs_r, rmask = _rank_index(BLOCK_R, RANK, LOWRANK)
    Wt = _lowrank_tile(W_ptr + kk * DIM * RANK, offs_r, rmask, offs_d, dmask, RANK, LOWRANK)
    st_ptr += pid_b * s_stb
    carry_ptr += pid_b * s_cb
    # this program's scratch: SUB per-step state tiles, then BLOCK_T // SUB sub-chunk start tiles
    tile = BLOCK_N * BLOCK_D
    per_prog: tl.constexpr = (SUB + BLOCK_T // SUB) * BLOCK_N * BLOCK_D
    scratch_ptr += ((pid_b * tl.num_programs(0) + pid_x) * n_seg + pid_s) * per_prog
    s_lane = scratch_ptr + (BLOCK_D - 1 - tl.arange(0, BLOCK_D))        # each lane's slot in a tile
    s_rows = _state_index(BLOCK_N)[:, None] * BLOCK_D
    A2 = tl.load(_state_ptrs(A_ptr, offs_n, offs_d, NSTATE), mask=m_nd, other=0.0).to(tl.float32) * LOG2E
    bias = _channel_vector(bias_ptr, offs_d, dmask, HAS_BIAS)
    Dv = _channel_vector(D_ptr, offs_d, dmask, HAS_D)
    if NSPLIT > 1:  # the D*u skip term belongs to the first split only
        Dv = Dv * (pid_n == 0).to(tl.float32)
    Bc = _const_tile(B_ptr, offs_n, nmask, offs_d, dmask, NSTATE, B_VARY)
    Cc = _const_tile(C_ptr, offs_n, nmask, offs_d, dmask, NSTATE, C_VARY)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dBc_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dCc_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if LOWRANK:
        dW_acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    else:
        dW_acc = tl.zeros([1, 1], dtype=tl.float32)
    c_begin = pid_s * chunks_per_seg
    c_end = tl.minimum(c_begin + chunks_per_seg, n_chunks)
    # running dh: on entry to step t it holds a[t+1] * dh[t+1] (the carry from later steps)
    if MODE == 1:   # a segment's own carry: from zero (its slot is never read)
        dh = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    elif ZERO_END:   # no gradient of the last state: the last segment starts from zeros, not its slot
        dh = tl.load(_state_ptrs(carry_ptr + (pid_s * 2 + (c_end - 1) % 2) * s_cc, offs_n, offs_d, NSTATE),
                     mask=m_nd & (pid_s < n_seg - 1), other=0.0)
    else:
        dh = tl.load(_state_ptrs(carry_ptr + (pid_s * 2 + (c_end - 1) % 2) * s_cc, offs_n, offs_d, NSTATE),
                     mask=m_nd, other=0.0)
    dtsum = tl.zeros([BLOCK_D], dtype=tl.float32)   # MODE 1: the segment's sum of dt, for the combine
    for i in range(0, c_end - c_begin):
        c = c_end - 1 - i
        t0 = c * BLOCK_T
        t1 = tl.minimum(t0 + BLOCK_T, L)
        n_sub = tl.cdiv(t1 - t0, SUB)
        if MODE == 0:  # the chunk's saved start state
            h = tl.load(_lane_rows(st_ptr + c * s_stc + offs_d * NSTATE, offs_n[:, None], FAST_EXP), mask=m_nd,
                        other=0.0)
        if MODE == 0 and BLOCK_T > SUB:   # pass A: the start state of every sub-chunk (else h is the only one)
            h = _recompute(h, t0, t1, SUB, s_lane + SUB * tile, s_rows, tile, u_ptr, dt_ptr, B_ptr, idx_ptr, Bc, A2,
                           bias, Wt, offs_r, rmask, offs_n, nmask, offs_d, dmask, g0, g_d, s_ul, s_dtl, s_Bl, s_Bg,
                           HAS_BIAS, SOFTPLUS, B_VARY, SINGLE_GROUP, FAST_EXP, HAS_IDX, LOWRANK)
        for j in range(0, n_sub):
            s = n_sub - 1 - j
            ts0 = t0 + s * SUB
            ts1 = tl.minimum(ts0 + SUB, t1)
            if MODE == 0:  # pass B: every state of the sub-chunk
                tl.debug_barrier()
                if BLOCK_T > SUB:
                    h = tl.load(_lane_rows(s_lane + (SUB + s) * tile, s_rows, FAST_EXP))
                h = _recompute(h, ts0, ts1, 1, s_lane, s_rows, tile, u_ptr, dt_ptr, B_ptr, idx_ptr, Bc, A2, bias,
                               Wt, offs_r, rmask, offs_n, nmask, offs_d, dmask, g0, g_d, s_ul, s_dtl, s_Bl, s_Bg,
                               HAS_BIAS, SOFTPLUS, B_VARY, SINGLE_GROUP, FAST_EXP, HAS_IDX, LOWRANK)
                tl.debug_barrier()
            # pass C: backwards through the sub-chunk, loads of step t-1 issued before step t's math
            LOAD_B: tl.constexpr = B_VARY and MODE == 0
            t = ts1 - 1
            r_n = _row_id(idx_ptr, t, HAS_IDX)
            u_n = _row(u_ptr, r_n, s_ul, offs_d, dmask, True)
            dt_n = _dt_load(dt_ptr, r_n, s_dtl, offs_d, dmask, offs_r, rmask, LOWRANK)
            g_n = _row(dout_ptr, r_n, s_gl, offs_d, dmask, True)
            z_n = _row(z_ptr, r_n, s_zl, offs_d, dmask, HAS_Z)
            B_n = _step_bc(B_ptr, r_n, Bc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Bl, s_Bg, LOAD_B, SINGLE_GROUP,
                           FAST_EXP)
            C_n = _step_bc(C_ptr, r_n, Cc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Cl, s_Cg, C_VARY, SINGLE_GROUP,
                           FAST_EXP)
            if MODE == 0:
                hp_n = tl.load(_lane_rows(s_lane + (t - ts0) * tile, s_rows, FAST_EXP))
            for k in range(0, ts1 - ts0):
                t = ts1 - 1 - k
                r = r_n
                u = u_n
                dt_cur = dt_n
                dt_pre, dt = _dt(_dt_expand(dt_n, Wt, LOWRANK), dmask, bias, HAS_BIAS, SOFTPLUS, FAST_EXP)
                dout = g_n * dout_scale
                zz = z_n
                if PREFETCH_BC:
                    Bt = B_n
                    Ct = C_n
                else:  # B and C loaded at their own step: 2 x N fewer loop-carried registers
                    Bt = _step_bc(B_ptr, r, Bc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Bl, s_Bg, LOAD_B,
                                  SINGLE_GROUP, FAST_EXP)
                    Ct = _step_bc(C_ptr, r, Cc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Cl, s_Cg, C_VARY,
                                  SINGLE_GROUP, FAST_EXP)
                tp = tl.maximum(t - 1, ts0)
                r_n = _row_id(idx_ptr, tp, HAS_IDX)
                u_n = _row(u_ptr, r_n, s_ul, offs_d, dmask, True)
                dt_n = _dt_load(dt_ptr, r_n, s_dtl, offs_d, dmask, offs_r, rmask, LOWRANK)
                g_n = _row(dout_ptr, r_n, s_gl, offs_d, dmask, True)
                z_n = _row(z_ptr, r_n, s_zl, offs_d, dmask, HAS_Z)
                if PREFETCH_BC:
                    B_n = _step_bc(B_ptr, r_n, Bc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Bl, s_Bg, LOAD_B,
                                   SINGLE_GROUP, FAST_EXP)
                    C_n = _step_bc(C_ptr, r_n, Cc, offs_n, nmask, offs_d, dmask, g0, g_d, s_Cl, s_Cg, C_VARY,
                                   SINGLE_GROUP, FAST_EXP)
                if HAS_Z:
                    sz = _sigmoid_seq(zz, FAST_EXP)
                    dy = dout * zz * sz
                else:
                    dy = dout
                a = _exp2(A2 * dt[None, :], FAST_EXP)
                dh += dy[None, :] * Ct
                if MODE == 1:
                    dtsum += dt
                if MODE == 0:
                    hp = hp_n
                    hp_n = tl.load(_lane_rows(s_lane + (tp - ts0) * tile, s_rows, FAST_EXP))
                    ahp = a * hp
                    dtu = dt * u
                    ht = ahp + dtu[None, :] * Bt
                    sum_dhB = tl.sum(dh * Bt, axis=0)
                    du = dt * sum_dhB
                    dh_ahp = dh * ahp                         # shared by ddt and dA
                    ddt = tl.sum(dh_ahp * A2, axis=0) * LN2 + u * sum_dhB   # A = A2 * ln 2
                    dA_acc += dh_ahp * dt[None, :]
                    dBc_acc = _bc_step_grad(dh * dtu[None, :], dBc_acc, dB_ptr, r, offs_n, nmask, offs_d,
                                            dmask, g0, g_d, s_pl, s_pg, pid_n * BLOCK_N, NSTATE,
                                            B_VARY, SINGLE_GROUP, LANE_SUM, BLOCK_N)
                    dCc_acc = _bc_step_grad(dy[None, :] * ht, dCc_acc, dC_ptr, r, offs_n, nmask, offs_d,
                                            dmask, g0, g_d, s_pl, s_pg, pid_n * BLOCK_N, NSTATE,
                                            C_VARY, SINGLE_GROUP, LANE_SUM, BLOCK_N)
                    if HAS_D:
                        du += dy * Dv
                        dD_acc += dy * u
                    if HAS_Z:
                        y = tl.sum(ht * Ct, axis=0)
                        if HAS_D:
                            y += u * Dv
                        dz = dout * y * sz * (1.0 + zz * (1.0 - sz))    # linear in y: splits add up
                        if NSPLIT > 1:
                            tl.atomic_add(dz_ptr + r * s_ul + offs_d, dz, mask=dmask, sem="relaxed")
                        else:
                            tl.store(dz_ptr + r * s_ul + offs_d, dz.to(dz_ptr.dtype.element_ty), mask=dmask)
                    if SOFTPLUS:
                        ddt = ddt * _sigmoid_seq(dt_pre, FAST_EXP)
                    ddt = tl.where(dmask, ddt, 0.0)
                    dbias_acc += ddt
                    if DU_ATOMIC or NSPLIT > 1:  # u shared by the directions / N split: add up in float32
                        tl.atomic_add(du_ptr + r * s_ul + offs_d, du, mask=dmask, sem="relaxed")
                    else:
                        tl.store(du_ptr + r * s_ul + offs_d, du.to(du_ptr.dtype.element_ty), mask=dmask)
                    if LOWRANK:  # d(low-rank dt) = W^T ddt, summed over the block's channels; dW = ddt dt^T
                        if LANE_SUM and BLOCK_R > 1 and BLOCK_R <= 32:
                            ls_v, ls_row, ls_lead = _lane_sum(Wt * ddt[None, :], BLOCK_R)
                            ls_r = BLOCK_R - 1 - ls_row     # tensor row j is rank BLOCK_R - 1 - j (_rank_index)
                            tl.atomic_add(ddt_ptr + r * s_dtl + ls_r, ls_v, mask=ls_lead & (ls_r < RANK),
                                          sem="relaxed")
                        else:
                            tl.atomic_add(ddt_ptr + r * s_dtl + offs_r, tl.sum(Wt * ddt[None, :], axis=1),
                                          mask=rmask, sem="relaxed")
                        dW_acc += dt_cur[:, None] * ddt[None, :]
                    elif NSPLIT > 1:
                        tl.atomic_add(ddt_ptr + r * s_dtl + offs_d, ddt, mask=dmask, sem="relaxed")
                    else:
                        tl.store(ddt_ptr + r * s_dtl + offs_d, ddt.to(ddt_ptr.dtype.element_ty), mask=dmask)
                dh = a * dh
    tl.store(_state_ptrs(carry_ptr + (pid_s * 2 + (c_begin + 1) % 2) * s_cc, offs_n, offs_d, NSTATE), dh, mask=m_nd)
    if MODE == 1:
        tl.store(dtsum_ptr + (pid_b * n_seg + pid_s) * DIM + offs_d, dtsum, mask=dmask & (pid_n == 0))
    if MODE == 0:
        seg_off = pid_b * n_seg + pid_s
        # dA, dD and delta_bias partials share one row per (batch row, segment), s_par apart (the
        # host sums them with one reduction): dA (DIM, N), then dD and delta_bias, NSPLIT x DIM each
        dn_ptrs = _state_ptrs(dA_ptr + seg_off * s_par, offs_n, offs_d, NSTATE)
        tl.store(dn_ptrs, dA_acc, mask=m_nd)
        if not B_VARY:
            tl.store(_state_ptrs(dB_ptr + seg_off * DIM * NSTATE, offs_n, offs_d, NSTATE), dBc_acc, mask=m_nd)
        if not C_VARY:
            tl.store(_state_ptrs(dC_ptr + seg_off * DIM * NSTATE, offs_n, offs_d, NSTATE), dCc_acc, mask=m_nd)
        ch_off = seg_off * NSPLIT + pid_n     # per-channel partials: one slot per (segment, split)
        if NSPLIT > 1:
            dD_acc = dD_acc * (pid_n == 0).to(tl.float32)
        tl.store(dD_ptr + seg_off * s_par + pid_n * DIM + offs_d, dD_acc, mask=dmask)
        tl.store(dbias_ptr + seg_off * s_par + pid_n * DIM + offs_d, dbias_acc, mask=dmask)
        if LOWRANK:
            w_off = offs_d[None, :] * RANK + offs_r[:, None]
            tl.store(dW_ptr + ch_off * DIM * RANK + tl.max_contiguous(w_off, [1, 4]), dW_acc,    # LANES_ON_CHANNELS
                     mask=rmask[:, None] & dmask[None, :])
