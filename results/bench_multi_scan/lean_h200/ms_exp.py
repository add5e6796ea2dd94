"""Exploration (not shipped): fused_lowrank SS2D layer at N=16, ring / chunk-tile variants, and
the live allocations at the forward+backward peak. Run from the repo root on the GPU."""
import os, sys, json, collections, time
sys.path.insert(0, "tools"); sys.path.insert(0, ".")
import torch
import bench_multi_scan as bm
from bench_common import env_stamp
print(env_stamp(), flush=True)
t0 = time.time()
# 1. does the depthwise conv return channels_last on this GPU?
conv = torch.nn.Conv2d(192, 192, 3, padding="same", groups=192).cuda()
xs = torch.randn(8, 56, 56, 192, device="cuda")
with torch.autocast("cuda", dtype=torch.bfloat16):
    o = conv(xs.movedim(-1, 1))
print("conv out contiguous NCHW:", o.is_contiguous(), "channels_last:", o.is_contiguous(memory_format=torch.channels_last), flush=True)
# 2. correctness of the fused low-rank paths (ring on by default)
rows = bm.check_correctness()
print("correctness ok:", all(r["ok"] for r in rows), f"{time.time()-t0:.0f}s", flush=True)
res = {}
def run(name, path, env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = bm.time_layer(128, 56, 56, 16, path)
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    torch.cuda.empty_cache()
    res[name] = r
    print(f"{name:28s} fwd {r['fwd_ms']:.2f} f+b {r['fwdbwd_ms']:.2f} ms peak f+b {r['fwdbwd_peak_extra_mib']:.0f} MiB "
          f"fwd {r['fwd_peak_extra_mib']:.0f} | {time.time()-t0:.0f}s", flush=True)
run("explicit", "explicit", {})
run("lowrank ring0 T64", "fused_lowrank", {"VSCAN_SCAN_DT_RING": "0"})
run("lowrank ring16 T64", "fused_lowrank", {})
run("lowrank ring16 T128", "fused_lowrank", {"VSCAN_SCAN_SEQ": "128,1,8,16"})
run("lowrank ring16 T256 S16", "fused_lowrank", {"VSCAN_SCAN_SEQ": "256,1,16,16"})
run("lowrank ring32 T64", "fused_lowrank", {"VSCAN_SCAN_DT_RING": "32"})
run("plain T64", "fused", {})
run("plain T128", "fused", {"VSCAN_SCAN_SEQ": "128,1,8,16"})
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "ms_exp.json"), "w"), indent=1)
# 3. live allocations at the f+b peak (ring 16, default tile)
from vscan.layers import multidir
torch.manual_seed(0)
layer = multidir.MultiDirMamba(96, d_state=16, ssm_ratio=2.0, orders="cross", fuse_dt_proj=True).cuda()
x = torch.randn(128, 56, 56, 96, device="cuda", requires_grad=True)
params = [x] + list(layer.parameters())
def fb():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    torch.autograd.grad(y.float().sum(), params)
fb(); torch.cuda.synchronize()
torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
fb(); torch.cuda.synchronize()
snap = torch.cuda.memory._snapshot()
torch.cuda.memory._record_memory_history(enabled=None)
live, tot, peak, at_peak = {}, 0, 0, {}
for ev in snap["device_traces"][0]:
    a = ev["action"]
    if a == "alloc":
        live[ev["addr"]] = ev; tot += ev["size"]
        if tot > peak: peak, at_peak = tot, dict(live)
    elif a in ("free_completed",) and ev["addr"] in live:
        tot -= live.pop(ev["addr"])["size"]
def where(ev):
    fr = [f for f in ev.get("frames", []) if ("vscan" in f["filename"] or "kernels" in f["filename"] or "bench" in f["filename"])]
    return " < ".join(f"{os.path.basename(f['filename'])}:{f['line']}:{f['name']}" for f in fr[:3]) or "?"
agg = collections.Counter(); cnt = collections.Counter()
for ev in at_peak.values():
    k = (where(ev), ev["size"]); agg[k] += ev["size"]; cnt[k] += 1
print(f"peak of traced allocations (f+b, ring16 T64): {peak/2**20:.0f} MiB (includes what was live before)")
for (w, sz), tot_b in agg.most_common(25):
    print(f"{tot_b/2**20:8.1f} MiB  {cnt[(w, sz)]} x {sz/2**20:.1f}  {w}")
print(f"done {time.time()-t0:.0f}s")
