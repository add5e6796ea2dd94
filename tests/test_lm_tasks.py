"""Task generators, the byte tokenizer / corpus, and tiny `vscan lm` runs that lower the loss."""
import json

import pytest
import torch

from vscan.data.text_tasks import (ByteCorpus, embedded_text_corpus, induction_heads, make_task, mqar, mqar_mixture,
                                   selective_copying)
from vscan.models.lm import BYTE_MODELS, ByteTokenizer
from vscan.tools.lm import main as lm_main


def test_mqar_structure():
    g = torch.Generator().manual_seed(0)
    x, y = mqar(4, seq_len=64, num_kv_pairs=8, vocab_size=128, generator=g)
    assert x.shape == y.shape == (4, 64)
    for b in range(4):
        keys, vals = x[b, 0:16:2].tolist(), x[b, 1:16:2].tolist()
        assert len(set(keys)) == 8 and all(1 <= k < 64 for k in keys) and all(64 <= v < 128 for v in vals)
        q = (y[b] != -100).nonzero().flatten().tolist()
        assert len(q) == 8 and all(p >= 16 for p in q)
        pairs = dict(zip(keys, vals))
        assert sorted(x[b, q].tolist()) == sorted(keys)                       # every key queried once
        assert all(y[b, p].item() == pairs[x[b, p].item()] for p in q)       # label = its value
    x2, y2 = mqar(4, 64, 8, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_mqar_mixture_rows_hold_their_counts():
    x, y = mqar_mixture(7, seq_len=64, kv_counts=(2, 8, 8), vocab_size=128, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (7, 64)
    counts = (y != -100).sum(1).tolist()
    assert counts == [2, 2, 2, 8, 8, 8, 8]              # 7 rows over 3 counts: 3 / 2 / 2, in order
    for b, kv in enumerate(counts):
        keys, vals = x[b, 0:2 * kv:2].tolist(), x[b, 1:2 * kv:2].tolist()
        pairs = dict(zip(keys, vals))
        q = (y[b] != -100).nonzero().flatten().tolist()
        assert len(set(keys)) == kv and sorted(x[b, q].tolist()) == sorted(keys)
        assert all(y[b, p].item() == pairs[x[b, p].item()] for p in q)
    task = make_task("mqar", seq_len=64, num_kv_pairs=4, vocab_size=128, train_kv_counts=(2, 8))
    assert task.labels_per_row == 8
    _, yv = task.sample(5, torch.Generator().manual_seed(0), split="val")       # evaluation stays at 4 pairs
    assert ((yv != -100).sum(1) == 4).all()
    with pytest.raises(ValueError, match="seq_len"):
        make_task("mqar", seq_len=32, num_kv_pairs=4, vocab_size=128, train_kv_counts=(4, 16))
    with pytest.raises(ValueError, match="batch"):
        mqar_mixture(2, seq_len=64, kv_counts=(2, 4, 8), vocab_size=128)


def test_induction_and_copy_structure():
    x, y = induction_heads(8, seq_len=32, vocab_size=16, generator=torch.Generator().manual_seed(0))
    assert (x[:, -1] == 15).all() and (y[:, :-1] == -100).all()
    for b in range(8):
        first = (x[b, :-1] == 15).nonzero().flatten()
        assert len(first) == 1 and x[b, first[0] + 1] == y[b, -1]
    x, y = selective_copying(3, seq_len=40, num_tokens=5, vocab_size=10, generator=torch.Generator().manual_seed(0))
    assert (x[:, -5:] == 9).all()
    for b in range(3):
        data = x[b, :35][x[b, :35] != 0]
        assert data.tolist() == y[b, -5:].tolist()


@pytest.mark.parametrize("call,field", [
    (lambda: mqar(1, seq_len=32, num_kv_pairs=9), "seq_len"),
    (lambda: mqar(1, seq_len=64, num_kv_pairs=8, vocab_size=16), "vocab_size"),
    (lambda: selective_copying(1, seq_len=8, num_tokens=5), "seq_len"),
    (lambda: induction_heads(1, seq_len=8, vocab_size=2), "vocab_size"),
    (lambda: make_task("nope"), "task"),
])
def test_task_errors_name_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_byte_tokenizer_and_corpus():
    tok = ByteTokenizer()
    s = "héllo, wörld ✓"
    ids = tok.encode(s, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.decode(ids) == s
    with pytest.raises(ValueError, match="ids"):
        tok.decode([300])
    text = embedded_text_corpus()
    assert "Beautiful is better than ugly." in text and len(text) > 100_000
    corpus = ByteCorpus(text[:50_000])
    x, y = corpus.sample(2, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 256


@pytest.mark.parametrize("family", sorted(BYTE_MODELS))
def test_byte_models_generate_text(family):
    small = {"mamba": dict(d_model=16, n_layers=1, d_state=4),
             "attention": dict(d_model=16, n_layers=1, num_heads=2, d_ff=16),
             "jamba": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=16, attn_layer_period=2, attn_layer_offset=1, num_experts=2,
                           num_experts_per_tok=1, mamba_d_state=4),
             "hymba": dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           intermediate_size=16, num_memory_tokens=2, sliding_window=4, mamba_d_state=4,
                           max_position_embeddings=64)}[family]
    torch.manual_seed(0)
    m = BYTE_MODELS[family](**small)
    assert m.vocab_size == ByteTokenizer.vocab_size
    tok = ByteTokenizer()
    out = m.generate(tok("abc"), max_new_tokens=4, temperature=1.0, top_p=0.9)
    assert out.shape == (7,) and isinstance(tok.decode(out), str)


TINY = ["--d-model", "32", "--d-state", "8", "--heads", "2", "--eval-batches", "1", "--eval-batch", "16",
        "--batch", "16", "--warmup", "5", "--lr", "5e-3", "--threads", "1", "--quiet"]


@pytest.mark.parametrize("model,task,extra", [
    ("jamba", "mqar", ["--seq-len", "32", "--num-kv", "4", "--vocab", "64", "--steps", "40", "--num-experts", "2",
               "--d-ff", "32"]),
    ("attention", "induction", ["--seq-len", "24", "--steps", "40", "--eval-lengths", "48"]),
    ("mamba", "copy", ["--seq-len", "24", "--copy-tokens", "4", "--steps", "40"]),
    ("hymba", "text", ["--seq-len", "32", "--steps", "30", "--meta-tokens", "2", "--window", "8", "--n-layers", "3",
                       "--sample", "8"]),
])
def test_tiny_run_lowers_the_loss(tmp_path, model, task, extra):
    out = tmp_path / f"{model}_{task}"
    assert lm_main(["--model", model, "--task", task, *TINY, *extra, "--eval-every", "100", "--out", str(out)]) == 0
    res = json.loads((out / "metrics.json").read_text())
    hist = res["history"]
    assert hist[0]["step"] == 0 and hist[-1]["step"] == res["final"]["steps_run"]
    assert hist[-1]["eval_loss"] < hist[0]["eval_loss"] - 0.05, hist
    for name in ("metrics.csv", "curves.png", "model.pt"):
        assert (out / name).stat().st_size > 0
    if task == "induction":
        assert "acc@48" in res["final"]
    if task == "text":
        assert isinstance(res["final"]["sample"], str) and "eval_bits_per_byte" in res["final"]


def test_cuda_graph_needs_cuda(tmp_path):
    with pytest.raises(SystemExit, match="--cuda-graph needs a CUDA device"):
        lm_main(["--model", "mamba", "--task", "mqar", *TINY, "--seq-len", "32", "--num-kv", "4", "--vocab", "64",
                 "--steps", "2", "--device", "cpu",
                 "--cuda-graph", "--out", str(tmp_path)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("model", ["mamba", "jamba", "hymba", "attention", "hymba --window 2 --global-layers 1"])
def test_cuda_graph_steps_equal_eager_steps(tmp_path, model):
    """Training replayed from a CUDA graph takes the same steps as eager training: same seed,
    same batches, so the evaluation losses agree (up to float32 summation order in atomics).
    The windowed Hymba case failed to capture while its attention mask asked the host whether
    the window covered everything."""
    hist = {}
    for mode in ("eager", "graph"):
        out = tmp_path / mode
        argv = ["--model", *model.split(), "--task", "mqar", *TINY, "--seq-len", "64", "--num-kv", "8",
                "--vocab", "64", "--steps", "60", "--eval-every", "20", "--amp", "none", "--no-save", "--out", str(out)]
        assert lm_main(argv + (["--cuda-graph"] if mode == "graph" else [])) == 0
        hist[mode] = [r["eval_loss"] for r in json.loads((out / "metrics.json").read_text())["history"]]
    assert len(hist["eager"]) == len(hist["graph"]) == 4
    assert hist["graph"][-1] < hist["graph"][0] - 0.05
    for a, b in zip(hist["eager"], hist["graph"]):
        assert abs(a - b) <= 2e-3 * max(1.0, abs(a)), hist


@pytest.mark.parametrize("model", ["attention", "hymba"])
def test_no_rope_reaches_every_attention_layer(model):
    from vscan.layers.attention import CausalSelfAttention
    from vscan.tools.lm import build_model, build_parser
    ropes = {}
    for flag in ([], ["--no-rope"]):
        args = build_parser().parse_args(["--model", model, "--d-model", "16", "--heads", "2", *flag])
        args.argv = []
        m = build_model(args, 32)
        ropes[bool(flag)] = {a.rope for a in m.modules() if isinstance(a, CausalSelfAttention)}
    assert ropes == {False: {True}, True: {False}}


def test_hymba_global_layers_set_which_layers_attend_locally():
    from vscan.tools.lm import build_model, build_parser
    windows = {}
    for extra in ([], ["--window", "2"], ["--window", "2", "--global-layers", "1"],
                  ["--window", "2", "--global-layers", ""]):
        args = build_parser().parse_args(["--model", "hymba", "--d-model", "16", "--heads", "2", "--n-layers", "3",
                                          *extra])
        windows[" ".join(extra)] = [blk.mixer.attn.window for blk in build_model(args, 32).layers]
    # default: first, middle and last layer global, so a 3-layer model has no local layer at all
    assert windows == {"": [None] * 3, "--window 2": [None] * 3, "--window 2 --global-layers 1": [2, None, 2],
                       "--window 2 --global-layers ": [2] * 3}
    args = build_parser().parse_args(["--model", "hymba", "--d-model", "16", "--heads", "2", "--global-layers", "3"])
    with pytest.raises(ValueError, match="global_attn_idx"):
        build_model(args, 32)
    for bad in (["--model", "hymba", "--global-layers", "1"], ["--model", "attention", "--window", "2",
                                                                "--global-layers", "1"]):
        with pytest.raises(SystemExit, match="--global-layers is a hymba option and needs --window"):
            lm_main([*bad, "--task", "mqar", "--steps", "1", "--device", "cpu", "--no-save"])


@pytest.mark.parametrize("window", [1, 3, 40])
def test_cache_free_windowed_attention_makes_no_host_sync(monkeypatch, window):
    """The cache-free forward of a sliding-window layer builds its mask without asking the host
    anything (a CUDA graph cannot capture that), and still equals attention written out."""
    from vscan.layers.attention import CausalSelfAttention
    torch.manual_seed(0)
    att = CausalSelfAttention(16, num_heads=2, window=window, rope=True).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)

    def no_sync(self):
        raise AssertionError("host sync in a cache-free forward")
    monkeypatch.setattr(torch.Tensor, "__bool__", no_sync)
    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    y = att(x)
    monkeypatch.undo()
    from vscan.layers.attention import rotary
    pos = torch.arange(12)
    q = rotary(att.q_proj(x).view(2, 12, 2, 8).transpose(1, 2), pos, att.rope_theta)
    k = rotary(att.k_proj(x).view(2, 12, 2, 8).transpose(1, 2), pos, att.rope_theta)
    v = att.v_proj(x).view(2, 12, 2, 8).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / 8 ** 0.5
    qp, kp = pos[:, None], pos[None, :]
    s = s.masked_fill(~((kp <= qp) & (qp - kp < window)), float("-inf"))
    want = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, 16)
    assert torch.allclose(y, att.o_proj(want), atol=1e-12)
