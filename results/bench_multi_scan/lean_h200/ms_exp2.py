"""Exploration (not shipped): backward tile / split / register variants of the dt_proj-inside
SS2D layer at N = 16 (VMamba-T stage 1, batch 128), same process. Run from the repo root on the GPU."""
import os, sys, json, time
sys.path.insert(0, "tools"); sys.path.insert(0, ".")
import torch
import bench_multi_scan as bm
from bench_common import env_stamp
print(env_stamp(), flush=True)
t0 = time.time(); res = {}
def run(name, path, env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = bm.time_layer(128, 56, 56, 16, path)
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    torch.cuda.empty_cache(); res[name] = dict(env=env, **r)
    print(f"{name:26s} {env} fwd {r['fwd_ms']:.2f} f+b {r['fwdbwd_ms']:.2f} ms peak f+b {r['fwdbwd_peak_extra_mib']:.0f} MiB | {time.time()-t0:.0f}s", flush=True)
run("explicit", "explicit", {})
run("lean cap128", "fused_lowrank", {"VSCAN_SCAN_BWD": "1,128"})
for cap in (120, 144):
    run(f"lean cap{cap}", "fused_lowrank", {"VSCAN_SCAN_BWD": f"1,{cap}"})
for tile in ("256,2,16,16", "256,2,16,8", "64,1,8,16", "256,1,8,16", "256,1,32,16"):
    run(f"lean cap128 {tile}", "fused_lowrank", {"VSCAN_SCAN_BWD": "1,128", "VSCAN_SCAN_SEQ": tile})
run("lean cap160 256,2,16,8", "fused_lowrank", {"VSCAN_SCAN_BWD": "1,160", "VSCAN_SCAN_SEQ": "256,2,16,8"})
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "ms_exp4.json"), "w"), indent=1)
