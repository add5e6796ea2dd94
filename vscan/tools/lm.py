"""``vscan lm``: train and evaluate a language model (Mamba, Jamba, Hymba or attention-only) on
a synthetic recall task (MQAR, induction heads, selective copying) or on the embedded
byte-level text corpus. Writes ``metrics.json``, ``metrics.csv``, ``curves.png`` and
``model.pt`` to ``--out``.

    vscan lm --model jamba --task mqar --d-model 64 --seq-len 256 --num-kv 16 --steps 2000 --out runs/lm/x

On a GPU (``--device auto`` picks CUDA when there is one) training runs under bf16 autocast
(``--amp auto``), draws the synthetic batches on the device, uses fused AdamW, and makes no
host sync per step of its own: losses are read only at evaluations (every ``--eval-every``
steps), on a fixed evaluation set drawn once. CPU runs behave as before. ``--cuda-graph``
replays each training step (forward, backward, clipping, AdamW) from one captured CUDA graph:
the small models of the recall benchmarks are bound by kernel launches, not arithmetic.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vscan.data.text_tasks import IGNORE

MODELS = ("mamba", "jamba", "hymba", "attention")
TASK_VOCAB = {"mqar": 8192, "induction": 16, "copy": 16}


def _int_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()] if s else []


def _float_or_none(s: str):
    return None if s.lower() == "none" else float(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vscan lm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="mamba")
    p.add_argument("--task", choices=("mqar", "induction", "copy", "text"), default="mqar")
    g = p.add_argument_group("model size")
    g.add_argument("--d-model", type=int, default=64)
    g.add_argument("--n-layers", type=int, default=2)
    g.add_argument("--d-state", type=int, default=16)
    g.add_argument("--d-conv", type=int, default=4)
    g.add_argument("--expand", type=float, default=2)
    g.add_argument("--heads", type=int, default=2, help="attention heads")
    g.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    g.add_argument("--d-ff", type=int, default=0, help="MLP / expert width; 0 = no MLP (Zoology's MQAR setting)")
    g.add_argument("--window", type=int, default=None, help="sliding window (attention: all layers; hymba: local layers)")
    g.add_argument("--global-layers", type=_int_list, default=None,
                   help="hymba: layers with full attention, e.g. 1 (default: first, middle and last); the others "
                        "use --window")
    g.add_argument("--meta-tokens", type=int, default=0, help="hymba: learnable meta tokens")
    g.add_argument("--no-rope", action="store_true",
                   help="attention / hymba: no rotary positions (Jamba's attention never has them)")
    g.add_argument("--no-attn-norm", action="store_true",
                   help="hymba: no RMSNorm on the attention branch before the average (a learnable scale only)")
    g.add_argument("--attn-scale", type=_float_or_none, default=1.0,
                   help="hymba: initial attention-branch scale; 'none' with --no-attn-norm: no scale parameter")
    g.add_argument("--ssm-scale", type=float, default=1.0, help="hymba: initial SSM-branch scale")
    g.add_argument("--num-experts", type=int, default=1, help="jamba: experts per MoE layer (1 = dense MLP)")
    g.add_argument("--top-k", type=int, default=2, help="jamba: experts per token")
    g.add_argument("--attn-period", type=int, default=None, help="jamba: attn_layer_period (default min(8, n_layers))")
    g.add_argument("--attn-offset", type=int, default=None, help="jamba: attn_layer_offset (default period // 2)")
    t = p.add_argument_group("task")
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--num-kv", type=int, default=16, help="mqar: key-value pairs")
    t.add_argument("--train-kv", type=_int_list, default=[],
                   help="mqar: train on a mix of these key-value counts, e.g. 4,8,16,32,64 (Based's MQAR mix; "
                        "each batch split evenly over them); evaluation stays at --num-kv")
    t.add_argument("--vocab", type=int, default=None, help=f"task vocabulary (default {TASK_VOCAB})")
    t.add_argument("--copy-tokens", type=int, default=16, help="copy: tokens to memorise")
    t.add_argument("--zero-fill", action="store_true", help="mqar: zeros instead of random non-query tokens")
    t.add_argument("--eval-lengths", type=_int_list, default=[],
                   help="comma-separated longer test lengths (induction, copy, text), e.g. 512,1024,4096")
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch", type=int, default=32)
    o.add_argument("--steps", type=int, default=1000)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--weight-decay", type=float, default=0.1)
    o.add_argument("--warmup", type=int, default=50)
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--eval-every", type=int, default=100)
    o.add_argument("--eval-batches", type=int, default=4)
    o.add_argument("--eval-batch", type=int, default=64)
    o.add_argument("--target-acc", type=float, default=None, help="stop early once eval accuracy reaches this")
    o.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    o.add_argument("--target-all-lengths", action="store_true",
                   help="early stop only once --eval-lengths reach --target-acc too (checked when the training length has)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("auto", "bf16", "none"), default="auto",
                   help="autocast dtype; auto = bf16 on a CUDA device that supports it, none elsewhere")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA only: replay the training step from a captured CUDA graph (after 3 eager steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("runs/lm"))
    p.add_argument("--no-save", action="store_true", help="do not write model.pt")
    p.add_argument("--sample", type=int, default=0, help="text: bytes to generate from a prompt after training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def make_task(args):
    from vscan.data.text_tasks import make_task as _make
    vocab = args.vocab or TASK_VOCAB.get(args.task)
    if args.task == "mqar":
        return _make("mqar", seq_len=args.seq_len, num_kv_pairs=args.num_kv, vocab_size=vocab,
                     random_non_queries=not args.zero_fill, train_kv_counts=getattr(args, "train_kv", None) or None)
    if args.task == "induction":
        return _make("induction", seq_len=args.seq_len, vocab_size=vocab)
    if args.task == "copy":
        return _make("copy", seq_len=args.seq_len, num_tokens=args.copy_tokens, vocab_size=vocab)
    return _make("text", seq_len=args.seq_len)


def build_model(args, vocab_size: int):
    from vscan.models.lm import AttentionLM, HymbaLM, JambaLM, MambaLM
    d, n = args.d_model, args.n_layers
    kv = args.kv_heads or args.heads
    max_len = max([args.seq_len, *args.eval_lengths]) + args.meta_tokens + 1
    if args.model == "mamba":
        return MambaLM(vocab_size=vocab_size, d_model=d, n_layers=n, d_state=args.d_state, d_conv=args.d_conv,
                       expand=args.expand, d_ff=args.d_ff)
    if args.model == "attention":
        return AttentionLM(vocab_size=vocab_size, d_model=d, n_layers=n, num_heads=args.heads, num_kv_heads=kv,
                           d_ff=args.d_ff, window=args.window, rope=not getattr(args, "no_rope", False))
    if args.model == "jamba":
        period = args.attn_period or min(8, n)
        offset = args.attn_offset if args.attn_offset is not None else period // 2
        return JambaLM(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=n, num_attention_heads=args.heads,
                       num_key_value_heads=kv, intermediate_size=args.d_ff, num_experts=args.num_experts,
                       num_experts_per_tok=min(args.top_k, args.num_experts), attn_layer_period=period,
                       attn_layer_offset=offset, expert_layer_period=2, expert_layer_offset=1 if n > 1 else 0,
                       mamba_d_state=args.d_state, mamba_d_conv=args.d_conv, mamba_expand=args.expand,
                       sliding_window=args.window, max_position_embeddings=max_len,
                       pad_token_id=None, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True)
    return HymbaLM(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=n, num_attention_heads=args.heads,
                   num_key_value_heads=kv, intermediate_size=args.d_ff, num_memory_tokens=args.meta_tokens,
                   sliding_window=args.window, global_attn_idx=getattr(args, "global_layers", None),
                   mamba_d_state=args.d_state, mamba_d_conv=args.d_conv,
                   mamba_expand=args.expand, max_position_embeddings=max_len, rope=not getattr(args, "no_rope", False),
                   attn_output_norm=not getattr(args, "no_attn_norm", False),
                   attn_output_scale=getattr(args, "attn_scale", 1.0), ssm_output_scale=getattr(args, "ssm_scale", 1.0),
                   pad_token_id=None, bos_token_id=None, eos_token_id=None)


def _loss_and_acc(model, x, y, labels_per_row=None, check_ids=True):
    """Cross-entropy and accuracy over the labelled positions only (logits are computed there
    alone, which keeps an 8192-token vocabulary cheap). With ``labels_per_row`` (every row has
    that many labels) the positions are gathered with a fixed shape, without the host sync
    of boolean indexing; the mean is the same. ``check_ids=False`` skips the id range check
    (another sync) for batches the task generator made."""
    h = model.forward_hidden(x, check_ids=check_ids)
    if labels_per_row is not None:
        pos = (y != IGNORE).to(torch.float32).topk(labels_per_row, dim=1).indices      # (b, k), no sync
        target = y.gather(1, pos)
        logits = model.logits(h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1])))
        logits, target = logits.flatten(0, 1), target.flatten()
    else:
        mask = y != IGNORE
        logits = model.logits(h[mask])
        target = y[mask]
    # a gathered row with fewer labels than labels_per_row (a mixed MQAR batch) brings ignored
    # positions: cross_entropy skips them, and the accuracy counts labelled positions only
    valid = target != IGNORE
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE)
    acc = ((logits.argmax(-1) == target) & valid).sum() / valid.sum().clamp_min(1)
    return loss, acc


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"vscan lm: --device {name}: no CUDA device is available")
    return dev


def resolve_amp(name: str, device: torch.device):
    """The autocast dtype (None: full precision)."""
    if name == "none":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _autocast(device, amp_dtype, cache: bool = True):
    """Autocast to ``amp_dtype`` (None: off). ``cache=False`` under CUDA-graph capture."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=cache)


class _Data:
    """Training batches and a fixed evaluation set (per length), on the training device."""

    def __init__(self, task, args, device):
        self.task, self.args, self.device = task, args, device
        native = device.type != "cpu" and getattr(task, "device_native", False)
        self.gen_device = device if native else torch.device("cpu")
        self.sample_device = device if device.type != "cpu" else None
        self.g = self._gen(args.seed)
        self._eval: dict = {}

    def _gen(self, seed):
        return torch.Generator(device=self.gen_device).manual_seed(seed)

    def train_batch(self):
        return self.task.sample(self.args.batch, self.g, device=self.sample_device)

    def eval_batches(self, seq_len=None, batches=None):
        """The same batches every time: drawn once from seed 10_000 + seed (on the CPU the
        generator is re-seeded instead, so nothing is kept in memory)."""
        n = batches or self.args.eval_batches
        key = (seq_len, n)
        if self.device.type == "cpu":
            g = self._gen(10_000 + self.args.seed)
            return (self.task.sample(self.args.eval_batch, g, seq_len=seq_len, split="val") for _ in range(n))
        if key not in self._eval:
            g = self._gen(10_000 + self.args.seed)
            self._eval[key] = [self.task.sample(self.args.eval_batch, g, seq_len=seq_len, split="val",
                                                device=self.sample_device) for _ in range(n)]
        return self._eval[key]


@torch.no_grad()
def evaluate(model, task, args, seq_len=None, batches=None, data: _Data | None = None, amp_dtype=None):
    model.eval()
    if data is None:
        data = _Data(task, args, next(model.parameters()).device)
    k = getattr(task, "labels_per_row", None)
    losses, accs = [], []
    for x, y in data.eval_batches(seq_len, batches):
        with _autocast(data.device, amp_dtype):
            loss, acc = _loss_and_acc(model, x, y, k)
        losses.append(loss)
        accs.append(acc)
    model.train()
    return torch.stack(losses).mean().item(), torch.stack(accs).mean().item()


def _lr_at(step, args, elapsed: float = 0.0):
    """Linear warm-up, then cosine decay to 0 over the run; with ``--time-limit`` the decay
    follows whichever of steps and time runs out first, so a time-boxed run still anneals."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    if args.time_limit:
        frac = max(frac, elapsed / args.time_limit)
    return args.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def _optimizer(model, args, graph: bool = False):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    lr = args.lr
    if graph:   # a captured step reads the learning rate from a tensor that is refilled each step
        fused["capturable"] = True
        lr = torch.tensor(args.lr, device=next(model.parameters()).device)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), **fused)


class _TrainStep:
    """One optimisation step, ``step(x, y, lr, check_ids) -> (loss, acc)`` as device tensors.

    Eager by default. With ``graph=True`` (CUDA) the first ``WARMUP`` calls run eagerly on a side
    stream (Triton compiles, the allocator settles), the next one captures forward, backward,
    clipping and the optimizer step into a CUDA graph, and every call from then on copies its
    batch into the graph's static inputs and replays it. Every call is a real step on its own
    batch. Autocast's weight cache is off under capture, as CUDA graphs require."""

    WARMUP = 3

    def __init__(self, model, opt, labels_per_row, device, amp_dtype, grad_clip, graph=False):
        self.model, self.opt, self.k = model, opt, labels_per_row
        self.device, self.amp_dtype, self.grad_clip, self.graph = device, amp_dtype, grad_clip, graph
        self.calls, self.cuda_graph, self.static, self.out = 0, None, None, None

    def _body(self, x, y, check_ids):
        model = self.model
        with _autocast(self.device, self.amp_dtype, cache=not self.graph):
            loss, acc = _loss_and_acc(model, x, y, self.k, check_ids=check_ids)
        total = loss + model.aux_loss_coef * model.aux_loss() if model.aux_loss_coef else loss
        total.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.opt.step()
        return loss.detach(), acc.detach()

    def __call__(self, x, y, lr, check_ids=False):
        self.calls += 1
        if not self.graph:
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            return self._body(x, y, check_ids)
        for group in self.opt.param_groups:
            group["lr"].fill_(lr)
        if self.calls <= self.WARMUP:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                out = self._body(x, y, check_ids)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        if self.cuda_graph is None:
            self.static = (x.clone(), y.clone())
            self.opt.zero_grad(set_to_none=True)      # backward in the graph then writes fresh grads
            self.cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.cuda_graph):
                self.out = self._body(*self.static, False)
        else:
            self.static[0].copy_(x)
            self.static[1].copy_(y)
        self.cuda_graph.replay()
        return self.out


def train(args) -> dict:
    from tqdm import tqdm

    from vscan.engine.io import atomic_torch_save, atomic_write_csv, atomic_write_json
    from vscan.engine.plots import plot_curves

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", "cpu"))
    amp_dtype = resolve_amp(getattr(args, "amp", "none"), device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    task = make_task(args)
    model = build_model(args, task.vocab_size).to(device)
    graph = bool(getattr(args, "cuda_graph", False))
    if graph and device.type != "cuda":
        raise SystemExit(f"vscan lm: --cuda-graph needs a CUDA device, got --device {device}")
    opt = _optimizer(model, args, graph)
    data = _Data(task, args, device)
    k = getattr(task, "labels_per_row", None)
    ev = lambda L=None: evaluate(model, task, args, seq_len=L, data=data, amp_dtype=amp_dtype)  # noqa: E731
    ev_loss, ev_acc = ev()
    rows = [{"step": 0, "train_loss": None, "train_acc": None, "eval_loss": ev_loss, "eval_acc": ev_acc,
             "lr": 0.0, "elapsed_s": 0.0}]
    t0 = time.time()
    best_acc, stopped = ev_acc, "steps"
    bar = tqdm(range(args.steps), desc=f"{args.model}/{args.task}", disable=args.quiet, dynamic_ncols=True)
    train_step = _TrainStep(model, opt, k, device, amp_dtype, args.grad_clip, graph)
    for step in bar:
        lr = _lr_at(step, args, time.time() - t0)
        x, y = data.train_batch()
        loss, acc = train_step(x, y, lr, check_ids=step == 0)
        last = step + 1 == args.steps
        out_of_time = args.time_limit is not None and time.time() - t0 > args.time_limit
        if (step + 1) % args.eval_every == 0 or last or out_of_time:
            ev_loss, ev_acc = ev()
            best_acc = max(best_acc, ev_acc)
            row = {"step": step + 1, "train_loss": loss.item(), "train_acc": acc.item(), "eval_loss": ev_loss,
                   "eval_acc": ev_acc, "lr": lr, "elapsed_s": round(time.time() - t0, 1)}
            rows.append(row)
            bar.set_postfix(loss=f"{loss.item():.3f}", eval_acc=f"{ev_acc:.3f}")
            if args.target_acc is not None and ev_acc >= args.target_acc:
                reached = True
                if getattr(args, "target_all_lengths", False):
                    for L in args.eval_lengths:
                        row[f"acc@{L}"] = ev(L)[1]
                    reached = all(row[f"acc@{L}"] >= args.target_acc for L in args.eval_lengths)
                if reached:
                    stopped = "target_acc"
                    break
        if out_of_time:
            stopped = "time_limit"
            break
    bar.close()
    train_s = time.time() - t0
    final = {"eval_loss": rows[-1]["eval_loss"], "eval_acc": rows[-1]["eval_acc"], "best_eval_acc": best_acc,
             "steps_run": rows[-1]["step"], "stopped_by": stopped, "train_seconds": round(train_s, 1),
             "steps_per_s": round(rows[-1]["step"] / max(train_s, 1e-9), 1)}
    if args.task == "text":
        final["eval_bits_per_byte"] = final["eval_loss"] / math.log(2)
    for L in args.eval_lengths:
        final[f"acc@{L}"] = rows[-1][f"acc@{L}"] if f"acc@{L}" in rows[-1] else ev(L)[1]
    if args.sample and args.task == "text":
        from vscan.models.lm import ByteTokenizer
        tok = ByteTokenizer()
        prompt = tok("The Zen of Python")
        out_ids = model.generate(prompt, max_new_tokens=args.sample, temperature=0.8, top_p=0.95,
                                 generator=torch.Generator(device=device).manual_seed(args.seed))
        final["sample"] = tok.decode(out_ids.cpu())
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "vscan lm " + shlex.join(args.argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "argv"},
        "params": model.num_params(), "final": final, "history": rows,
        "env": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
                "device": str(device), "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none",
                **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})},
    }
    atomic_write_json(args.out / "metrics.json", result)
    atomic_write_csv(args.out / "metrics.csv", rows)
    plot_curves(rows, args.out / "curves.png", x="step", panels=[["train_loss", "eval_loss"], ["train_acc", "eval_acc"]],
                title=f"{args.model} on {args.task} (d_model {args.d_model})")
    if not args.no_save:
        atomic_torch_save({"state_dict": model.state_dict(), "args": result["args"]}, args.out / "model.pt")
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    for name in ("d_model", "n_layers", "batch", "steps", "seq_len", "eval_every", "eval_batches", "eval_batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"vscan lm: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.train_kv and args.task != "mqar":
        raise SystemExit(f"vscan lm: --train-kv is an MQAR option, got --task {args.task}")
    if args.global_layers is not None and (args.model != "hymba" or args.window is None):
        raise SystemExit("vscan lm: --global-layers is a hymba option and needs --window (the other layers' "
                         f"span), got --model {args.model} --window {args.window}")
    threads = torch.get_num_threads()
    try:
        res = train(args)
    finally:   # main() may run inside another process (tests): leave its thread count as found
        torch.set_num_threads(threads)
    print(json.dumps({"model": args.model, "task": args.task, "params": res["params"], **{
        k: v for k, v in res["final"].items() if k != "sample"}}, indent=None))
    if "sample" in res["final"]:
        print(res["final"]["sample"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
