#!/usr/bin/env python
"""Decode throughput and cache memory of ~100M-parameter Jamba and Hymba models against an
attention-only model of the same size, at several context lengths and batch sizes.

For each (model, context, batch) the cache is allocated for ``context + steps`` tokens and
marked as holding ``context`` tokens (``HybridCache.fill_``: decode cost depends on how full
the cache is, not on what it holds, so no 64K-token prefill is needed; ``--prefill`` runs a
real one instead). Then ``--warmup`` + ``--steps`` greedy single-token steps are timed.

GPU (the reported figures):
    python tools/bench_lm_decode.py --device cuda --dtype bfloat16 --out runs/bench_lm_decode
CPU check of the script itself (tiny models, seconds):
    python tools/bench_lm_decode.py --smoke --out /tmp/bench_smoke
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from vscan.models.lm import AttentionLM, HymbaLM, JambaLM

VOCAB = 32000


def model_configs(smoke: bool) -> dict:
    """Constructors of the compared models. Full size: d_model 768, vocab 32000, GQA 12:4 heads,
    ~100M parameters each (the script prints the exact counts)."""
    if smoke:
        common = dict(vocab_size=256)
        return {
            "attention": lambda: AttentionLM(d_model=32, n_layers=4, num_heads=4, num_kv_heads=2, d_ff=64, **common),
            "jamba": lambda: JambaLM(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=48, attn_layer_period=4, attn_layer_offset=2, num_experts=4,
                                     num_experts_per_tok=2, mamba_d_state=8, tie_word_embeddings=True, **common),
            "hymba": lambda: HymbaLM(hidden_size=32, num_hidden_layers=5, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=48, num_memory_tokens=4, sliding_window=32, mamba_d_state=8,
                                     max_position_embeddings=1 << 20, **common),
        }
    common = dict(vocab_size=VOCAB)
    return {
        # 12 x (GQA attention + SwiGLU 2048)
        "attention": lambda: AttentionLM(d_model=768, n_layers=12, num_heads=12, num_kv_heads=4, d_ff=2048, **common),
        # 12 layers: attention at 2, 6, 10 (1:3, as Jamba-tiny); MoE (4 experts, top-2) on odd layers
        "jamba": lambda: JambaLM(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                                 intermediate_size=640, attn_layer_period=4, attn_layer_offset=2, num_experts=4,
                                 num_experts_per_tok=2, tie_word_embeddings=True, max_position_embeddings=1 << 20,
                                 **common),
        # 8 hybrid-head layers: global attention in 0, 3, 7; SWA 1024 elsewhere; KV shared in [1,2], [4,5,6]
        "hymba": lambda: HymbaLM(hidden_size=768, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
                                 intermediate_size=1536, num_memory_tokens=128, sliding_window=1024,
                                 max_position_embeddings=1 << 20, **common),
    }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def bench_one(model, context: int, batch: int, steps: int, warmup: int, prefill: bool, device) -> dict:
    meta = model.num_meta_tokens
    total = meta + context + warmup + steps
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cache = model.allocate_cache(batch, total)
    g = torch.Generator(device="cpu").manual_seed(0)
    if prefill:
        ids = torch.randint(0, model.vocab_size, (batch, context), generator=g).to(device)
        _sync(device)
        t = time.perf_counter()
        logits = model(ids, cache)[:, -1]
        _sync(device)
        prefill_s = time.perf_counter() - t
    else:
        cache.fill_(meta + context)
        logits = torch.zeros(batch, model.vocab_size, device=device)
        prefill_s = None
    tok = logits.argmax(-1, keepdim=True)
    for _ in range(warmup):
        tok = model.decode_step(tok, cache).argmax(-1, keepdim=True)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        tok = model.decode_step(tok, cache).argmax(-1, keepdim=True)
    _sync(device)
    dt = time.perf_counter() - t
    row = {"tokens_per_s": batch * steps / dt, "ms_per_step": 1000 * dt / steps, "cache_bytes": cache.nbytes(),
           **{f"cache_{k}_bytes": v for k, v in cache.breakdown().items()},
           "cache_bytes_per_seq": cache.nbytes() // batch, "prefill_s": prefill_s}
    if device.type == "cuda":
        row["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="jamba,hymba,attention")
    p.add_argument("--contexts", default=None, help="comma-separated (default 2048,16384,65536; smoke 64,256)")
    p.add_argument("--batches", default=None, help="comma-separated (default 1,8; smoke 1,2)")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps (default 64; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8; smoke 1)")
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--prefill", action="store_true", help="run a real prefill instead of HybridCache.fill_")
    p.add_argument("--smoke", action="store_true", help="tiny models and sizes: checks the script on a CPU")
    p.add_argument("--out", type=Path, default=Path("runs/bench_lm_decode"))
    args = p.parse_args(argv)
    s = args.smoke
    contexts = [int(v) for v in (args.contexts or ("64,256" if s else "2048,16384,65536")).split(",")]
    batches = [int(v) for v in (args.batches or ("1,2" if s else "1,8")).split(",")]
    steps = args.steps or (3 if s else 64)
    warmup = args.warmup if args.warmup is not None else (1 if s else 8)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    configs = model_configs(s)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in configs]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {sorted(configs)}")

    rows = []
    for name in names:
        torch.manual_seed(0)
        model = configs[name]().to(device=device, dtype=dtype).eval()
        n_params = model.num_params()
        for ctx in contexts:
            for b in batches:
                try:
                    r = bench_one(model, ctx, b, steps, warmup, args.prefill, device)
                except torch.OutOfMemoryError:
                    r = {"error": "out of memory"}
                rows.append({"model": name, "params": n_params, "context": ctx, "batch": b, **r})
                show = rows[-1]
                print(f"{name:10s} ctx {ctx:>6d} batch {b:>2d}: "
                      + (f"{show['tokens_per_s']:9.1f} tok/s  {show['ms_per_step']:7.2f} ms/step  "
                         f"cache {show['cache_bytes'] / 2**20:9.2f} MiB" if "error" not in show else show["error"]),
                      flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    header = f"{'model':10s} {'params':>8s} {'context':>8s} {'batch':>5s} {'tok/s':>10s} {'ms/step':>8s} {'cache MiB':>10s} {'per seq MiB':>11s}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['model']:10s} {r['params'] / 1e6:7.1f}M {r['context']:8d} {r['batch']:5d} {r['error']}")
        else:
            print(f"{r['model']:10s} {r['params'] / 1e6:7.1f}M {r['context']:8d} {r['batch']:5d} "
                  f"{r['tokens_per_s']:10.1f} {r['ms_per_step']:8.2f} {r['cache_bytes'] / 2**20:10.2f} "
                  f"{r['cache_bytes_per_seq'] / 2**20:11.2f}")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result = {"command": "python tools/bench_lm_decode.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": datetime.date.today().isoformat(), "device": device_name, "dtype": str(dtype),
              "torch": torch.__version__, "steps": steps, "warmup": warmup, "prefill": args.prefill,
              "smoke": s, "rows": rows}
    from vscan.engine.io import atomic_write_json
    path = atomic_write_json(args.out / "bench_lm_decode.json", result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
