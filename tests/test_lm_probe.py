"""tools/lm_probe.py: explicit attention equals SDPA, the MQAR positions it reads are the task's,
and a probe of a saved `vscan lm` run reproduces the model's own logits."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vscan.data.text_tasks import mqar
from vscan.tools.lm import main as lm_main

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "lm_probe.py"
TINY = ["--d-model", "32", "--d-state", "8", "--heads", "2", "--eval-batches", "1", "--eval-batch", "16",
        "--batch", "16", "--warmup", "1", "--threads", "1", "--quiet", "--task", "mqar", "--seq-len", "32",
        "--num-kv", "4", "--vocab", "64", "--zero-fill", "--steps", "3", "--eval-every", "100"]


def _load():
    spec = importlib.util.spec_from_file_location("lm_probe", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("gqa,masked", [(False, False), (True, False), (True, True)])
def test_explicit_attention_equals_sdpa(gqa, masked):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2 if gqa else 4, 7, 8, generator=g, dtype=torch.float64) for _ in range(2))
    mask = (torch.rand(7, 7, generator=g) > 0.3) | torch.eye(7, dtype=torch.bool) if masked else None
    kw = dict(attn_mask=mask) if masked else dict(is_causal=True)
    out, p = _load().explicit_attention(q, k, v, enable_gqa=gqa, **kw)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, **kw)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 7, dtype=p.dtype))
    if not masked:
        assert (p.triu(1) == 0).all()        # causal: nothing on later positions


def test_mqar_positions_are_the_tasks():
    x, y = mqar(5, seq_len=64, num_kv_pairs=8, vocab_size=128, random_non_queries=False,
                generator=torch.Generator().manual_seed(3))
    rows, qpos, kpos, rank = _load().mqar_positions(x, y, 8)
    assert len(rows) == 5 * 8
    assert torch.equal(x[rows, kpos], x[rows, qpos]) and (kpos < 16).all() and (kpos % 2 == 0).all()
    assert torch.equal(y[rows, qpos], x[rows, kpos + 1])      # the label is the value after the key
    assert all(sorted(rank[rows == r].tolist()) == list(range(8)) for r in range(5))


@pytest.mark.parametrize("model,extra", [("jamba", []), ("hymba", ["--meta-tokens", "2", "--window", "8",
                                                                     "--n-layers", "3"]),
                                         ("jamba", ["--train-kv", "1,2,8"])],   # probed at --num-kv, not the mix
                         ids=["jamba", "hymba", "jamba-kvmix"])
def test_probe_of_a_saved_run(tmp_path, model, extra):
    run = tmp_path / "run"
    assert lm_main(["--model", model, *TINY, *extra, "--out", str(run)]) == 0
    mod = _load()
    assert mod.main([str(run / "model.pt"), "--out", str(tmp_path / "probe"), "--batch", "8"]) == 0
    rep = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert rep["max_logit_diff"] < 1e-4 and rep["queries"] == 8 * 4 and 0.0 <= rep["acc"] <= 1.0
    assert rep["heads"] and all(0.0 <= h["value"] <= 1.0 and h["rest"] >= -1e-6 for h in rep["heads"])
    assert sum(r["n"] for r in rep["by_rank"]) == rep["queries"]
    assert (tmp_path / "probe" / "probe.png").stat().st_size > 0


def test_probe_refuses_other_files(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="vscan lm model.pt"):
        _load().load_run(bad)
