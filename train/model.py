"""A small decoder language model whose sequence mixer is any zoo layer.

    tokens [B, T] -> embedding (+ optional learned positions) -> n_layers × Block -> RMSNorm
                  -> tied head (the embedding matrix again) -> logits [B, T, vocab]

    Block:  x = x + mixer(RMSNorm(x))        mixer: any layer of zoo.LAYERS, or BaseConv
            x = x + SwiGLU(RMSNorm(x))       skipped when mlp_ratio = 0 (Zoology's MQAR models)

Each layer's mixer is named: one name for every layer, or a list with one name per layer for a
hybrid (Based: `[base_conv, based, base_conv, sliding_window_attention, ...]`; Holo: softmax
every k-th layer). Names come from the zoo registry (`zoo.LAYERS`), plus `base_conv`, the gated
short convolution of Based and Zoology that lives here. `impl="fast"` takes the layer of the same
class name from `fast/<name>.py` (imported only then), whose state dict equals the zoo layer's;
`impl="sdpa"` runs softmax attention through PyTorch's fused SDPA (the baseline to time against).

Every zoo layer is built from (hidden_size, num_heads, **kwargs) by keyword (see build_mixer:
constructors differ in order and in the name of the width). Only the backbone's own weights are initialised here (N(0, 0.02), as
in GPT-2); a mixer keeps the initialisation its file chose.
"""

from __future__ import annotations

import importlib
import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

INIT_STD = 0.02  # GPT-2's initialisation of embeddings and linear weights
EPS_NORM = 1e-6  # keeps 1/rms finite for an all-zero row
CONV_KERNEL = 3  # BaseConv's short filter in Based's and Zoology's configs


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + EPS_NORM)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """y = W2 (SiLU(W1 x) ⊙ W3 x), bias-free (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class BaseConv(nn.Module):
    """Based's gated short convolution (methods.md §5.3): project C -> 4C and split into u1, u2
    (2C each); y = out_proj(SiLU(causal depthwise conv_k(u1)) ⊙ u2). It moves each token's
    neighbours into its features: in MQAR the value then carries its key, which a recall layer
    above can match against a later query. State: the last k-1 inputs of the conv, (k-1)·2C."""

    def __init__(self, hidden_size: int, num_heads: int = 1, kernel_size: int = CONV_KERNEL):
        super().__init__()  # num_heads is unused: accepted so every mixer builds the same way
        self.kernel_size = kernel_size
        self.in_proj = nn.Linear(hidden_size, 4 * hidden_size)
        self.conv = nn.Conv1d(2 * hidden_size, 2 * hidden_size, kernel_size, groups=2 * hidden_size)
        self.out_proj = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, x):  # x: [B, T, C]
        u1, u2 = self.in_proj(x).chunk(2, dim=-1)  # [B, T, 2C] each
        u1 = F.pad(u1.transpose(1, 2), (self.kernel_size - 1, 0))  # left pad: causal  [B, 2C, T+k-1]
        u1 = self.conv(u1).transpose(1, 2)  # [B, T, 2C]
        return self.out_proj(F.silu(u1) * u2)

    def state_size(self, seq_len: int) -> int:
        return (self.kernel_size - 1) * self.conv.in_channels


# What a language model needs that a layer's own default may not give: layers whose default is
# bidirectional (nn.MultiheadAttention's habit) are built causal here.
CAUSAL_DEFAULTS = {"hrc_la": {"causal": True}, "performer": {"causal": True}}


def known_mixers() -> list[str]:
    import zoo

    return sorted({"base_conv", *zoo.LAYERS})


def sdpa_op(q, k, v, *, causal: bool = True, scale=None, **_):
    """PyTorch's fused attention (flash / memory-efficient kernels on a GPU) in the zoo's
    [B, T, H, D] layout: the reference the zoo's softmax layers are timed against."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal, scale=scale)  # [B, H, T, D]
    return o.transpose(1, 2)  # [B, T, H, D]


def sdpa_layer(cls):
    """The zoo softmax layer with its ops swapped for SDPA (same weights, same state dict)."""
    return type(f"SDPA{cls.__name__}", (cls,), {"chunk_op": staticmethod(sdpa_op),
                                                "parallel_op": staticmethod(sdpa_op)})


IMPLS = ("zoo", "fast", "sdpa")  # sdpa: softmax_attention through PyTorch SDPA; other mixers zoo


def mixer_class(name: str, impl: str = "zoo"):
    """The layer class for `name`: zoo.LAYERS[name], its fast twin for impl="fast", or (for
    softmax_attention only) the zoo layer running PyTorch SDPA for impl="sdpa"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if name == "base_conv":
        return BaseConv
    import zoo

    if name not in zoo.LAYERS:
        raise ValueError(f"unknown mixer {name!r}; known mixers: {', '.join(known_mixers())}")
    cls = zoo.LAYERS[name]
    if impl == "sdpa":
        return sdpa_layer(cls) if name == "softmax_attention" else cls
    if impl == "fast":
        fast_module = importlib.import_module(f"fast.{name}")  # Triton, imported only when asked
        cls = getattr(fast_module, cls.__name__)
    return cls


def build_mixer(name: str, hidden_size: int, num_heads: int, impl: str = "zoo", **kwargs) -> nn.Module:
    """Build a layer by name. Arguments go by keyword, because constructors differ in order and
    names: the width is the first parameter (`hidden_size`, or `d_model` for HRC-LA); `num_heads`
    where the layer has heads; a `head_dim` parameter defaults to hidden_size / num_heads
    (fla-style layers default to 256, too wide for a small model); `kwargs` override all."""
    cls = mixer_class(name, impl)
    params = inspect.signature(cls).parameters
    args = {next(iter(params)): hidden_size}
    if "num_heads" in params:
        args["num_heads"] = num_heads
    if "head_dim" in params and params["head_dim"].default is not None:
        args["head_dim"] = hidden_size // num_heads
    args.update(CAUSAL_DEFAULTS.get(name, {}))
    args.update(kwargs)
    try:
        return cls(**args)
    except TypeError as e:  # an unknown keyword in mixer_kwargs
        raise ValueError(f"mixer {name!r} ({cls.__name__}) rejected its arguments {args}: {e}") from e


class Block(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module, mlp_ratio: float):
        super().__init__()
        self.norm1, self.mixer = RMSNorm(dim), mixer
        self.mlp = SwiGLU(dim, int(mlp_ratio * dim)) if mlp_ratio > 0 else None
        self.norm2 = RMSNorm(dim) if self.mlp is not None else None

    def forward(self, x):  # x: [B, T, C]
        x = x + self.mixer(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class LM(nn.Module):
    """Decoder LM. `mixer`: one name or a list of n_layers names. `mixer_kwargs`: {name: {...}}
    extra constructor arguments per mixer name (e.g. {"based": {"feature_dim": 16}})."""

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, num_heads: int,
                 mixer="softmax_attention", *, mixer_kwargs: dict | None = None, impl: str = "zoo",
                 mlp_ratio: float = 4.0, max_position_embeddings: int = 0):
        super().__init__()
        names = [mixer] * n_layers if isinstance(mixer, str) else list(mixer)
        if len(names) != n_layers:
            raise ValueError(f"mixer lists {len(names)} names for n_layers = {n_layers}: give one "
                             f"name, or exactly one per layer")
        mixer_kwargs = mixer_kwargs or {}
        self.mixer_names = names
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_position_embeddings, d_model) if max_position_embeddings else None
        self.blocks = nn.ModuleList(
            Block(d_model, build_mixer(n, d_model, num_heads, impl, **mixer_kwargs.get(n, {})), mlp_ratio)
            for n in names)
        self.norm = RMSNorm(d_model)
        own = [self.embed, self.pos] + [b.mlp for b in self.blocks]
        own += [b.mixer for b in self.blocks if isinstance(b.mixer, BaseConv)]
        for module in filter(None, own):
            module.apply(_init)

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [B, T] int64 -> final normalised hidden states [B, T, C]."""
        x = self.embed(idx)  # [B, T, C]
        if self.pos is not None:
            T = idx.shape[1]
            if T > self.pos.num_embeddings:
                raise ValueError(f"sequence of {T} tokens exceeds max_position_embeddings = {self.pos.num_embeddings}")
            x = x + self.pos.weight[:T]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None):
        """idx: [B, T] -> logits [B, T, vocab]; the head is the embedding matrix (tied).
        With labels [B, T]: (Σ cross-entropy, #correct argmax, #scored) over the positions whose
        label is not -100, with logits computed only there (with a large vocabulary and a few
        queries per sequence, as in MQAR, that is most of the work saved). The trainer calls
        this form, so DistributedDataParallel sees the whole loss computation."""
        h = self.hidden(idx)  # [B, T, C]
        if labels is None:
            return h @ self.embed.weight.T  # [B, T, vocab]
        scored = labels != -100  # [B, T]
        logits = (h[scored] @ self.embed.weight.T).float()  # [S, vocab]
        target = labels[scored]  # [S]
        total = F.cross_entropy(logits, target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        return total, correct, scored.sum()

    def state_sizes(self, seq_len: int) -> list[int | None]:
        """Each layer's decode state in floats per sequence (None for a layer without state_size)."""
        return [b.mixer.state_size(seq_len) if hasattr(b.mixer, "state_size") else None
                for b in self.blocks]


def _init(m: nn.Module):
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=INIT_STD)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
