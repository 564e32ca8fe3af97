"""HoloTransformer — the hybrid decoder: holographic LongAttention layers with a few rotary softmax layers.

Paper: Holo-Transformer: A Hybrid Architecture for O(N) Long-Context Reasoning (cited in the code
       only; no paper text found). Code checked: Longcodedao/long-attention@1c705f0
       (hybrid_model.py, the v1 model), through our reference notes (methods.md §3.4).
Idea:  A GPT-style stack of pre-norm blocks. Most blocks mix tokens with zoo/holographic.py's
       LongAttention (one complex memory per layer, a constant-size decode state); a few, at
       configurable depths, are exact causal softmax attention with rotary position embeddings,
       which give the model the positions and exact look-up the holographic memory lacks.
       The MLP is SwiGLU; the output head is the token embedding (tied).
Math (block i; x [B, T, C]):
  (1) x ← x + mixer_i(LN1(x)),  mixer_i = softmax attention with RoPE if i ∈ attn_layers, else LongAttention
  (2) x ← x + W2(SiLU(W1 LN2(x)) ⊙ W3 LN2(x))                 SwiGLU, bias-free, width ffn_dim
  (3) logits = LN_f(x) Eᵀ                                      E the token embedding (tied head)
  RoPE (rotate-half, base 10000): for pairs (j, j + D/2), angle t·base^(−2j/D) rotates q_t, k_t.
Shapes: idx [B, T] int64 -> logits [B, T, vocab]; decode caches: a holographic layer {"M": [B, 1, hd, 2],
        "t": [B]} (constant), a softmax layer {"k", "v": [B, t, H, D]} (grows with t).
Cost:  holographic layers O(T·hd_dim) per layer; softmax layers O(T²·C). Decode per token:
       O(hd_dim) per holographic layer, O(t·C) per softmax layer; cache (2·hd_dim + 1) per
       holographic layer plus 2·t·C per softmax layer.
Forms: HoloConfig (sizes; attn_layers default v1's {n/4, n/2, 3n/4}) · HoloTransformer.forward
       (training) · prefill / step (one token from the caches) · generate (greedy or sampled).
Fast:  none of its own: the layers' fast twins are fast/holographic.py and fast/softmax_attention.py.
Pitfalls: a model file, not a method: it imports zoo.holographic and zoo.softmax_attention (the
          issue allows it), so it is not registered in zoo.METHODS and has no mirrored files.
          Sequences longer than max_seq_len are refused (RoPE and the KV caches are sized for it).
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.holographic import LongAttention
from zoo.softmax_attention import softmax_attention_chunk

INIT_STD = 0.02  # v1: every Linear and the embedding N(0, 0.02²)
FFN_RATIO = 3.5  # v1: ffn_dim = int(3.5·dim)
ROPE_BASE = 10000.0


@dataclasses.dataclass
class HoloConfig:
    vocab_size: int = 50257
    dim: int = 2048
    n_layers: int = 24
    n_heads: int = 32
    hd_dim: int = 8192
    max_seq_len: int = 131072
    ffn_dim: int | None = None  # None: int(3.5·dim)
    attn_layers: tuple | None = None  # None: v1's (n/4, n/2, 3n/4); () for no softmax layer
    rope_base: float = ROPE_BASE

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.hd_dim, int) or self.hd_dim <= 0:
            raise ValueError(f"hd_dim must be a positive int, got {self.hd_dim!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"the head dim dim/n_heads = {self.dim // self.n_heads} must be even for RoPE")
        if self.ffn_dim is None:
            self.ffn_dim = int(FFN_RATIO * self.dim)
        n = self.n_layers
        if self.attn_layers is None:
            self.attn_layers = tuple(sorted({n // 4, n // 2, 3 * n // 4}))
        self.attn_layers = tuple(self.attn_layers)
        if any(not 0 <= i < n for i in self.attn_layers):
            raise ValueError(f"attn_layers {self.attn_layers} must lie in [0, n_layers = {n})")


def rope(x: torch.Tensor, start, base: float) -> torch.Tensor:
    """Rotate-half RoPE on x [B, T, H, D] at positions start + (0..T-1); start an int or [B] tensor."""
    B, T, H, D = x.shape
    inv_freq = base ** (-torch.arange(0, D, 2, device=x.device, dtype=torch.float64) / D)  # [D/2]
    pos = torch.as_tensor(start, device=x.device).reshape(-1, 1) + torch.arange(T, device=x.device)  # [B or 1, T]
    angle = (pos.double()[..., None] * inv_freq)[:, :, None]  # [B or 1, T, 1, D/2], float64: exact at any t
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, T, H, D]


class RotaryAttention(nn.Module):
    """Causal softmax attention (zoo.softmax_attention's op) with RoPE on q and k and a KV cache
    {"k", "v": [B, t, H, D]} (keys stored rotated)."""

    chunk_op = staticmethod(softmax_attention_chunk)

    def __init__(self, dim: int, n_heads: int, max_seq_len: int, rope_base: float = ROPE_BASE):
        super().__init__()
        self.n_heads, self.head_dim, self.max_seq_len, self.rope_base = n_heads, dim // n_heads, max_seq_len, rope_base
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # v1's fused projection
        self.wo = nn.Linear(dim, dim, bias=False)

    def _qkv(self, x, start):
        B, T, C = x.shape
        q, k, v = (z.view(B, T, self.n_heads, self.head_dim) for z in self.qkv(x).chunk(3, dim=-1))  # [B, T, H, D]
        return rope(q, start, self.rope_base), rope(k, start, self.rope_base), v

    def prefill(self, x):
        if x.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence of {x.shape[1]} tokens exceeds max_seq_len = {self.max_seq_len}")
        q, k, v = self._qkv(x, 0)
        o = self.chunk_op(q, k, v, causal=True)  # [B, T, H, D]
        return self.wo(o.reshape(x.shape)), {"k": k, "v": v}

    def forward(self, x):
        return self.prefill(x)[0]

    def step(self, x_t, cache=None):
        t = 0 if cache is None else cache["k"].shape[1]
        if t + 1 > self.max_seq_len:
            raise ValueError(f"decoding token {t + 1} exceeds max_seq_len = {self.max_seq_len}")
        q, k, v = self._qkv(x_t[:, None], t)  # [B, 1, H, D]
        if cache is not None:
            k, v = torch.cat([cache["k"], k], 1), torch.cat([cache["v"], v], 1)  # [B, t+1, H, D]
        o = self.chunk_op(q, k, v, causal=False)  # the one new query sees every cached key [B, 1, H, D]
        return self.wo(o.reshape(x_t.shape)), {"k": k, "v": v}

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.n_heads * self.head_dim


class Block(nn.Module):
    """(1)-(2): pre-norm mixer and SwiGLU, v1's names ln1, ln2, mixer, w1, w2, w3."""

    def __init__(self, cfg: HoloConfig, i: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        if i in cfg.attn_layers:
            self.mixer = RotaryAttention(cfg.dim, cfg.n_heads, cfg.max_seq_len, cfg.rope_base)
        else:
            self.mixer = LongAttention(cfg.dim, 1, hd_dim=cfg.hd_dim)
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)

    def _mlp(self, x):
        h = self.ln2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))  # (2)

    def forward(self, x):
        return self._mlp(x + self.mixer(self.ln1(x)))  # (1), (2)

    def prefill(self, x):
        y, cache = self.mixer.prefill(self.ln1(x))
        return self._mlp(x + y), cache

    def step(self, x_t, cache):
        y, cache = self.mixer.step(self.ln1(x_t), cache)
        return self._mlp(x_t + y), cache


class HoloTransformer(nn.Module):
    """Token ids [B, T] -> logits [B, T, vocab]. Decoding: prefill(idx) -> (logits, caches), then
    step(token [B], caches) -> (logits [B, vocab], caches); generate() loops it."""

    def __init__(self, config: HoloConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        for m in self.modules():  # v1: every Linear and the embedding re-initialised N(0, 0.02²)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=INIT_STD)
        self.head.weight = self.emb.weight  # (3) tied

    def _check(self, idx, total_len):
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"idx must be int64 token ids [B, T], got {getattr(idx, 'dtype', type(idx).__name__)} "
                             f"{tuple(getattr(idx, 'shape', ()))}")
        V = self.config.vocab_size
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= V):
            raise ValueError(f"token ids must lie in [0, vocab_size = {V}), got [{int(idx.min())}, {int(idx.max())}]")
        if self.config.attn_layers and total_len > self.config.max_seq_len:
            raise ValueError(f"sequence of {total_len} tokens exceeds max_seq_len = {self.config.max_seq_len} "
                             "of the softmax layers")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self._check(idx, idx.shape[-1] if isinstance(idx, torch.Tensor) else 0)
        x = self.emb(idx)  # [B, T, C]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln_f(x))  # (3) [B, T, vocab]

    def prefill(self, idx: torch.Tensor):
        """The forward pass that also returns every layer's decode cache."""
        self._check(idx, idx.shape[-1] if isinstance(idx, torch.Tensor) else 0)
        x, caches = self.emb(idx), []
        for layer in self.layers:
            x, cache = layer.prefill(x)
            caches.append(cache)
        return self.head(self.ln_f(x)), caches

    def step(self, token: torch.Tensor, caches: list):
        """One token [B] -> (logits [B, vocab], caches after it)."""
        self._check(token[:, None], 0)
        x, new = self.emb(token), []
        for layer, cache in zip(self.layers, caches):
            x, cache = layer.step(x, cache)
            new.append(cache)
        return self.head(self.ln_f(x)), new

    def cache_sizes(self, caches: list) -> list:
        """Numbers held per layer's cache (a test checks the holographic ones never grow)."""
        return [sum(v.numel() for v in c.values()) for c in caches]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append max_new_tokens tokens to idx [B, T]: greedy when temperature = 0, else sampled
        from softmax(logits / temperature). Each new token costs one step() on the caches."""
        self._check(idx, idx.shape[-1] + max_new_tokens if isinstance(idx, torch.Tensor) else 0)
        logits, caches = self.prefill(idx)
        logits, out = logits[:, -1], [idx]
        for i in range(max_new_tokens):
            if temperature > 0:
                probs = F.softmax(logits.float() / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                token = logits.argmax(-1)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                logits, caches = self.step(token, caches)
        return torch.cat(out, dim=1)


__all__ = ["HoloConfig", "HoloTransformer", "RotaryAttention", "rope"]

# The seed's claims (recall, reversal, needle) are trained and reported by benchmarks/holo_claims.py.
