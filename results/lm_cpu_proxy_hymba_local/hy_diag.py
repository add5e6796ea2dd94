"""CPU diagnostic: train an MQAR model for a few hundred steps; every K steps probe each attention
head (mass on the value / key / self) and the branch output sizes, one JSON line per probe.
usage: [PATCH=...] python hy_diag.py NAME STEPS EVERY [vscan lm arguments]"""
import sys, json, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tools'))
torch.set_num_threads(1)
from vscan.tools import lm
from lm_probe import probe

class ZeroOut(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)

def main():
    name, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    extra = sys.argv[4:]
    a = lm.build_parser().parse_args(("--task mqar --seq-len 64 --num-kv 16 --vocab 512 --zero-fill --d-model 64 "
        "--n-layers 2 --d-state 16 --expand 2 --heads 2 --d-ff 0 --batch 64 --device cpu").split() + extra)
    torch.manual_seed(a.seed)
    task = lm.make_task(a)
    m = lm.build_model(a, task.vocab_size)
    import os
    for p in filter(None, os.environ.get('PATCH', '').split(',')):
        kind, li = p[:-1], int(p[-1])
        mix = m.layers[li].mixer
        if kind == 'ident':
            mix.attn_norm = torch.nn.Identity()
        elif kind == 'soft':
            mix.attn_norm.eps = float(os.environ.get('SOFT_EPS', '1.0'))
        elif kind == 'noattn':       # attention branch off (output zero)
            mix.attn_norm = ZeroOut()
        elif kind == 'nossm':
            mix.ssm_norm = ZeroOut()
        elif kind == 'local':        # layer attention window
            mix.attn.window = int(os.environ.get('LOCAL_W', '2'))
        else:
            raise SystemExit('bad patch ' + p)
    opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=0.1)
    g = torch.Generator().manual_seed(a.seed)
    sizes = {}
    def hook(mod, inp, out):
        sizes.setdefault(mod._diag_name, []).append(float(out.float().pow(2).mean().sqrt()))
    for n, mod in m.named_modules():
        if n.endswith('attn_norm') or n.endswith('ssm_norm'):
            mod._diag_name = n; mod.register_forward_hook(hook)
    t0 = time.time()
    for s in range(steps + 1):
        if s % every == 0:
            m.eval(); sizes.clear()
            r = probe(m, task, a, batch=64, seed=1)
            m.train()
            heads = [(h['call'], h['head'], round(h['value'], 3), round(h['key'], 3), round(h['self'], 3)) for h in r['heads']]
            rec = dict(step=s, acc=round(r['acc'], 3), heads=heads, sizes={k: round(v[-1], 3) for k, v in sizes.items()}, t=round(time.time()-t0))
            print(json.dumps(rec), flush=True)
        if s == steps: break
        lr = a.lr * min(1.0, (s + 1) / 100)
        for pg in opt.param_groups: pg['lr'] = lr
        x, y = task.sample(a.batch, generator=g)
        loss, acc = lm._loss_and_acc(m, x, y)
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
main()
