"""tools/lm_sweep.py runs its grid end to end on a CPU (--smoke sizes), and the sync-free
training loss of vscan lm equals the boolean-mask one."""
import importlib.util
import json
import tarfile
from pathlib import Path

import torch

from vscan.data.text_tasks import make_task
from vscan.models.lm import MambaLM
from vscan.tools.lm import _loss_and_acc

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "lm_sweep.py"


def _load():
    spec = importlib.util.spec_from_file_location("lm_sweep", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_smoke_writes_every_run(tmp_path):
    mod = _load()
    out = tmp_path / "out"
    only = "d16_kv2,induction"
    stale = tmp_path / "runs" / "mqar_old_run"        # an earlier sweep's folder in the same run dir
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text("{}")
    assert mod.main(["--smoke", "--device", "cpu", "--time-budget", "40", "--reserve", "1", "--max-steps", "12",
                     "--only", only, "--out", str(out), "--run-dir", str(tmp_path / "runs")]) == 0
    res = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in res["runs"]]
    assert names == res["meta"]["run_names"] and len(names) == 5          # 4 models + induction
    assert {r["model"] for r in res["runs"]} == {"mamba", "jamba", "hymba", "attention"}
    for r in res["runs"]:
        assert r["status"] == "ok", r.get("error")
        assert 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["best_acc"] <= 1.0 and 1 <= r["steps"] <= 12
        assert r["history"][-1]["step"] == r["steps"]
    ind = next(r for r in res["runs"] if r["task"] == "induction")
    assert 0.0 <= ind["acc@64"] <= 1.0
    md = (out / "summary.md").read_text()
    assert all(n in md for n in names) and "MQAR eval accuracy" in md
    with tarfile.open(out / "runs.tar.gz") as tar:
        members = set(tar.getnames())
    assert all(f"runs/{n}/metrics.json" in members for n in names)
    assert not any("mqar_old_run" in m for m in members)     # only this sweep's runs are bundled


def test_fixed_shape_loss_equals_mask_loss():
    task = make_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=64)
    x, y = task.sample(6, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    m = MambaLM(vocab_size=64, d_model=16, n_layers=1, d_state=4)
    l1, a1 = _loss_and_acc(m, x, y)
    l2, a2 = _loss_and_acc(m, x, y, task.labels_per_row, check_ids=False)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(a1, a2)
    # the device path draws the same numbers as the default CPU path
    x2, y2 = task.sample(6, torch.Generator().manual_seed(1), device=torch.device("cpu"))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_mixed_batch_fixed_shape_loss_equals_mask_loss():
    """A mixed-count MQAR batch gathered at the largest count (rows padded with ignored
    positions) gives the boolean-mask loss and accuracy, which see labelled positions only."""
    task = make_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=64, train_kv_counts=(1, 2, 8))
    x, y = task.sample(6, torch.Generator().manual_seed(1))
    assert sorted(set((y != -100).sum(1).tolist())) == [1, 2, 8]
    torch.manual_seed(0)
    m = MambaLM(vocab_size=64, d_model=16, n_layers=1, d_state=4)
    with torch.no_grad():   # make every other label the model's own prediction: accuracy known, not 0
        mask = y != -100
        pred = m.logits(m.forward_hidden(x)[mask]).argmax(-1)
        right = torch.arange(len(pred)) % 2 == 0
        y[mask] = torch.where(right, pred, (pred + 1) % 64)
    l1, a1 = _loss_and_acc(m, x, y)
    l2, a2 = _loss_and_acc(m, x, y, task.labels_per_row, check_ids=False)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(a1, a2)
    assert abs(a2.item() - right.double().mean().item()) < 1e-6


def test_lr_grid_runs_every_cell_per_rate_and_reports_the_best():
    mod = _load()
    a = mod.build_parser().parse_args(["--lrs", "1e-3,4e-3", "--only", "mqar_jamba_d64_kv16"])
    runs = mod.plan(a)
    assert [r["name"] for r in runs] == ["mqar_jamba_d64_kv16_lr0.001", "mqar_jamba_d64_kv16_lr0.004"]
    for r, lr in zip(runs, ("0.001", "0.004")):
        assert r["argv"][r["argv"].index("--lr") + 1] == lr
    rows = [mod.row_of({**spec, "argv": []}, None, "ok", 1.0, 1.0) for spec in runs]
    rows[0].update(acc=0.5, steps=10, train_s=1.0)
    rows[1].update(acc=0.9, steps=12, train_s=1.0)
    md = mod.markdown(rows, {"command": "x", "env": "y", "elapsed_s": 1, "time_budget": 2, "done": 2, "planned": 2})
    assert "| jamba | 0.900 (12 st, 1 s, lr 0.004) |" in md, md


def test_train_kv_mix_reaches_every_mqar_cell_only():
    from vscan.tools.lm import build_parser as lm_parser, make_task as lm_task
    mod = _load()
    runs = mod.plan(mod.build_parser().parse_args(["--train-kvs", "4,16,64"]))
    for r in runs:
        args = lm_parser().parse_args(r["argv"])
        if r["task"] == "mqar":
            task = lm_task(args)
            assert args.train_kv == [4, 16, 64] and task.train_kv_counts == (4, 16, 64)
            assert task.num_kv_pairs == r["num_kv"] and task.labels_per_row == 64
        else:
            assert args.train_kv == []


def test_bundle_holds_weights_only_when_asked(tmp_path):
    mod = _load()
    run_dir = tmp_path / "runs"
    (run_dir / "mqar_a").mkdir(parents=True)
    for f in ("metrics.json", "metrics.csv", "curves.png", "model.pt", "notes.txt"):
        (run_dir / "mqar_a" / f).write_text("x")
    rows = [dict(name="mqar_a", status="ok", task="mqar", model="mamba", d_model=16, num_kv=2, acc=0.5)]
    meta = dict(command="lm_sweep", env="cpu", time_budget=1.0, planned=1)
    for weights, want in ((False, {"metrics.json", "metrics.csv", "curves.png"}),
                          (True, {"metrics.json", "metrics.csv", "curves.png", "model.pt"})):
        out = tmp_path / f"out{int(weights)}"
        out.mkdir()
        mod.write_reports(out, run_dir, rows, meta, True, weights)
        with tarfile.open(out / "runs.tar.gz") as tar:
            assert {Path(m).name for m in tar.getnames()} == want
    # the runs write model.pt only when the bundle is to hold it
    assert all("--no-save" in r["argv"] for r in mod.plan(mod.build_parser().parse_args([])))
    assert all("--no-save" not in r["argv"] for r in mod.plan(mod.build_parser().parse_args(["--bundle-weights"])))


def test_hymba_args_reach_the_hymba_runs_only():
    from vscan.tools.lm import build_model, build_parser as lm_parser
    mod = _load()
    runs = mod.plan(mod.build_parser().parse_args(["--hymba-args", "--no-attn-norm --attn-scale 0.5"]))
    hymba = [r for r in runs if r["model"] == "hymba"]
    assert len(hymba) == 4
    for r in runs:
        args = lm_parser().parse_args(r["argv"])
        assert args.no_attn_norm == (r["model"] == "hymba")
        assert args.attn_scale == (0.5 if r["model"] == "hymba" else 1.0)
    model = build_model(lm_parser().parse_args(hymba[0]["argv"]), 512)
    assert all(type(blk.mixer.attn_norm).__name__ == "ChannelScale" for blk in model.layers)


def test_default_hymba_style_has_a_local_first_layer():
    """The sweep's Hymba-style runs default to a 2-token window in layer 0 and a global layer 1
    (the configuration that learns recall); --hymba-args '' gives two global layers."""
    from vscan.tools.lm import build_model, build_parser as lm_parser
    mod = _load()
    for given, want in ((None, [2, None]), ("", [None, None])):
        argv = [] if given is None else ["--hymba-args", given]
        hymba = [r for r in mod.plan(mod.build_parser().parse_args(argv)) if r["model"] == "hymba"]
        model = build_model(lm_parser().parse_args(hymba[0]["argv"]), 512)
        assert [blk.mixer.attn.window for blk in model.layers] == want
