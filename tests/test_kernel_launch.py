"""kernels/launch.py: the cached launch path's key and argument order (CPU; the GPU suite
checks that it runs the kernels and gives the results of ``kernel[grid]``)."""
import inspect

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from vscan.kernels import launch as L


def _jit(fn):
    return JITFunction(fn)     # compiled-kernel object even where the suite runs the interpreter


def _toy(x_ptr, n, s, f, BLOCK: tl.constexpr, FLAG: tl.constexpr = False, R: tl.constexpr = 1):
    pass


def test_arg_key_separates_what_triton_specialises_on():
    k = L._arg_key
    # integers: Triton tells 1, multiples of 16 and 32- vs 64-bit apart; the key keeps values
    assert k([1]) != k([2]) and k([16]) != k([17]) and k([5]) != k([2**31 + 5]) and k([3]) != k([5])
    assert k([7, 0.5]) == k([7, 0.5])
    # types: 1, 1.0 and True compare equal as Python values, but compile to different signatures
    assert len({k([1]), k([1.0]), k([True])}) == 3 and k([False]) != k([0])
    x = torch.zeros(64)
    assert k([x]) == k([torch.zeros(8)]) and k([x]) != k([x.half()])      # the dtype, not the shape
    assert k([x[1:]]) != k([x]) and k([x[4:]]) == k([x])                  # 16-byte alignment
    assert k([torch.nn.Parameter(x)])[1] == k([x])[1]        # a Parameter is keyed as a tensor, not by value


def test_tail_is_the_signature_order_with_defaults():
    k = _jit(_toy)
    tail = L._tail(k, 4, dict(BLOCK=64, num_warps=2))
    bound = inspect.signature(_toy).bind(None, 1, 2, 0.5, BLOCK=64)
    bound.apply_defaults()
    assert tail == list(bound.arguments.values())[4:] == [64, False, 1]
    assert L._tail(k, 4, dict(BLOCK=8, R=4)) == [8, False, 4]
    assert L._tail(k, 3, dict(f=0.5, BLOCK=8)) is None      # a runtime argument by keyword: not cached
    assert L._tail(k, 4, {}) is None                         # a constexpr without value or default


def test_fast_path_only_for_compiled_kernels_without_hooks(monkeypatch):
    k = _jit(_toy)
    monkeypatch.delenv("VSCAN_FAST_LAUNCH", raising=False)
    assert L._fast_ok(k)
    monkeypatch.setenv("VSCAN_FAST_LAUNCH", "0")
    assert not L._fast_ok(k)
    monkeypatch.delenv("VSCAN_FAST_LAUNCH")
    assert not L._fast_ok(_toy)
    hook = lambda metadata: None  # noqa: E731
    chain = triton.knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):
        chain.add(hook)
        try:
            assert not L._fast_ok(k)      # a profiler's hook needs Triton's own launch path
        finally:
            chain.remove(hook)
    else:
        monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", hook)
        assert not L._fast_ok(k)
    assert L._fast_ok(k)


def test_interpreted_kernels_take_the_plain_launch(monkeypatch):
    calls = []

    class Fake:
        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((grid, a, kw))
    L.launch(Fake(), (3, 1), 1, 2, BLOCK=4)
    assert calls == [((3, 1), (1, 2), dict(BLOCK=4))]


@pytest.mark.interpret
def test_interpreted_scan_launches_through_the_plain_path():
    from vscan.ops import selective_scan
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    before = dict(L.STATS)
    selective_scan(r(1, 20, 4), r(1, 20, 4) * 0.5, -torch.rand(4, 2) - 0.1, r(1, 20, 1, 2), r(1, 20, 1, 2),
                   backend="triton")
    assert L.STATS["slow"] > before.get("slow", 0) and L.STATS["fast"] == before.get("fast", 0)
