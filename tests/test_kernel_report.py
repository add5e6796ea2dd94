"""tools/kernel_report.py compiles the sequential scan kernels for sm90 without a GPU: the
layout they are written for (all 32 lanes on channels, each thread holding its channel's
states) holds under this machine's Triton, and the forward's sums over states need no shuffles.
Run in a subprocess: the suite imports the kernels under the Triton interpreter, and Triton
decides interpreted or compiled when a kernel module is imported."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _report(*args):
    triton = pytest.importorskip("triton")
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this Triton wheel ships no ptxas")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "kernel_report.py"), "--json", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_forward_keeps_states_in_thread():
    r = _report("--kernel", "fwd", "--n", "16")["fwd"]
    assert r["lanes_on_channels"], r["layouts"]
    assert r["SHFL"] == 0 and r["BAR"] == 0 and r["stack_bytes"] == 0


def test_backward_layout_and_lane_sum():
    """The backward's per-step dB / dC sums are warp reduce-scatters: fewer shuffles than the
    5 per state and tensor that separate cross-lane sums take (8 states per program)."""
    on = _report("--kernel", "bwd", "--n", "16", "--nsplit", "2")["bwd"]
    off = _report("--kernel", "bwd", "--n", "16", "--nsplit", "2", "--no-lane-sum")["bwd"]
    assert on["lanes_on_channels"] and off["lanes_on_channels"], (on["layouts"], off["layouts"])
    assert on["SHFL"] < off["SHFL"] / 2, (on["SHFL"], off["SHFL"])


def test_plain_backward_keeps_its_layout_without_spills():
    """The 1-D scan's backward (z gating, no index map: what tools/bench_scan.py times) keeps the
    lanes-on-channels layout without spilling at N = 16, with the default tile and the old one."""
    for tile in ((), ("--block-t", "64", "--sub", "8")):
        r = _report("--kernel", "bwd", "--n", "16", "--plain", *tile)["bwd"]
        assert r["lanes_on_channels"], r["layouts"]
        assert r["stack_bytes"] == 0, (tile, r)


def test_training_forward_holds_no_pointer_per_state():
    """The forward that saves chunk states for the backward (SAVE_ALL) stores them through one
    opaque row pointer per lane (scan_seq._lane_rows). Addressed as ``ptr + chunk
    offset + state``, LLVM hoisted one 64-bit pointer per state out of the loop: 164 registers
    instead of 94 under Triton 3.8, which halves the programs an SM holds."""
    r = _report("--kernel", "fwd", "--n", "16", "--plain")["fwd"]
    assert r["lanes_on_channels"], r["layouts"]
    assert r["registers"] <= 128 and r["stack_bytes"] == 0, r


def test_vector_bc_loads_compile_to_16_byte_loads():
    """With VEC_BC (scan_seq.py) the forward reads the bf16 B / C rows 8 states per 16-byte load
    and, capped as the host caps it, keeps the registers of the 2-byte loads without spilling;
    without it no load of the scan is that wide."""
    on = _report("--kernel", "fwd", "--n", "16", "--plain")["fwd"]
    off = _report("--kernel", "fwd", "--n", "16", "--plain", "--no-vec-bc")["fwd"]
    assert on["LDG.E.128"] >= 4 and off["LDG.E.128"] == 0, (on, off)
    assert on["registers"] <= 96 and on["stack_bytes"] == 0 and on["lanes_on_channels"], on
