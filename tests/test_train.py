"""The classification trainer (vscan.engine.classification) and `vscan train`, on CPU.

A short run lowers the loss and writes its outputs; a run stopped mid-epoch and resumed ends
with the same weights as an uninterrupted one; two gloo processes under DDP finish and agree
on the weights.
"""
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from vscan.engine.classification import TrainConfig, epoch_batches, load_trained, run
from vscan.engine.io import load_checkpoint
from vscan.tools.train import parse_config

# a tiny Vim on 16x16 digits (16 tokens, 2 blocks), 512 training / 128 test images: 8 steps an epoch
TINY = dict(model="vscan_vim_ci", model_kwargs={"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                                                "d_state": 2, "expand": 1.0},
            img_size=16, scale=(0.8, 1.0), hflip=0.0, batch_size=64, lr=3e-3, warmup_epochs=0.0,
            weight_decay=0.0, smoothing=0.0, progress=False, threads=1, max_train_samples=512, max_val_samples=128)


def _cfg(tmp_path, **kw):
    return TrainConfig(**{**TINY, "output": str(tmp_path / "run"), **kw})


def test_config_from_yaml_and_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model: vscan_vim_ci\nepochs: 3\nlr: 0.01\nscale: [0.5, 1.0]\nmodel_kwargs: {depth: 2}\n")
    cfg = parse_config(["--config", str(y), "--epochs", "5", "--ema", "--model-kwargs", "embed_dim=48",
                        "--drop-path-rate", "none", "--img-size", "32"])
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.ema, cfg.img_size) == ("vscan_vim_ci", 5, 0.01, True, 32)
    assert cfg.scale == (0.5, 1.0) and cfg.model_kwargs == {"depth": 2, "embed_dim": 48}
    assert cfg.drop_path_rate is None


def test_config_errors(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("modle: vscan_vim_ci\n")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_config(["--config", str(y)])
    with pytest.raises(FileNotFoundError):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8").validate()
    with pytest.raises(ValueError, match="unknown model"):
        run(_cfg(tmp_path, model="no_such_model_xyz"))


def test_epoch_batches_shard_and_resume_deterministically():
    a = epoch_batches(10, 2, epoch=3, seed=1, rank=0, world=2, drop_last=False)
    b = epoch_batches(10, 2, epoch=3, seed=1, rank=1, world=2, drop_last=False)
    flat = sorted(i for batch in a + b for i in batch)
    assert flat == list(range(10)) and len(a) == len(b)
    assert a == epoch_batches(10, 2, epoch=3, seed=1, rank=0, world=2, drop_last=False)
    assert a != epoch_batches(10, 2, epoch=4, seed=1, rank=0, world=2, drop_last=False)


def test_short_run_lowers_loss_and_writes_outputs(tmp_path, capsys):
    from vscan.tools.train import main
    rc = main(["--model", "vscan_vim_ci", "--model-kwargs", "img_size=16", "patch_size=4", "embed_dim=32",
               "depth=2", "d_state=2", "expand=1.0", "--img-size", "16", "--epochs", "3", "--batch-size", "64",
               "--lr", "3e-3", "--warmup-epochs", "0", "--smoothing", "0", "--hflip", "0", "--no-progress",
               "--threads", "1", "--max-train-samples", "512", "--max-val-samples", "128",
               "--output", str(tmp_path / "run")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "plot:" in printed and "checkpoint:" in printed
    out = tmp_path / "run"
    for name in ("metrics.csv", "metrics.json", "curves.png", "last.pt", "best.pt", "config.yaml"):
        assert (out / name).is_file(), name
    ck = load_checkpoint(out / "last.pt")
    rows = ck["rows"]
    assert len(rows) == 3 and rows[2]["train_loss"] < rows[0]["train_loss"]
    assert rows[2]["val_acc"] > 20.0        # ten classes: well above chance after 24 steps
    model = load_trained(out / "best.pt")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_resume_continues_from_the_saved_step(tmp_path):
    full = run(_cfg(tmp_path / "a", epochs=2), return_model=True)
    assert full.global_step == 16
    first = run(_cfg(tmp_path / "b", epochs=2, max_steps=5))          # stops mid-epoch 1
    assert first.global_step == 5
    ck = load_checkpoint(first.last_checkpoint)
    assert (ck["epoch"], ck["batch_in_epoch"], ck["global_step"]) == (0, 5, 5)
    resumed = run(_cfg(tmp_path / "b", epochs=2, resume="auto"), return_model=True)
    assert resumed.global_step == 16 and len(resumed.step_losses) == 16 - 5
    for p, q in zip(resumed.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert [r["epoch"] for r in load_checkpoint(resumed.last_checkpoint)["rows"]] == [1, 2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, cfg_kwargs):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    result = run(TrainConfig(**cfg_kwargs), return_model=True)
    flat = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    torch.save({"params": flat, "steps": result.global_step}, os.path.join(out_dir, f"rank{rank}.pt"))
    import torch.distributed as dist
    dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on Windows is not exercised")
def test_ddp_two_cpu_processes_agree(tmp_path):
    kwargs = {**TINY, "output": str(tmp_path / "run"), "epochs": 1, "max_steps": 4, "batch_size": 32,
              "threads": 1}
    # fork: the children inherit the imported modules (spawn would re-import torch, timm and vscan)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path), kwargs), nprocs=2, join=True,
                       start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 4
    torch.testing.assert_close(r0["params"], r1["params"], rtol=0, atol=0)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")            # written by rank 0 only
    assert ck["global_step"] == 4 and len(ck["rng"]) == 2
