"""Plain-build tile sweep after the layout fix: 1-D shapes f+b and the SS2D layer (N = 16), same process."""
import os, sys, json, time
sys.path.insert(0, "tools"); sys.path.insert(0, ".")
import torch
import bench_scan as bs
import bench_multi_scan as bm
from bench_common import env_stamp, gpu_warmup
from profile_scan import kernel_resources
out = os.environ.get("OUT", "/tmp")
res = dict(env=env_stamp(), rows=[]); t0 = time.time()
print(res["env"], flush=True)
gpu_warmup()
CONFIGS = [("default", {}), ("nsplit1", {"VSCAN_SCAN_SEQ": "64,1,8,16,32,1"}),
           ("nsplit1 cap168", {"VSCAN_SCAN_SEQ": "64,1,8,16,32,1", "VSCAN_SCAN_BWD": "1,168"}),
           ("nsplit1 cap192", {"VSCAN_SCAN_SEQ": "64,1,8,16,32,1", "VSCAN_SCAN_BWD": "1,192"}),
           ("nsplit1 P8", {"VSCAN_SCAN_SEQ": "64,1,8,8,32,1"}),
           ("nsplit1 SUB16", {"VSCAN_SCAN_SEQ": "64,1,16,16,32,1"}),
           ("nsplit1 T128", {"VSCAN_SCAN_SEQ": "128,1,8,16,32,1"}),
           ("nsplit1 T32", {"VSCAN_SCAN_SEQ": "32,1,8,16,32,1"}),
           ("nsplit2 cap128", {"VSCAN_SCAN_BWD": "1,128"})]
seen = set()
for name, env in CONFIGS:
    for k in ("VSCAN_SCAN_SEQ", "VSCAN_SCAN_BWD"):
        os.environ.pop(k, None)
    os.environ.update(env)
    for sname, (shape, _f, cuda_fb) in bs.SHAPES.items():
        r = bs.time_shape(sname, shape, with_ref=False); torch.cuda.empty_cache()
        res["rows"].append(dict(config=name, env=env, shape=sname, mamba_ssm_h100_fwdbwd_ms=cuda_fb, **r))
        print(f"{name:15s} {sname:11s} fwd {r['fwd_ms']:.3f} f+b {r['fwdbwd_ms']:.3f} ms -> {cuda_fb / r['fwdbwd_ms']:.2f}x "
              f"| {time.time()-t0:.0f}s", flush=True)
    if name in ("default", "nsplit1", "nsplit1 cap168", "nsplit1 cap192", "nsplit2 cap128"):
        r = bm.time_layer(128, 56, 56, 16, "fused"); torch.cuda.empty_cache()
        res["rows"].append(dict(config=name, env=env, shape="ss2d_layer_N16_plain", **r))
        print(f"{name:15s} layer N16 plain f+b {r['fwdbwd_ms']:.2f} ms {r['fwdbwd_peak_extra_mib']:.0f} MiB | {time.time()-t0:.0f}s", flush=True)
    new = [row for row in kernel_resources(with_ids=True) if row[0] not in seen]
    seen |= {row[0] for row in new}
    res.setdefault("kernels", {})[name] = [row[1:] for row in new]
    print(name, "kernels", [row[1:] for row in new], flush=True)
    json.dump(res, open(os.path.join(out, "scan_sweep.json"), "w"), indent=1)
