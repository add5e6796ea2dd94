"""Exploration only (not shipped): Hymba-style MQAR variants trained in parallel on one GPU."""
import json, os, subprocess, sys, tarfile, time
from pathlib import Path

import torch
import torch.nn as nn

VARIANTS = sys.argv[1].split(",")
LIMIT = float(sys.argv[2])
OUT = Path(os.environ.get("OUT", "/tmp/out")) / "explore"
BASE = ("--task mqar --d-model 64 --num-kv 16 --vocab 512 --n-layers 2 --d-state 16 --expand 2 --heads 2 --d-ff 0 "
        "--batch 256 --lr 0.002 --weight-decay 0.1 --warmup 150 --eval-every 100 --eval-batches 4 --eval-batch 256 "
        "--target-acc 0.99 --zero-fill --train-kv 4,8,16,32,64 --quiet --seq-len 256 --steps 1000000 "
        "--seed 0 --no-save --cuda-graph").split()


def patch(variant):
    from vscan.tools import lm
    from vscan.layers.hybrid_head import HybridHeadMixer
    orig = lm.build_model

    def build(args, vocab):
        m = orig(args, vocab)
        mix = [x for x in m.modules() if isinstance(x, HybridHeadMixer)]
        with torch.no_grad():
            for i, h in enumerate(mix):
                if "ssm01" in variant:
                    h.ssm_norm.weight.fill_(0.1)
                if "ssm0learn" in variant:
                    h.ssm_norm.weight.fill_(0.0)
                if "attnraw" in variant:
                    h.attn_norm = nn.Identity()
                if "qkstd" in variant:
                    for p in (h.attn.q_proj.weight, h.attn.k_proj.weight):
                        p.normal_(0, args.d_model ** -0.5)
                if "l1attn" in variant and i == len(mix) - 1:
                    h.ssm_norm.weight.zero_()
                    h.ssm_norm.weight.requires_grad_(False)
        return m
    lm.build_model = build


def child(name):
    variant = name
    args = list(BASE)
    model = "jamba" if variant.startswith("jamba") else "hymba"
    args += ["--model", model, "--time-limit", str(LIMIT), "--out", str(OUT / name)]
    if "lr5" in variant:
        args[args.index("--lr") + 1] = "0.005"
    if "nomix" in variant:
        i = args.index("--train-kv"); del args[i:i + 2]
    if "kv64" in variant:
        args[args.index("--num-kv") + 1] = "64"
    if "d128" in variant:
        args[args.index("--d-model") + 1] = "128"
    if os.environ.get("SMOKE"):
        args.remove("--cuda-graph"); args += ["--device", "cpu", "--steps", "3", "--batch", "8", "--eval-batch", "8", "--seq-len", "256"]
    patch(variant)
    from vscan.tools import lm
    sys.exit(lm.main(args))


if __name__ == "__main__":
    if len(sys.argv) > 3:
        child(sys.argv[3])
    OUT.mkdir(parents=True, exist_ok=True)
    procs = {}
    for v in VARIANTS:
        env = dict(os.environ, TRITON_CACHE_DIR=f"/tmp/tc_{v}")
        procs[v] = subprocess.Popen([sys.executable, __file__, sys.argv[1], sys.argv[2], v], env=env,
                                    stdout=open(f"/tmp/log_{v}.txt", "w"), stderr=subprocess.STDOUT)
    for v, p in procs.items():
        p.wait()
    rows = []
    with tarfile.open(OUT.parent / "explore.tar.gz", "w:gz") as tar:
        for v in VARIANTS:
            f = OUT / v / "metrics.json"
            if f.exists():
                d = json.load(open(f))
                fin = d["final"]
                hist = [(r["step"], round(r["eval_acc"], 3)) for r in d["history"]]
                rows.append(f"{v}: acc {fin['eval_acc']:.3f} best {fin['best_eval_acc']:.3f} steps {fin['steps_run']} "
                            f"{fin['train_seconds']}s {fin['stopped_by']} | " + " ".join(f"{s}:{a}" for s, a in hist[::max(1, len(hist)//12)]))
                tar.add(OUT / v, arcname=v)
            else:
                rows.append(f"{v}: FAILED\n" + open(f"/tmp/log_{v}.txt").read()[-1500:])
            tar.add(f"/tmp/log_{v}.txt", arcname=f"log_{v}.txt")
    print("\n".join(rows))
