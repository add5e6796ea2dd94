#!/usr/bin/env python
"""Issue 6's recall grid in one time-boxed call: MQAR for Mamba, a Jamba-style hybrid, a
Hymba-style hybrid and pure attention (d_model 64/128 x 16/64 key-value pairs, length 256),
plus induction heads (Mamba trained at 256, tested to 4096). Every run is ``vscan lm``
(vscan/tools/lm.py) with a per-run time limit carved out of ``--time-budget``.

    PYTHONUNBUFFERED=1 python3 tools/lm_sweep.py --out $OUT/lm --run-dir /tmp/lm_runs
    python tools/lm_sweep.py --smoke --device cpu --time-budget 60 --out /tmp/lm_smoke   # CPU check

What it writes to ``--out`` (kept to a handful of files: the GPU tool returns at most 8, two
folders down): ``summary.json`` (every run: status, final metrics, steps, seconds, its full
metrics.json, or the error), ``summary.md`` (the tables), ``runs.tar.gz`` (each run's
metrics.json / metrics.csv / curves.png from ``--run-dir``, and model.pt with
``--bundle-weights``). All three are rewritten after
every run, so a call that is cut off still leaves the runs done so far. The last thing printed
is a compact table (the GPU call returns only the last 12,000 characters of output).

Time. The clock starts when this script starts. Before each run the time left (less a
reserve for the final bundle) is split over the runs not yet done in proportion to their
weights, so time an early-stopped run does not use goes to the later ones; the run's
training loop gets that share less the per-run overhead seen so far (model build, the first
evaluation, final long-length evaluations, files). ``--time-budget 540`` fits a 9.5-minute
call with about 25 s to spare for Python start-up and the exit.

Order. Most informative first, so a cut-off still answers the main question: d_model 64 with
16 pairs for the two hybrids, attention and Mamba; then induction heads; then d64/64 pairs,
d128/16, d128/64. Inside each group the models likeliest to stop early at ``--target-acc``
(attention, hybrids) run before Mamba, which usually trains to its limit.

Settings, and why (Zoology, Arora et al. 2023; ../shared/reference/text_ltc.md section 3.3):

* 2 layers, no MLP, d_state 16, expand 2, 2 heads; Jamba-style = [Mamba, attention]
  (attention without positions, as in Jamba), Hymba-style = 2 parallel attention+SSM
  layers, the first with sliding-window attention over 2 tokens and the last global, no meta
  tokens; attention = 2 RoPE attention layers.
* Vocabulary 512 with zeros between the queries (``--zero-fill``, Zoology Figure 2's fill;
  Zoology's vocabulary is 8192). A small vocabulary learns far faster: on this CPU, 2-layer
  attention, d 64, MQAR 64/8, batch 64, lr 3e-3 reached 0.993 in 1250 steps at V=512 and
  sat at 0.08 after 1182 steps at V=8192. But a small vocabulary with random filler breaks
  the task: a query key then often appeared earlier as filler (with this generator at 256/16,
  3.8% of queries are ambiguous at V=512, 1.0% at 2048, 0.23% at 8192), which caps the
  reachable accuracy near 0.99. Zero filler removes that; with 64 pairs at length 256 there
  is no filler at all. ``--vocab 8192 --no-zero-fill`` give Zoology's harder variant.
* AdamW (betas 0.9/0.98, weight decay 0.1), lr 2e-3 (inside Zoology's swept 1e-4..1e-2),
  150 warm-up steps, cosine decay to 0 over the run's time limit (``--time-limit`` makes
  lm.py's schedule follow time), gradient clip 1, batch 256 (Zoology: 256 at length 256).
  Early stop at eval accuracy ``--target-acc`` (0.99) on a fixed set of 1024 sequences
  (16K / 64K queries), checked every 100 steps. ``--lrs 1e-3,4e-3`` runs every MQAR cell once
  per learning rate (Zoology reports the best rate per cell; the table does the same).
  ``--cuda-graph`` replays each training step from a CUDA graph (``vscan lm --cuda-graph``).
* ``--train-kvs 4,8,16,32,64`` trains every MQAR cell on a mix of key-value counts (each batch
  split evenly over them) and still evaluates each cell at its own count: the training mix of
  Based's MQAR sweep (text_ltc.md section 3.3), where the small counts teach the recall circuit
  first. Without it each cell trains on its own count alone, as in Zoology's Figure 2.
* ``--hymba-args`` passes lm.py arguments to the Hymba-style runs only; its default is
  ``--window 2 --global-layers 1``. With both layers global (``--hymba-args ''``, Hymba's own
  rule of global first, middle and last layers) the Hymba-style hybrid did not learn recall at
  these sizes: the first layer's attention branch, normalised and spread over the whole prefix,
  adds a unit-size average of the context to every position. A 2-token window makes that
  branch a previous-token mixer, which is what the second layer's recall needs
  (model_zoo/lm_results.md, runs 9-11).
* Induction heads: vocabulary 16, batch 128 (the paper's 8 gives one labelled token per
  sequence, so a larger batch buys signal per step at no extra step time on a GPU), lr 2e-3,
  no weight decay (the paper: Adam, no decay), weight 3 in the time split; it stops early only
  once it reaches 0.995 at 256 and at every test length (512..4096).

GPU step speed. These models are tiny (65K-300K parameters), so a step at batch 256 x 256
tokens is bound by kernel launches and host round trips, not by arithmetic: lm.py draws the
synthetic batches on the GPU, uses fused AdamW and bf16 autocast, gathers the labelled
positions with fixed shapes, skips the token-id range check after the first step, and reads
the loss only at evaluations, so a Mamba step makes no host sync of its own (attention
layers still make one: vscan.layers.attention checks its mask on the host). Batch 256 keeps
the GPU busy per launch; a bigger batch would cost time without saving steps in this budget.
Expect a few hundred steps per second to a few thousand steps per run; a per-run steps/s
figure lands in the table, so the next call can set ``--time-budget`` / weights from it.

``--isolate`` runs each configuration in its own process (about 5 s more per run); without it
the sweep switches to that by itself after an error that leaves CUDA unusable.
"""
from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS_FIRST = ("jamba", "hymba", "attention", "mamba")      # early stoppers before Mamba
HYMBA_STYLE = "--window 2 --global-layers 1"                 # local first layer, global last (docstring)
INDUCTION_LENGTHS = (512, 1024, 2048, 4096)


def bootstrap():
    """Make ``import vscan`` work from a plain checkout, as on the GPU machine where vscan is not
    installed (``import vscan`` maps the top-level kernels/ folder to ``vscan.kernels`` itself)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import vscan  # noqa: F401


# ----------------------------------------------------------------------------- the grid
def plan(a) -> list[dict]:
    """The runs in execution order: name, weight (share of the time split) and lm.py argv."""
    common = ["--quiet", "--seq-len", str(a.seq_len), "--steps", str(a.max_steps),
              "--grad-clip", "1.0", "--device", a.device, "--amp", a.amp, "--seed", str(a.seed)]
    if not getattr(a, "bundle_weights", False):
        common += ["--no-save"]
    if a.threads:
        common += ["--threads", str(a.threads)]
    if getattr(a, "cuda_graph", False):
        common.append("--cuda-graph")

    lrs = getattr(a, "lrs", None) or [a.lr]

    def mqar_lr(model, d, kv, lr):
        argv = ["--model", model, "--task", "mqar", "--d-model", str(d), "--num-kv", str(kv),
                "--vocab", str(a.vocab), "--n-layers", "2", "--d-state", "16", "--expand", "2", "--heads", "2",
                "--d-ff", "0", "--batch", str(a.batch), "--lr", str(lr), "--weight-decay", "0.1",
                "--warmup", str(a.warmup), "--eval-every", str(a.eval_every), "--eval-batches", str(a.eval_batches),
                "--eval-batch", str(a.eval_batch), "--target-acc", str(a.target_acc)]
        if a.zero_fill:
            argv.append("--zero-fill")
        if getattr(a, "train_kvs", None):
            argv += ["--train-kv", ",".join(str(v) for v in a.train_kvs)]
        if model == "hymba":
            argv += shlex.split(getattr(a, "hymba_args", "") or "")
        name = f"mqar_{model}_d{d}_kv{kv}" + (f"_lr{lr:g}" if len(lrs) > 1 else "")
        return {"name": name, "task": "mqar", "model": model, "d_model": d, "num_kv": kv, "lr": lr,
                "weight": 1.0 if kv <= 16 else 1.25, "argv": argv + common}

    def mqar(model, d, kv):
        return [mqar_lr(model, d, kv, lr) for lr in lrs]

    induction = {
        "name": "induction_mamba_d64", "task": "induction", "model": "mamba", "d_model": 64, "num_kv": None,
        "weight": a.induction_weight,
        "argv": ["--model", "mamba", "--task", "induction", "--d-model", "64", "--n-layers", "2", "--d-state", "16",
                 "--expand", "2", "--vocab", "16", "--batch", str(a.induction_batch), "--lr", str(a.induction_lr),
                 "--weight-decay", "0", "--warmup", str(a.warmup), "--eval-every", str(a.eval_every),
                 "--eval-batches", str(a.eval_batches), "--eval-batch", str(a.eval_batch),
                 "--eval-lengths", ",".join(str(L) for L in a.induction_lengths),
                 "--target-acc", str(a.induction_target), "--target-all-lengths"] + common}
    d_small, d_large = a.d_models
    kv_small, kv_large = a.num_kvs
    runs = [r for m in MODELS_FIRST for r in mqar(m, d_small, kv_small)]
    runs.append(induction)
    for d, kv in ((d_small, kv_large), (d_large, kv_small), (d_large, kv_large)):
        runs += [r for m in MODELS_FIRST for r in mqar(m, d, kv)]
    if a.only:
        keep = [s.strip() for s in a.only.split(",") if s.strip()]
        runs = [r for r in runs if any(k in r["name"] for k in keep)]
    return runs


# ----------------------------------------------------------------------------- running
def run_inprocess(argv: list[str]) -> dict:
    from vscan.tools.lm import build_parser, train
    args = build_parser().parse_args(argv)
    args.argv = argv
    import torch
    threads = torch.get_num_threads()
    try:
        return train(args)
    finally:
        torch.set_num_threads(threads)


def run_subprocess(argv: list[str], out: Path, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--", *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"child exited {p.returncode}: {(p.stderr or p.stdout)[-1500:]}")
    return json.loads((out / "metrics.json").read_text())


def cuda_usable() -> bool:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.zeros(1, device="cuda").add_(1).item()
        return True
    except Exception:
        return False


def row_of(spec: dict, res: dict | None, status: str, alloc: float, wall: float, error: str | None = None) -> dict:
    row = {k: spec[k] for k in ("name", "task", "model", "d_model", "num_kv")}
    if "lr" in spec:
        row["lr"] = spec["lr"]
    row.update(status=status, alloc_s=round(alloc, 1), wall_s=round(wall, 1), command="vscan lm " + " ".join(spec["argv"]))
    if res is not None:
        f = res["final"]
        row.update(params=res["params"], acc=f["eval_acc"], best_acc=f["best_eval_acc"], steps=f["steps_run"],
                   train_s=f["train_seconds"], steps_per_s=f.get("steps_per_s"), stopped_by=f["stopped_by"],
                   **{k: v for k, v in f.items() if k.startswith("acc@")})
        row["env"] = res.get("env")
        row["history"] = res.get("history")
    if error:
        row["error"] = error
    return row


# ----------------------------------------------------------------------------- reporting
def _fmt(v, nd=3):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def compact_table(rows: list[dict]) -> str:
    lines = [f"{'run':<26} {'status':<10} {'acc':>6} {'best':>6} {'steps':>7} {'train_s':>7} {'st/s':>6} {'stop':<10}"]
    for r in rows:
        lines.append(f"{r['name']:<26} {r['status']:<10} {_fmt(r.get('acc')):>6} {_fmt(r.get('best_acc')):>6} "
                     f"{_fmt(r.get('steps')):>7} {_fmt(r.get('train_s'), 1):>7} {_fmt(r.get('steps_per_s'), 0):>6} "
                     f"{r.get('stopped_by') or '':<10}")
        longs = {k: v for k, v in r.items() if k.startswith("acc@")}
        if longs:
            lines.append("    " + "  ".join(f"{k}={v:.3f}" for k, v in longs.items()))
        if r.get("error"):
            lines.append("    error: " + r["error"].strip().splitlines()[-1][:150])
    return "\n".join(lines)


def markdown(rows: list[dict], meta: dict) -> str:
    out = ["# vscan lm recall sweep (tools/lm_sweep.py)", "",
           f"Command: `{meta['command']}`  ", f"Environment: {meta['env']}  ",
           f"Elapsed: {meta['elapsed_s']} s of a {meta['time_budget']} s budget; {meta['done']} of {meta['planned']} runs.",
           "", "| run | params | status | eval acc | best | steps | train s | steps/s | stopped by |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {_fmt(r.get('params'))} | {r['status']} | {_fmt(r.get('acc'))} | "
                   f"{_fmt(r.get('best_acc'))} | {_fmt(r.get('steps'))} | {_fmt(r.get('train_s'), 1)} | "
                   f"{_fmt(r.get('steps_per_s'), 0)} | {r.get('stopped_by') or r.get('error', '').strip()[-80:]} |")
    mq: dict = {}      # per cell the best run over learning rates
    for r in rows:
        if r["task"] == "mqar":
            key = (r["model"], r["d_model"], r["num_kv"])
            if key not in mq or (r.get("acc") or -1.0) > (mq[key].get("acc") or -1.0):
                mq[key] = r
    several_lrs = len({r.get("lr") for r in rows if r["task"] == "mqar"}) > 1
    if mq:
        cols = sorted({(d, kv) for _, d, kv in mq})
        out += ["", "MQAR eval accuracy (length 256)" + (", the best learning rate per cell" if several_lrs else "")
                + ":", "",
                "| model | " + " | ".join(f"d{d}, {kv} KV" for d, kv in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for m in MODELS_FIRST:
            if any(k[0] == m for k in mq):
                cells = []
                for d, kv in cols:
                    r = mq.get((m, d, kv))
                    lr = f", lr {r['lr']:g}" if (r is not None and several_lrs) else ""
                    cells.append("not run" if r is None else
                                 f"{_fmt(r.get('acc'))} ({_fmt(r.get('steps'))} st, {_fmt(r.get('train_s'), 0)} s{lr})"
                                 if r.get("acc") is not None else r["status"])
                out.append(f"| {m} | " + " | ".join(cells) + " |")
    ind = [r for r in rows if r["task"] == "induction" and r.get("acc") is not None]
    for r in ind:
        longs = {k: v for k, v in r.items() if k.startswith("acc@")}
        out += ["", f"Induction heads ({r['name']}, trained at 256): acc@256 {_fmt(r['acc'])}; "
                + ", ".join(f"{k} {v:.3f}" for k, v in longs.items())]
    return "\n".join(out) + "\n"


def write_reports(out: Path, run_dir: Path, rows: list[dict], meta: dict, bundle: bool, weights: bool = False):
    from vscan.engine.io import atomic_write_bytes, atomic_write_json, atomic_write_text
    meta = {**meta, "elapsed_s": round(time.time() - T_START, 1), "done": len(rows)}
    atomic_write_json(out / "summary.json", {"meta": meta, "runs": rows})
    atomic_write_text(out / "summary.md", markdown(rows, meta))
    if bundle and run_dir.exists():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name in sorted({r["name"] for r in rows}):   # this sweep's runs only, not older ones in run_dir
                for p in sorted((run_dir / name).rglob("*")):
                    if p.is_file() and p.suffix in (".json", ".csv", ".png") + ((".pt",) if weights else ()):
                        tar.add(p, arcname=str(Path("runs") / p.relative_to(run_dir)))
        atomic_write_bytes(out / "runs.tar.gz", buf.getvalue())


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/lm_sweep"), help="summary.json, summary.md, runs.tar.gz")
    p.add_argument("--run-dir", type=Path, default=None, help="per-run folders (default OUT/runs)")
    p.add_argument("--time-budget", type=float, default=540.0, help="seconds for everything, from script start")
    p.add_argument("--reserve", type=float, default=8.0, help="seconds kept back for the last reports")
    p.add_argument("--target-acc", type=float, default=0.99, help="MQAR early stop")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "none"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cuda-graph", action="store_true", help="lm.py --cuda-graph: replay each step from a CUDA graph")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="comma-separated substrings of run names to keep")
    p.add_argument("--isolate", action="store_true", help="one process per run")
    p.add_argument("--no-bundle", action="store_true", help="do not write runs.tar.gz")
    p.add_argument("--bundle-weights", action="store_true",
                   help="also put each run's model.pt in runs.tar.gz (for probing a trained model on a CPU)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU check of the whole pipeline")
    g = p.add_argument_group("MQAR")
    g.add_argument("--seq-len", type=int, default=256)
    g.add_argument("--d-models", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128])
    g.add_argument("--num-kvs", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64])
    g.add_argument("--vocab", type=int, default=512)
    g.add_argument("--zero-fill", action=argparse.BooleanOptionalAction, default=True,
                   help="zeros between the queries (Zoology Figure 2); --no-zero-fill: random tokens")
    g.add_argument("--train-kvs", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="train every MQAR cell on this mix of key-value counts (lm.py --train-kv), e.g. "
                        "4,8,16,32,64; each cell is still evaluated at its own count")
    g.add_argument("--hymba-args", default=HYMBA_STYLE,
                   help="lm.py arguments for the Hymba-style runs only ('' for two global layers)")
    g.add_argument("--batch", type=int, default=256)
    g.add_argument("--lr", type=float, default=2e-3)
    g.add_argument("--lrs", type=lambda s: [float(v) for v in s.split(",")], default=None,
                   help="comma-separated learning rates: every MQAR cell runs once per rate (names get _lr<rate>)")
    g.add_argument("--warmup", type=int, default=150)
    g.add_argument("--max-steps", type=int, default=1_000_000, help="step cap; the time limit normally ends a run")
    g.add_argument("--eval-every", type=int, default=100)
    g.add_argument("--eval-batches", type=int, default=4)
    g.add_argument("--eval-batch", type=int, default=256)
    g = p.add_argument_group("induction heads")
    g.add_argument("--induction-batch", type=int, default=128)
    g.add_argument("--induction-lr", type=float, default=2e-3)
    g.add_argument("--induction-target", type=float, default=0.995)
    g.add_argument("--induction-weight", type=float, default=3.0)
    g.add_argument("--induction-lengths", type=lambda s: [int(v) for v in s.split(",")],
                   default=list(INDUCTION_LENGTHS))
    return p


def apply_smoke(a):
    """CPU-sized grid: same runs and code paths, tiny shapes."""
    a.seq_len, a.d_models, a.num_kvs, a.vocab = 32, [16, 32], [2, 8], 64
    a.batch, a.warmup, a.eval_every, a.eval_batches, a.eval_batch = 8, 5, 10, 1, 16
    a.induction_batch, a.induction_lengths = 8, [64]
    a.max_steps = min(a.max_steps, 60)
    a.threads = a.threads or 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        bootstrap()
        from vscan.tools.lm import main as lm_main
        return lm_main(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    a = build_parser().parse_args(argv)
    if a.smoke:
        apply_smoke(a)
    bootstrap()
    import torch

    from vscan.tools.lm import resolve_amp, resolve_device
    dev = resolve_device(a.device)
    a.out.mkdir(parents=True, exist_ok=True)
    run_dir = a.run_dir or (a.out / "runs")
    run_dir.mkdir(parents=True, exist_ok=True)
    runs = plan(a)
    env = f"torch {torch.__version__}, device {dev}"
    if dev.type == "cuda":
        import triton
        env += f" ({torch.cuda.get_device_name(dev)}), triton {triton.__version__}"
    env += f", amp {resolve_amp(a.amp, dev) or 'none'}"
    meta = {"command": "python tools/lm_sweep.py " + " ".join(argv), "env": env, "time_budget": a.time_budget,
            "planned": len(runs), "run_names": [r["name"] for r in runs]}
    print(f"[sweep] {env}; {len(runs)} runs, budget {a.time_budget:.0f} s "
          f"(startup {time.time() - T_START:.1f} s)", flush=True)
    rows: list[dict] = []
    isolate = a.isolate
    overheads: list[float] = []
    for i, spec in enumerate(runs):
        left = a.time_budget - (time.time() - T_START) - a.reserve
        weights = [r["weight"] for r in runs[i:]]
        alloc = left * spec["weight"] / sum(weights)
        overhead = max(2.0, sum(overheads) / len(overheads)) if overheads else (3.0 if not isolate else 8.0)
        overhead *= 2 if spec["task"] == "induction" else 1       # long-length evaluations at the end
        limit = max(1.0, alloc - overhead)
        out = run_dir / spec["name"]
        argv_run = spec["argv"] + ["--out", str(out), "--time-limit", f"{limit:.1f}"]
        spec = {**spec, "argv": argv_run}
        if left < overhead + 1.0:
            rows.append(row_of(spec, None, "skipped", alloc, 0.0, "no time left in the budget"))
            print(f"[sweep] {i + 1}/{len(runs)} {spec['name']}: skipped (no time left)", flush=True)
            write_reports(a.out, run_dir, rows, meta, not a.no_bundle, a.bundle_weights)
            continue
        print(f"[sweep] {i + 1}/{len(runs)} {spec['name']}: time limit {limit:.0f} s", flush=True)
        t0 = time.time()
        try:
            res = (run_subprocess(argv_run, out, timeout=alloc + 60) if isolate else run_inprocess(argv_run))
            wall = time.time() - t0
            rows.append(row_of(spec, res, "ok", alloc, wall))
            overheads.append(max(0.0, wall - res["final"]["train_seconds"]) / (2 if spec["task"] == "induction" else 1))
        except Exception as err:  # keep going; record what broke
            wall = time.time() - t0
            tb = traceback.format_exc()
            rows.append(row_of(spec, None, "error", alloc, wall, f"{type(err).__name__}: {err}\n{tb[-2000:]}"))
            print(f"[sweep] {spec['name']} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
            if "out of memory" in str(err).lower():
                torch.cuda.empty_cache()
            if not isolate and dev.type == "cuda" and not cuda_usable():
                print("[sweep] CUDA is unusable in this process; running the rest one process each", flush=True)
                isolate = True
        r = rows[-1]
        if r["status"] == "ok":
            longs = " ".join(f"{k}={v:.3f}" for k, v in r.items() if k.startswith("acc@"))
            print(f"[sweep]   -> acc {r['acc']:.3f} (best {r['best_acc']:.3f}) {r['steps']} steps "
                  f"{r['train_s']:.0f} s {r['steps_per_s']:.0f} st/s, {r['stopped_by']} {longs}", flush=True)
        write_reports(a.out, run_dir, rows, meta, not a.no_bundle, a.bundle_weights)
    print(f"\n[sweep] done in {time.time() - T_START:.0f} s; reports in {a.out}\n", flush=True)
    print(compact_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
