"""Synthetic sequence tasks of the Mamba and Zoology papers, and an embedded byte-level text
corpus built from text that ships with Python (no downloads).

Every generator returns ``(inputs, labels)``, both (batch, length) int64: ``labels[b, t]`` is the
token the model must predict at position t, or -100 (ignored). Randomness comes only from
the ``generator`` argument, so a seed reproduces a batch exactly. The synthetic generators take
``device=``: the batch is then drawn on that device (the generator must live there too), with
no host synchronisation, so a GPU training loop never waits for the CPU to make data.

* :func:`selective_copying` (Mamba section 4.1.1, s4's ``torch_copying_data``)
* :func:`induction_heads` (Mamba section 4.1.2, safari's ``generate_induction_head``)
* :func:`mqar` multi-query associative recall (Zoology, ``multiquery_ar``), and
  :func:`mqar_mixture`, rows with different numbers of pairs in one batch (Based's training mix)
"""
from __future__ import annotations

import codecs
import contextlib
import importlib
import inspect
import io

import torch

IGNORE = -100


def _check(cond, field, msg):
    if not cond:
        raise ValueError(f"{field}: {msg}")


def _random_subset(batch, n, k, generator, device=None):
    """(batch, k) distinct ints from [0, n) per row, in random order."""
    return torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)[:, :k]


def selective_copying(batch: int, seq_len: int = 256, num_tokens: int = 16, vocab_size: int = 16,
                      generator: torch.Generator | None = None, device=None):
    """``num_tokens`` data tokens (ids 1..vocab_size-2) at sorted random positions among noise
    (id 0) in the first ``seq_len - num_tokens`` positions, then ``num_tokens`` markers
    (id vocab_size-1); at the markers the model must output the data tokens in order."""
    _check(vocab_size >= 3, "vocab_size", f"needs noise, marker and >= 1 data token (>= 3), got {vocab_size}")
    _check(num_tokens >= 1, "num_tokens", f"expected >= 1, got {num_tokens}")
    _check(seq_len >= 2 * num_tokens, "seq_len", f"must be >= 2 * num_tokens = {2 * num_tokens}, got {seq_len}")
    region = seq_len - num_tokens
    data = torch.randint(1, vocab_size - 1, (batch, num_tokens), generator=generator, device=device)
    pos = _random_subset(batch, region, num_tokens, generator, device).sort(dim=1).values
    inputs = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    inputs.scatter_(1, pos, data)
    inputs[:, region:] = vocab_size - 1
    labels = torch.full_like(inputs, IGNORE)
    labels[:, region:] = data
    return inputs, labels


def induction_heads(batch: int, seq_len: int = 256, vocab_size: int = 16, generator: torch.Generator | None = None,
                    device=None):
    """Random tokens from [0, vocab_size-1); the special token ``vocab_size-1`` appears at a random
    position followed by the token to remember, and again at the end, where the model must
    output that token (loss on the last position only)."""
    _check(vocab_size >= 3, "vocab_size", f"expected >= 3, got {vocab_size}")
    _check(seq_len >= 4, "seq_len", f"expected >= 4, got {seq_len}")
    special = vocab_size - 1
    inputs = torch.randint(0, special, (batch, seq_len), generator=generator, device=device)
    target = torch.randint(0, special, (batch,), generator=generator, device=device)
    p = torch.randint(0, seq_len - 2, (batch,), generator=generator, device=device)   # p + 1 <= seq_len - 2
    rows = torch.arange(batch, device=device)
    inputs[rows, p] = special
    inputs[rows, p + 1] = target
    inputs[:, -1] = special
    labels = torch.full_like(inputs, IGNORE)
    labels[:, -1] = target
    return inputs, labels


def mqar(batch: int, seq_len: int = 256, num_kv_pairs: int = 16, vocab_size: int = 8192, power_a: float = 0.01,
         random_non_queries: bool = True, generator: torch.Generator | None = None, device=None):
    """Multi-query associative recall. Keys (distinct, from [1, V/2)) and values (distinct, from
    [V/2, V)) first appear as ``k1 v1 k2 v2 ...``; each key is then queried once at a slot chosen
    with a power-law gap distribution p(g) ~ g^(a-1), followed by its value. The label at
    every query key is its value; the rest of the sequence is random tokens (or zeros)."""
    _check(num_kv_pairs >= 1, "num_kv_pairs", f"expected >= 1, got {num_kv_pairs}")
    _check(4 * num_kv_pairs <= seq_len, "seq_len", f"must be >= 4 * num_kv_pairs = {4 * num_kv_pairs}, got {seq_len}")
    _check(vocab_size // 2 - 1 >= num_kv_pairs, "vocab_size",
           f"{vocab_size} leaves fewer than num_kv_pairs={num_kv_pairs} distinct keys in [1, vocab_size/2)")
    _check(power_a > 0, "power_a", f"expected > 0, got {power_a}")
    half, ctx = vocab_size // 2, 2 * num_kv_pairs
    keys = _random_subset(batch, half - 1, num_kv_pairs, generator, device) + 1
    values = _random_subset(batch, vocab_size - half, num_kv_pairs, generator, device) + half
    if random_non_queries:
        inputs = torch.randint(0, vocab_size, (batch, seq_len), generator=generator, device=device)
    else:
        inputs = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = values
    slots = (seq_len - ctx) // 2
    gaps = torch.arange(1, slots + 1, dtype=torch.float64, device=device)
    w = (power_a * gaps ** (power_a - 1)).float().expand(batch, -1)
    # num_kv_pairs slots without replacement, p ~ w: what torch.multinomial(w, k, replacement=False)
    # does inside (w / Exp(1) noise, top k; the same numbers on CPU), minus its validity check,
    # which is a host sync on CUDA
    chosen = (w / torch.empty_like(w).exponential_(1, generator=generator)).topk(num_kv_pairs, dim=1).indices
    qpos = ctx + 2 * chosen
    inputs.scatter_(1, qpos, keys)
    inputs.scatter_(1, qpos + 1, values)
    labels = torch.full_like(inputs, IGNORE)
    labels.scatter_(1, qpos, values)
    return inputs, labels


def mqar_mixture(batch: int, seq_len: int = 256, kv_counts=(4, 8, 16, 32, 64), vocab_size: int = 8192,
                 power_a: float = 0.01, random_non_queries: bool = True, generator: torch.Generator | None = None,
                 device=None):
    """One batch of :func:`mqar` sequences, all of length ``seq_len``, whose rows hold different
    numbers of key-value pairs: the rows are split as evenly as the batch allows over
    ``kv_counts`` (a repeated count gets more rows), in that order. Rows with fewer pairs have
    fewer labelled positions. Training on such a mix is how Based's MQAR sweep learns 64 pairs
    at length 256 (../shared/reference/text_ltc.md section 3.3: the small counts are learnt first
    and teach the recall circuit that the large ones need)."""
    kv_counts = tuple(kv_counts)
    _check(len(kv_counts) >= 1 and all(isinstance(k, int) for k in kv_counts), "kv_counts",
           f"expected a non-empty sequence of ints, got {kv_counts!r}")
    _check(batch >= len(kv_counts), "batch", f"expected >= len(kv_counts) = {len(kv_counts)} rows, got {batch}")
    sizes = [batch // len(kv_counts) + (i < batch % len(kv_counts)) for i in range(len(kv_counts))]
    parts = [mqar(n, seq_len, kv, vocab_size, power_a, random_non_queries, generator, device)
             for n, kv in zip(sizes, kv_counts)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


# ----------------------------------------------------------------------------- text corpus
CORPUS_MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "gzip", "hashlib", "heapq", "html", "http.client", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "math", "operator", "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "sched",
    "shutil", "socket", "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "time", "tokenize", "turtle", "typing", "unittest", "urllib.parse", "uuid",
    "weakref", "zipfile",
)


def _zen() -> str:
    with contextlib.redirect_stdout(io.StringIO()):   # `import this` prints the Zen
        import this
    return codecs.decode(this.s, "rot13")


def _docstrings(module_name: str) -> list[str]:
    try:
        mod = importlib.import_module(module_name)
    except Exception:   # a module missing from this Python build is skipped
        return []
    out = [inspect.getdoc(mod) or ""]
    for name in sorted(dir(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name, None)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            out.append(f"{name}\n{inspect.getdoc(obj) or ''}")
            if inspect.isclass(obj):
                for mname, meth in sorted(vars(obj).items()):
                    if not mname.startswith("_") and inspect.isfunction(meth) and meth.__doc__:
                        out.append(f"{name}.{mname}\n{inspect.getdoc(meth)}")
    return [s for s in out if s.strip()]


def embedded_text_corpus(max_bytes: int | None = None) -> str:
    """English text that ships with Python: the Zen of Python, the interactive help topics
    (``pydoc_data.topics``) and the docstrings of ~60 standard-library modules, joined in a
    fixed order. The exact bytes depend on the Python version."""
    parts = [_zen()]
    try:
        from pydoc_data.topics import topics
        parts += [topics[k] for k in sorted(topics)]
    except ImportError:
        pass
    for m in CORPUS_MODULES:
        parts += _docstrings(m)
    text = "\n\n".join(p.strip() for p in parts if p.strip()) + "\n"
    if max_bytes is not None:
        text = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    return text


class ByteCorpus:
    """A text as a uint8 tensor of UTF-8 bytes, split into train (first part) and validation
    (last ``val_fraction``), sampled as random windows for next-byte prediction."""

    def __init__(self, text: str | None = None, val_fraction: float = 0.05, max_bytes: int | None = None):
        _check(0 < val_fraction < 1, "val_fraction", f"expected a value in (0, 1), got {val_fraction}")
        text = embedded_text_corpus(max_bytes) if text is None else text
        data = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
        n_val = max(2, int(len(data) * val_fraction))
        _check(len(data) - n_val >= 2, "text", f"too short ({len(data)} bytes) to split")
        self.train, self.val = data[:-n_val], data[-n_val:]

    def sample(self, batch: int, seq_len: int, split: str = "train", generator: torch.Generator | None = None):
        data = {"train": self.train, "val": self.val}.get(split)
        _check(data is not None, "split", f"expected 'train' or 'val', got {split!r}")
        _check(len(data) > seq_len + 1, "seq_len", f"{seq_len} does not fit the {split} split ({len(data)} bytes)")
        start = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        idx = start[:, None] + torch.arange(seq_len + 1)
        chunk = data[idx].long()
        return chunk[:, :-1], chunk[:, 1:]


# ----------------------------------------------------------------------------- tasks
class Task:
    """A named task: ``vocab_size`` and ``sample(batch, generator, seq_len=None, split='train', device=None)``.

    ``labels_per_row``: how many labelled positions every row of a batch has (the same for
    all rows; None: every position), which lets a training loop gather them without a host
    sync. ``device_native``: ``sample(device=...)`` draws on that device with a generator that
    lives there; otherwise the batch is drawn on the CPU (CPU generator) and moved.
    """
    name = "task"
    vocab_size: int
    seq_len: int
    labels_per_row: int | None = None
    device_native = False

    def sample(self, batch: int, generator=None, seq_len: int | None = None, split: str = "train", device=None):
        raise NotImplementedError


class MQARTask(Task):
    """MQAR with ``num_kv_pairs`` pairs. With ``train_kv_counts`` the training batches are a
    :func:`mqar_mixture` of those counts while evaluation (``split="val"``) stays at
    ``num_kv_pairs``; ``labels_per_row`` is then the largest count, and rows with fewer labels
    are padded with ignored positions by the training loop's fixed-shape gather."""
    name = "mqar"
    device_native = True

    def __init__(self, seq_len: int = 256, num_kv_pairs: int = 16, vocab_size: int = 8192, power_a: float = 0.01,
                 random_non_queries: bool = True, train_kv_counts=None):
        self.seq_len, self.num_kv_pairs, self.vocab_size = seq_len, num_kv_pairs, vocab_size
        self.power_a, self.random_non_queries = power_a, random_non_queries
        self.train_kv_counts = tuple(train_kv_counts) if train_kv_counts else None
        for kv in (num_kv_pairs, *(self.train_kv_counts or ())):   # validate once
            mqar(1, seq_len, kv, vocab_size, power_a, random_non_queries)
        self.labels_per_row = max((num_kv_pairs, *(self.train_kv_counts or ())))

    def sample(self, batch, generator=None, seq_len=None, split="train", device=None):
        if split == "train" and self.train_kv_counts:
            return mqar_mixture(batch, seq_len or self.seq_len, self.train_kv_counts, self.vocab_size,
                                self.power_a, self.random_non_queries, generator, device)
        return mqar(batch, seq_len or self.seq_len, self.num_kv_pairs, self.vocab_size, self.power_a,
                    self.random_non_queries, generator, device)


class InductionTask(Task):
    name = "induction"
    device_native = True
    labels_per_row = 1

    def __init__(self, seq_len: int = 256, vocab_size: int = 16):
        self.seq_len, self.vocab_size = seq_len, vocab_size
        induction_heads(1, seq_len, vocab_size)

    def sample(self, batch, generator=None, seq_len=None, split="train", device=None):
        return induction_heads(batch, seq_len or self.seq_len, self.vocab_size, generator, device)


class CopyTask(Task):
    name = "copy"
    device_native = True

    def __init__(self, seq_len: int = 256, num_tokens: int = 16, vocab_size: int = 16):
        self.seq_len, self.num_tokens, self.vocab_size = seq_len, num_tokens, vocab_size
        selective_copying(1, seq_len, num_tokens, vocab_size)
        self.labels_per_row = num_tokens

    def sample(self, batch, generator=None, seq_len=None, split="train", device=None):
        return selective_copying(batch, seq_len or self.seq_len, self.num_tokens, self.vocab_size, generator, device)


class TextTask(Task):
    """Next-byte prediction on :func:`embedded_text_corpus` (vocabulary: ByteTokenizer's 259)."""
    name = "text"
    vocab_size = 259

    def __init__(self, seq_len: int = 256, max_bytes: int | None = None, val_fraction: float = 0.05):
        self.seq_len = seq_len
        self.corpus = ByteCorpus(max_bytes=max_bytes, val_fraction=val_fraction)

    def sample(self, batch, generator=None, seq_len=None, split="train", device=None):
        x, y = self.corpus.sample(batch, seq_len or self.seq_len, split, generator)
        return (x, y) if device is None else (x.to(device, non_blocking=True), y.to(device, non_blocking=True))


TASKS = {"mqar": MQARTask, "induction": InductionTask, "copy": CopyTask, "text": TextTask}


def make_task(name: str, **kwargs) -> Task:
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**kwargs)
