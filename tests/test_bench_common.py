"""tools/bench_common.py's environment stamp, which every committed benchmark result carries."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "bench_common.py"


def test_env_stamp_records_the_kernel_switches(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_common", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("VSCAN_SCAN_SEQ", "64,1,8,16,32,1")
    monkeypatch.setenv("NOT_VSCAN", "x")
    stamp = mod.env_stamp()
    assert stamp["vscan_env"].get("VSCAN_SCAN_SEQ") == "64,1,8,16,32,1"
    assert "NOT_VSCAN" not in stamp["vscan_env"]
    assert {"date", "torch", "triton", "command"} <= set(stamp)
