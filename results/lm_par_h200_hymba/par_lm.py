"""Exploration launcher (not shipped): several `vscan lm` runs in parallel on one GPU.
usage: python scratch/par_lm.py LIMIT 'name: extra args' ... ; writes $OUT/par.tar.gz"""
import json, os, shlex, subprocess, sys, tarfile
from pathlib import Path
LIMIT = sys.argv[1]
OUT = Path(os.environ.get("OUT", "/tmp/out"))
BASE = ("--task mqar --d-model 64 --num-kv 16 --vocab 512 --n-layers 2 --d-state 16 --expand 2 --heads 2 --d-ff 0 "
        "--batch 256 --lr 0.002 --weight-decay 0.1 --warmup 150 --eval-every 100 --eval-batches 4 --eval-batch 256 "
        "--target-acc 0.99 --zero-fill --quiet --seq-len 256 --steps 1000000 --seed 0 --cuda-graph")
if os.environ.get("SMOKE"):
    BASE = BASE.replace("--cuda-graph", "--device cpu --steps 3 --batch 8 --eval-batch 8")
procs = {}
for spec in sys.argv[2:]:
    name, extra = spec.split(":", 1)
    cmd = [sys.executable, "-m", "vscan.tools.lm", *shlex.split(BASE), *shlex.split(extra),
           "--time-limit", LIMIT, "--out", str(OUT / "runs" / name)]
    env = dict(os.environ, TRITON_CACHE_DIR=f"/tmp/tc_{name}")
    procs[name] = subprocess.Popen(cmd, env=env, stdout=open(f"/tmp/log_{name}.txt", "w"), stderr=subprocess.STDOUT)
for p in procs.values():
    p.wait()
rows = []
with tarfile.open(OUT / "par.tar.gz", "w:gz") as tar:
    for name in procs:
        f = OUT / "runs" / name / "metrics.json"
        if f.exists():
            d = json.load(open(f)); fin = d["final"]
            h = [(r["step"], round(r["eval_acc"], 3)) for r in d["history"]]
            rows.append(f"{name}: acc {fin['eval_acc']:.3f} best {fin['best_eval_acc']:.3f} steps {fin['steps_run']} "
                        f"{fin['train_seconds']}s {fin['stopped_by']} | " + " ".join(f"{s}:{a}" for s, a in h[::max(1, len(h) // 12)]))
            tar.add(OUT / "runs" / name, arcname="runs/" + name)
        else:
            rows.append(f"{name}: FAILED " + open(f"/tmp/log_{name}.txt").read()[-1500:])
        tar.add(f"/tmp/log_{name}.txt", arcname=f"logs/{name}.txt")
print("\n".join(rows))
