"""A/B of the warp reduce-scatter (VSCAN_SCAN_LANESUM) in one process: layer f+b (issue 3) and 1-D shapes."""
import os, sys, json, time
sys.path.insert(0, "tools"); sys.path.insert(0, ".")
import torch
import bench_multi_scan as bm
import bench_scan as bs
from bench_common import env_stamp, gpu_warmup
from profile_scan import kernel_resources
out = os.environ.get("OUT", "/tmp")
res = dict(env=env_stamp(), layer={}, scan={}); t0 = time.time()
print(res["env"], flush=True)
gpu_warmup()
def setls(v):
    os.environ["VSCAN_SCAN_LANESUM"] = v
def dump():
    json.dump(res, open(os.path.join(out, "lanesum_ab.json"), "w"), indent=1)
def layer(N, path, ls, tag, bwd=None):
    setls(ls)
    if bwd:
        os.environ["VSCAN_SCAN_BWD"] = bwd
    r = bm.time_layer(128, 56, 56, N, path); torch.cuda.empty_cache()
    os.environ.pop("VSCAN_SCAN_BWD", None)
    res["layer"][f"N{N} {path} ls{ls} {tag}"] = dict(bwd=bwd, **r)
    print(f"N{N} {path:14s} ls{ls} {tag:6s} fwd {r['fwd_ms']:.2f} f+b {r['fwdbwd_ms']:.2f} ms "
          f"{r['fwdbwd_peak_extra_mib']:.0f} MiB | {time.time()-t0:.0f}s", flush=True)
def layer_env(N, path, tag, env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        r = bm.time_layer(128, 56, 56, N, path); torch.cuda.empty_cache()
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    res["layer"][f"N{N} {path} {tag}"] = dict(env=env, **r)
    print(f"N{N} {path:14s} {tag:12s} fwd {r['fwd_ms']:.2f} f+b {r['fwdbwd_ms']:.2f} ms "
          f"{r['fwdbwd_peak_extra_mib']:.0f} MiB | {time.time()-t0:.0f}s", flush=True)
for N in (16, 1):
    layer_env(N, "explicit", "", {})
    for ls in ("0", "1"):
        for path in ("fused_lowrank", "fused"):
            layer_env(N, path, f"ls{ls}", {"VSCAN_SCAN_LANESUM": ls})
    if N == 16:
        for cap in ("1,0", "1,168", "1,192"):
            layer_env(N, "fused_lowrank", "ls1 cap" + cap[2:], {"VSCAN_SCAN_LANESUM": "1", "VSCAN_SCAN_BWD": cap})
        layer_env(N, "fused", "ls1 cap128", {"VSCAN_SCAN_LANESUM": "1", "VSCAN_SCAN_BWD": "1,128"})
        layer_env(N, "fused", "ls1 nsplit1", {"VSCAN_SCAN_LANESUM": "1", "VSCAN_SCAN_SEQ": "64,1,8,16,32,1"})
        layer_env(N, "explicit", "again", {})
    dump()
res["resources"] = kernel_resources()
for row in res["resources"]:
    print("kernel %s: registers %s, spills %s, shared %s" % row, flush=True)
for name, (shape, _f, cuda_fb) in bs.SHAPES.items():
    for ls in ("0", "1"):
        setls(ls)
        r = bs.time_shape(name, shape, with_ref=False); torch.cuda.empty_cache()
        r["mamba_ssm_h100_fwdbwd_ms"] = cuda_fb
        res["scan"][f"{name} ls{ls}"] = r
        print(f"{name:11s} ls{ls} fwd {r['fwd_ms']:.3f} f+b {r['fwdbwd_ms']:.3f} ms (mamba_ssm H100 {cuda_fb}) -> "
              f"{cuda_fb / r['fwdbwd_ms']:.2f}x | {time.time()-t0:.0f}s", flush=True)
    dump()
dump()
