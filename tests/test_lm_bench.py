"""tools/bench_lm_decode.py runs end to end on a CPU with --smoke sizes."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "bench_lm_decode.py"


def test_bench_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_lm_decode", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--contexts", "16,48", "--batches", "2", "--steps", "2", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_lm_decode.json").read_text())
    rows = {(r["model"], r["context"]): r for r in res["rows"]}
    assert {m for m, _ in rows} == {"jamba", "hymba", "attention"}
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
    # full-attention KV grows with the context; the hybrids' SSM part does not
    assert rows["attention", 48]["cache_kv_bytes"] > rows["attention", 16]["cache_kv_bytes"]
    assert rows["jamba", 48]["cache_ssm_bytes"] == rows["jamba", 16]["cache_ssm_bytes"]
