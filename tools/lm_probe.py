#!/usr/bin/env python
"""Probe a trained ``vscan lm`` MQAR model on a CPU: which queries it gets right, and where each
attention head looks when it answers.

    python tools/lm_probe.py RUN_DIR/model.pt --out probe/            # writes probe.json, probe.png

``model.pt`` is what ``vscan lm`` saves (``lm_sweep.py --bundle-weights`` brings it back from a
GPU run); it is loaded with ``weights_only=True`` and the model and task are rebuilt from the
arguments saved in it. On fresh MQAR batches drawn with those arguments the probe reports:

* accuracy overall, by query rank (the i-th query of a sequence) and by gap (query position minus
  the position of the key's first appearance);
* for every attention layer and head, the mean attention probability at the query positions on
  the value token that follows the queried key's first appearance (what recall needs), on that
  key token itself, on the query's own position, and on everything else.

Attention probabilities come from recomputing each ``scaled_dot_product_attention`` call of
``vscan.layers.attention`` explicitly (softmax of the scaled scores under the same mask); the
recomputed attention is what the probed forward uses, so its logits must equal the plain forward's
(checked, and reported as ``max_logit_diff``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def explicit_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False, dropout_p=0.0):
    """``F.scaled_dot_product_attention`` written out (no dropout), returning (output, probs)."""
    if dropout_p:
        raise ValueError("dropout_p: the probe runs the model in eval mode, expected 0")
    if enable_gqa and k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale
    T, S = s.shape[-2:]
    if is_causal:
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=s.device).tril(), float("-inf"))  # as SDPA
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    p = s.softmax(-1)
    return (p @ v.to(acc)).to(q.dtype), p


@contextlib.contextmanager
def record_attention(model):
    """Within the block, every CausalSelfAttention of ``model`` computes attention explicitly and
    appends (module name, probs (batch, heads, T, S)) to the yielded list."""
    import vscan.layers.attention as att
    records, current = [], []
    names = {m: n for n, m in model.named_modules() if isinstance(m, att.CausalSelfAttention)}
    hooks = [m.register_forward_pre_hook(lambda mod, _args, n=n: current.append(n)) for m, n in names.items()]
    original = att.F.scaled_dot_product_attention

    def sdpa(q, k, v, **kw):
        out, p = explicit_attention(q, k, v, **kw)
        records.append((current[-1] if current else "?", p))
        return out
    att.F.scaled_dot_product_attention = sdpa
    try:
        yield records
    finally:
        att.F.scaled_dot_product_attention = original
        for h in hooks:
            h.remove()


def load_run(path: Path):
    """(model in eval mode, its MQAR task, the saved arguments) from a ``vscan lm`` model.pt."""
    from vscan.tools.lm import build_model, make_task
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "args" not in blob:
        raise ValueError(f"{path}: expected a vscan lm model.pt (a dict with 'state_dict' and 'args')")
    args = argparse.Namespace(**blob["args"])
    if args.task != "mqar":
        raise ValueError(f"{path}: the probe is for MQAR runs, this one trained on {args.task!r}")
    task = make_task(args)
    model = build_model(args, task.vocab_size)
    model.load_state_dict(blob["state_dict"])
    return model.eval(), task, args


def mqar_positions(x: torch.Tensor, y: torch.Tensor, num_kv: int):
    """For every labelled query: (row, query position, key's first position, query rank)."""
    from vscan.data.text_tasks import IGNORE
    rows, qpos = (y != IGNORE).nonzero(as_tuple=True)
    keys = x[rows, qpos]
    first = (x[rows, : 2 * num_kv : 2] == keys[:, None]).float().argmax(1) * 2
    rank = torch.cat([torch.arange(int(c)) for c in torch.bincount(rows, minlength=x.shape[0])])
    return rows, qpos, first, rank


def probe(model, task, args, batch: int = 64, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, y = task.sample(batch, generator=g, split="val")     # at --num-kv, also for a --train-kv mix run
    with torch.no_grad():
        plain = model(x)
        with record_attention(model) as records:
            logits = model(x)
    n_meta = getattr(model, "num_meta_tokens", 0) or 0
    rows, qpos, kpos, rank = mqar_positions(x, y, args.num_kv)
    correct = (logits[rows, qpos].argmax(-1) == y[rows, qpos]).float()
    gap = (qpos - kpos).float()
    edges = torch.quantile(gap, torch.linspace(0, 1, 6)).tolist()
    by_gap = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (gap >= lo) & (gap <= hi)
        if not sel.any():      # repeated quantile edges (many equal gaps) leave a bin empty
            continue
        by_gap.append(dict(gap_from=lo, gap_to=hi, n=int(sel.sum()), acc=float(correct[sel].mean())))
    by_rank = [dict(rank=int(r), n=int((rank == r).sum()), acc=float(correct[rank == r].mean()))
               for r in torch.unique(rank)]
    heads = []
    for li, (name, p) in enumerate(records):
        q_at = p[rows, :, qpos + n_meta]                     # (queries, heads, S)
        on = lambda pos: q_at.gather(2, (pos + n_meta)[:, None, None].expand(-1, p.shape[1], 1))[..., 0]
        val, key, own = on(kpos + 1), on(kpos), on(qpos)
        for h in range(p.shape[1]):
            heads.append(dict(call=li, module=name, head=h, value=float(val[:, h].mean()), key=float(key[:, h].mean()),
                              self=float(own[:, h].mean()), rest=float((1 - val - key - own)[:, h].mean()),
                              value_when_correct=float(val[correct > 0, h].mean()) if correct.any() else None,
                              value_when_wrong=float(val[correct == 0, h].mean()) if (correct == 0).any() else None))
    return dict(model=args.model, d_model=args.d_model, num_kv=args.num_kv, seq_len=args.seq_len, batch=batch,
                seed=seed, queries=int(correct.numel()), acc=float(correct.mean()),
                max_logit_diff=float((logits - plain).abs().max()), by_gap=by_gap, by_rank=by_rank, heads=heads)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vscan.engine.plots import save_figure
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot([r["rank"] for r in report["by_rank"]], [r["acc"] for r in report["by_rank"]], marker=".")
    ax[0].set(xlabel="query rank in the sequence", ylabel="accuracy", ylim=(0, 1.02))
    ax[1].bar(range(len(report["by_gap"])), [r["acc"] for r in report["by_gap"]])
    ax[1].set_xticks(range(len(report["by_gap"])),
                     [f"{r['gap_from']:.0f}-{r['gap_to']:.0f}" for r in report["by_gap"]], rotation=30)
    ax[1].set(xlabel="gap (query - key position)", ylabel="accuracy", ylim=(0, 1.02))
    labels = [f"{h['module'].split('.')[-2] if '.' in h['module'] else h['module']}/h{h['head']}" for h in report["heads"]]
    bottom = [0.0] * len(labels)
    for part in ("value", "key", "self", "rest"):
        vals = [h[part] for h in report["heads"]]
        ax[2].bar(range(len(labels)), vals, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax[2].set_xticks(range(len(labels)), labels, rotation=30)
    ax[2].set(ylabel="attention at the query", ylim=(0, 1.02))
    ax[2].legend(fontsize=8)
    fig.suptitle(f"{report['model']} d{report['d_model']} MQAR {report['num_kv']} KV: acc {report['acc']:.3f} "
                 f"(tools/lm_probe.py)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_pt", type=Path, help="a vscan lm model.pt of an MQAR run")
    p.add_argument("--out", type=Path, default=Path("probe"), help="folder for probe.json and probe.png")
    p.add_argument("--batch", type=int, default=64, help="MQAR sequences to probe")
    p.add_argument("--seed", type=int, default=1, help="seed of the probe batch")
    a = p.parse_args(argv)
    if a.batch < 1:
        raise ValueError(f"--batch: expected >= 1, got {a.batch}")
    from vscan.engine.io import atomic_write_json
    model, task, args = load_run(a.model_pt)
    report = probe(model, task, args, a.batch, a.seed)
    report["model_pt"] = str(a.model_pt)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out / "probe.json", report)
    plot(report, a.out / "probe.png")
    print(f"acc {report['acc']:.3f} on {report['queries']} queries; max logit diff {report['max_logit_diff']:.2e}")
    for h in report["heads"]:
        print(f"  {h['module']} head {h['head']}: value {h['value']:.3f}  key {h['key']:.3f}  self {h['self']:.3f}  "
              f"rest {h['rest']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
