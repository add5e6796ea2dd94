"""vscan networks inside MONAI: FlexibleUNet backbone registration, the model-zoo bundle
(verify_net_in_out, train / inference configs), and import behaviour without MONAI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("monai")

from monai.networks import eval_mode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "model_zoo" / "umamba_bundle"


# ----------------------------------------------------------------------------- FlexibleUNet
def test_flexunet_backbones_registered():
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    from vscan.models.medical import BACKBONES, register_flexunet_backbones
    assert set(register_flexunet_backbones()) == set(BACKBONES)
    assert all(n in FLEXUNET_BACKBONE.register_dict for n in BACKBONES)
    assert register_flexunet_backbones() == list(BACKBONES)     # idempotent


@pytest.mark.parametrize("backbone,sd,size", [("vscan-umamba-tiny", 2, (64, 96)),
                                              ("vscan-scan-tiny", 2, (64, 64)),
                                              ("vscan-umamba-tiny", 3, (64, 32, 64))])
def test_flexunet_forward(backbone, sd, size):
    from monai.networks.nets import FlexibleUNet

    import vscan.models.medical  # noqa: F401  (first use registers the backbones)
    vscan.models.medical.register_flexunet_backbones()
    net = FlexibleUNet(in_channels=2, out_channels=3, backbone=backbone, spatial_dims=sd,
                       decoder_channels=(32, 16, 16, 8, 8))
    x = torch.randn(1, 2, *size)
    with eval_mode(net):
        assert net(x).shape == (1, 3, *size)
    if sd == 2:
        net.train()
        net(x).mean().backward()


def test_flexunet_registered_by_first_use(monkeypatch):
    """Using a vscan medical name registers the backbones (simulated first use in this process)."""
    import vscan.models.medical as vmed
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
    vmed.register_flexunet_backbones()
    saved = dict(FLEXUNET_BACKBONE.register_dict)
    try:
        for name in vmed.BACKBONES:
            FLEXUNET_BACKBONE.register_dict.pop(name)
        monkeypatch.delitem(sys.modules, "vscan.models.medical.flexunet")
        monkeypatch.delitem(vars(vmed), "UMambaBot", raising=False)
        assert "vscan-umamba-small" not in FLEXUNET_BACKBONE.register_dict
        vmed.__getattr__("UMambaBot")
        assert "vscan-umamba-small" in FLEXUNET_BACKBONE.register_dict
    finally:
        FLEXUNET_BACKBONE.register_dict.clear()
        FLEXUNET_BACKBONE.register_dict.update(saved)


def test_flexunet_pretrained_refused():
    from vscan.models.medical import VScanEncoder
    with pytest.raises(ValueError, match="pretrained"):
        VScanEncoder("vscan-umamba-tiny", spatial_dims=2, pretrained=True)
    with pytest.raises(ValueError, match="model_name"):
        VScanEncoder("vscan-nope")


# ----------------------------------------------------------------------------- bundle
def test_bundle_verify_net_in_out():
    from monai.bundle import verify_net_in_out
    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=str(BUNDLE / "configs" / "inference.json"), n=2, device="cpu")


def test_bundle_metadata_keys():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    for key in ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                "task", "description", "authors", "copyright", "network_data_format"):
        assert key in meta, key
    assert "vscan" in meta["required_packages_version"]
    assert (BUNDLE / "LICENSE").is_file()


def test_bundle_train_config_parses(tmp_path):
    from monai.bundle import ConfigParser

    from vscan.models.medical import UMambaBot
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, UMambaBot)
    loss = parser.get_parsed_content("loss")
    net.train()
    x, y = torch.randn(1, 1, 16, 16, 16), torch.randint(0, 4, (1, 1, 16, 16, 16))
    value = loss(net(x), y)                        # deep-supervision outputs -> one scalar
    assert value.dim() == 0 and torch.isfinite(value)
    parser.get_parsed_content("optimizer")
    inf = ConfigParser()
    inf.read_config(str(BUNDLE / "configs" / "inference.json"))
    assert inf["network_def"] == parser["network_def"]


def test_bundle_train_one_epoch(tmp_path):
    """train.json end to end for one epoch on a tiny synthetic Decathlon folder."""
    pytest.importorskip("ignite", reason="MONAI's bundle engines need pytorch-ignite")
    from monai.bundle import ConfigParser

    from vscan.data.synthetic_seg import synthetic_msd_folder
    synthetic_msd_folder(tmp_path / "data", 2, 1, 1, size=(20, 20, 20), num_objs=5, rad_min=2, rad_max=5)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    parser["device"] = "$torch.device('cpu')"
    parser["patch_size"] = [16, 16, 16]
    parser["train"]["trainer"]["max_epochs"] = 1
    parser["validate"]["inferer"]["roi_size"] = [16, 16, 16]
    parser["network_def"]["features"] = [4, 8, 16, 32]
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.epoch == 1 and torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))
    assert (tmp_path / "models" / "model.pt").is_file()          # best-metric checkpoint from validation


@pytest.mark.skipif(not (BUNDLE / "models" / "model.pt").is_file(), reason="bundle has no trained weights")
def test_bundle_inference_runs(tmp_path):
    """The bundle's inference.json, end to end on one synthetic volume with the shipped weights."""
    pytest.importorskip("ignite", reason="MONAI's bundle engines need pytorch-ignite")
    import nibabel as nib
    from monai.bundle import ConfigParser

    from vscan.data.synthetic_seg import make_synthetic_case
    img, lbl = make_synthetic_case(7, size=(40, 36, 44), rad_max=8)
    (tmp_path / "data" / "imagesTr").mkdir(parents=True)
    nib.save(nib.Nifti1Image(img[0], torch.eye(4).numpy()), str(tmp_path / "data" / "imagesTr" / "case.nii.gz"))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    parser["handlers"][0]["load_path"] = str(BUNDLE / "models" / "model.pt")
    parser["device"] = "$torch.device('cpu')"
    parser.get_parsed_content("evaluator").run()
    outs = list((tmp_path / "eval").glob("*_seg.nii.gz"))
    assert len(outs) == 1
    pred = nib.load(str(outs[0])).get_fdata()
    assert pred.shape[-3:] == (40, 36, 44) and set(pred.ravel().astype(int)) <= {0, 1, 2, 3}
    pred, lbl = pred.reshape(40, 36, 44).astype(int), lbl[0].astype(int)
    dice = [2 * ((pred == c) & (lbl == c)).sum() / max(1, (pred == c).sum() + (lbl == c).sum()) for c in (1, 2, 3)]
    assert sum(dice) / 3 > 0.8, dice                           # the shipped weights segment a new volume


# ----------------------------------------------------------------------------- import behaviour
def test_import_without_monai():
    """One fresh process: ``import vscan`` does not import MONAI, and with MONAI unavailable a
    medical network raises an ImportError that says what to install."""
    code = ("import sys, vscan, vscan.models.medical as m\n"
            "print('MONAI_LOADED', 'monai' in sys.modules, 'UMambaBot' in m.__all__)\n"
            "sys.modules['monai'] = None\n"
            "try:\n"
            "    m.UMambaBot\n"
            "except ImportError as e:\n"
            "    print('IMPORTERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ))
    assert "MONAI_LOADED False True" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "IMPORTERROR" in out.stdout and "vscan[medical]" in out.stdout, out.stdout + out.stderr[-2000:]
