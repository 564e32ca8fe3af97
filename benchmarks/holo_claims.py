"""python -m benchmarks.holo_claims: the seed's recall claims for the HoloTransformer, tested as claims.

Issue 7 asks for associative recall, reversal and needle-in-a-haystack trained with a small
HoloTransformer (train/holo_transformer.py) on a CPU and on the H100, and the accuracy reached,
whatever it is. For each task of train/data.py (MQAR as Zoology generates it, reversal, needle)
this trains three models of the same width and depth from the same seed on the same batches:

- `holo`:    HoloTransformer, every layer holographic (LongAttention), attn_layers = ();
- `hybrid`:  HoloTransformer with one rotary softmax layer (the last), as the seed's design intends;
- `softmax`: for reference, train/model.py's LM with mixer softmax_attention (learned positions,
             SwiGLU of the same width as the HoloTransformer's).

The data, the batch of each step, the optimizer (AdamW, decay on matrices), the schedule (warm-up
then cosine) and the test accuracy at labelled positions are train/trainer.py's own (TaskData,
make_optimizer, lr_at, TaskData.evaluate): the HoloTransformer is wrapped to look like train/model.py's
LM to them (`hidden`, `embed`, and LM's forward with labels). On a GPU every forward runs under bf16
autocast, as the trainer does; on a CPU in fp32. Seeds are fixed: a CPU run repeats bit for bit.

    python -m benchmarks.holo_claims                     # CPU, 2 threads, about 6 minutes
    python -m benchmarks.holo_claims --device cuda       # GPU: longer sequences, a wider model, twice the batch
    python -m benchmarks.holo_claims --quick --out /tmp  # a few steps of tiny models (the test)

Writes <out>/holo_claims-<cpu|h100>.json (a meta record, then one record per task and model) and
.md (the table); --quick adds "-quick" to the name.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import pathlib
import platform
import shlex
import sys
import time

import torch
import torch.nn as nn

from train.config import validate
from train.holo_transformer import HoloConfig, HoloTransformer
from train.model import LM
from train.trainer import TaskData, lr_at, make_optimizer, resolve_precision

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
MODELS = ("holo", "hybrid", "softmax")


# ------------------------------------------------------------------------------------------------
# Sizes: one dict per setting; only sizes differ between CPU and GPU, never the code path.
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setting:
    dim: int  # model width (d_model)
    n_layers: int
    n_heads: int  # softmax layers' heads (the holographic layers have one memory each)
    hd_dim: int  # holographic memory size per layer: state 2·hd_dim + 1 floats
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    # task -> train/config.py keys that define its data
    tasks: dict


def _mqar(T, kv, n_train, n_test, vocab):
    return {"task": "mqar", "vocab_size": vocab, "mqar_train": [[T, kv, n_train]], "mqar_test": [[T, kv, n_test]]}


def _seq(task, T, vocab, n_train, n_test):
    return {"task": task, "vocab_size": vocab, "seq_len": T, "train_examples": n_train, "test_examples": n_test}


SETTINGS = {
    # 2 CPU threads: nine runs in 2 to 6 minutes (depending on what else the two cores run).
    "cpu": Setting(dim=64, n_layers=2, n_heads=4, hd_dim=256, steps=400, batch_size=32, lr=3e-3, warmup_steps=40,
                   tasks={"mqar": _mqar(64, 8, 8192, 512, 128),
                          "reversal": _seq("reversal", 33, 16, 8192, 512),
                          "needle": _seq("needle", 32, 16, 8192, 512)}),
    # One H100: longer sequences, a wider model, twice the batch; the same 400 steps (under a minute in all).
    "cuda": Setting(dim=128, n_layers=2, n_heads=4, hd_dim=512, steps=400, batch_size=64, lr=2e-3, warmup_steps=40,
                    tasks={"mqar": _mqar(128, 8, 20000, 1000, 256),
                           "reversal": _seq("reversal", 65, 16, 20000, 1000),
                           "needle": _seq("needle", 128, 32, 20000, 1000)}),
    # The test: tiny models, a few steps, seconds in all.
    "quick": Setting(dim=32, n_layers=2, n_heads=2, hd_dim=64, steps=4, batch_size=8, lr=3e-3, warmup_steps=2,
                     tasks={"mqar": _mqar(32, 4, 64, 16, 64),
                            "reversal": _seq("reversal", 17, 16, 64, 16),
                            "needle": _seq("needle", 32, 32, 64, 16)}),
}


# ------------------------------------------------------------------------------------------------
# The HoloTransformer in the trainer's LM interface
# ------------------------------------------------------------------------------------------------
class HoloLM(nn.Module):
    """HoloTransformer as train/trainer.py sees an LM: `hidden(idx)` [B, T, C] (the final
    normalised states), `embed` (the tied head's matrix) and LM's `forward(idx, labels)`
    (summed loss, #correct, #scored over labelled positions). Same weights, same logits:
    hidden(idx) @ embed.weight.T equals HoloTransformer(idx)."""

    forward = LM.forward  # LM's loss at labelled positions, through self.hidden and self.embed

    def __init__(self, config: HoloConfig):
        super().__init__()
        self.net = HoloTransformer(config)

    @property
    def embed(self) -> nn.Embedding:
        return self.net.emb

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        self.net._check(idx, idx.shape[-1])
        x = self.net.emb(idx)  # [B, T, C]
        for layer in self.net.layers:
            x = layer(x)
        return self.net.ln_f(x)  # [B, T, C]

    def state_sizes(self, seq_len: int) -> list[int]:
        return [layer.mixer.state_size(seq_len) for layer in self.net.layers]


def build(model: str, s: Setting, vocab: int, seq_len: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if model == "softmax":
        ffn_ratio = HoloConfig(vocab_size=vocab, dim=s.dim, n_heads=s.n_heads, n_layers=1).ffn_dim / s.dim
        return LM(vocab, s.dim, s.n_layers, s.n_heads, "softmax_attention", mlp_ratio=ffn_ratio,
                  max_position_embeddings=seq_len)
    attn = () if model == "holo" else (s.n_layers - 1,)  # hybrid: the last layer is softmax
    return HoloLM(HoloConfig(vocab_size=vocab, dim=s.dim, n_layers=s.n_layers, n_heads=s.n_heads,
                             hd_dim=s.hd_dim, max_seq_len=seq_len, attn_layers=attn))


def layer_kinds(model: nn.Module) -> list[str]:
    if isinstance(model, HoloLM):
        return ["softmax" if i in model.net.config.attn_layers else "holographic" for i in range(len(model.net.layers))]
    return list(model.mixer_names)


# ------------------------------------------------------------------------------------------------
# One training run
# ------------------------------------------------------------------------------------------------
def train_one(task: str, model_name: str, s: Setting, data: TaskData, cfg, device: torch.device) -> dict:
    model = build(model_name, s, data.vocab_size, data.seq_len, cfg.seed).to(device)
    amp = resolve_precision(cfg, device)  # bf16 on a GPU that has it, None (fp32) on a CPU

    def autocast():
        return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)

    opt = make_optimizer(model, cfg)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    losses = []
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = (t.to(device, non_blocking=True) for t in data.step_batch(step, cfg.batch_size))
        with autocast():
            total, _, n = model(x, y)
        loss = total / n.clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.detach())
    sync()
    train_s = time.perf_counter() - t0
    model.eval()
    ev = data.evaluate(model, cfg.eval_batch_size, device, autocast)
    sync()
    losses = torch.stack(losses).float().cpu()
    tail = losses[-max(1, len(losses) // 10):]  # the last tenth of the steps
    return {"task": task, "model": model_name, "layers": layer_kinds(model),
            "accuracy": ev["accuracy"], "test_loss": ev["loss"],
            "train_loss_first": losses[0].item(), "train_loss_last_tenth": tail.mean().item(),
            "steps": cfg.steps, "batch_size": cfg.batch_size, "seq_len": data.seq_len,
            "vocab_size": data.vocab_size, "seconds": round(time.perf_counter() - t0, 2),
            "train_seconds": round(train_s, 2), "params": sum(p.numel() for p in model.parameters()),
            "state_sizes": model.state_sizes(data.seq_len), "state_at_T": data.seq_len,
            "dim": s.dim, "n_layers": s.n_layers, "n_heads": s.n_heads,
            "hd_dim": None if model_name == "softmax" else s.hd_dim,
            "precision": "fp32" if amp is None else str(amp).removeprefix("torch."),
            "data": {k: v for k, v in dataclasses.asdict(cfg).items()
                     if k in ("task", "vocab_size", "mqar_train", "mqar_test", "seq_len", "train_examples",
                              "test_examples", "power_a", "data_seed")}}


def task_config(s: Setting, task: str, device: str):
    return validate({**s.tasks[task], "steps": s.steps, "batch_size": s.batch_size, "lr": s.lr,
                     "warmup_steps": s.warmup_steps, "weight_decay": 0.1, "grad_clip": 1.0,
                     "eval_batch_size": 256, "seed": 0, "data_seed": 0, "device": device})


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------
def state_text(r: dict) -> str:
    return " / ".join(f"{n:,}" for n in r["state_sizes"])


def table(records: list[dict]) -> str:
    head = ["task", "model", "layers", "accuracy", "test loss", "steps", "seconds", "params",
            "state per layer (floats, at T)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if r.get("task") == "meta":
            continue
        cells = [f"{r['task']} (T={r['seq_len']}, V={r['vocab_size']})", r["model"], "+".join(r["layers"]),
                 f"{100 * r['accuracy']:.1f}%", f"{r['test_loss']:.3f}", str(r["steps"]), f"{r['seconds']:.1f}",
                 f"{r['params']:,}", f"{state_text(r)} (T={r['state_at_T']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(meta: dict, records: list[dict]) -> str:
    chance = {"mqar": "1/(V/2) for a value", "reversal": "1/(V-4)", "needle": "1/(V-4)"}
    return "\n".join([
        f"# HoloTransformer recall claims ({meta['name']})", "",
        f"- device: {meta['device']}; precision: {meta['precision']}; threads: {meta['cpu_threads']}",
        f"- torch {meta['torch']}, python {meta['python']}; date {meta['date']}; total {meta['total_seconds']:.0f} s",
        f"- command: `{meta['command']}`",
        f"- models: dim {meta['setting']['dim']}, {meta['setting']['n_layers']} layers, "
        f"{meta['setting']['n_heads']} softmax heads, hd_dim {meta['setting']['hd_dim']}; AdamW lr "
        f"{meta['setting']['lr']:g} (warm-up {meta['setting']['warmup_steps']}, cosine), weight decay 0.1, "
        f"batch {meta['setting']['batch_size']}, seed 0",
        "- holo: every layer holographic; hybrid: the last layer rotary softmax; softmax: train/model.py's "
        "LM with softmax_attention in every layer and learned positions (reference)",
        "- accuracy: argmax at every labelled test position (train/trainer.py's TaskData.evaluate), "
        f"held-out examples; chance: {', '.join(f'{k} {v}' for k, v in chance.items())}",
        "- state: per layer, floats per sequence a decoder keeps (holographic 2·hd_dim + 1 whatever T; "
        "softmax KV cache 2·T·dim); seconds: training and evaluation", "",
        table(records), ""])


def device_name(device: torch.device, quick: bool) -> str:
    if device.type == "cpu":
        name = "cpu"
    else:
        gpu = torch.cuda.get_device_name(device)
        name = "h100" if "H100" in gpu else "".join(c for c in gpu.lower().split()[-1] if c.isalnum()) or "cuda"
    return name + ("-quick" if quick else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.holo_claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default=str(RESULTS), help="folder for holo_claims-<device>.json/.md")
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps (the test)")
    parser.add_argument("--tasks", default="mqar,reversal,needle")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    tasks, models = args.tasks.split(","), args.models.split(",")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    s = SETTINGS["quick" if args.quick else args.device]
    bad = [t for t in tasks if t not in s.tasks] + [m for m in models if m not in MODELS]
    if bad:
        parser.error(f"unknown task(s)/model(s) {bad}; tasks: {', '.join(s.tasks)}; models: {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = "holo_claims-" + device_name(device, args.quick)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"task": "meta", "name": name,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": ("python -m benchmarks.holo_claims " + shlex.join(sys.argv[1:] if argv is None else argv)).rstrip(),
            "setting": {k: v for k, v in dataclasses.asdict(s).items() if k != "tasks"}, "total_seconds": 0.0}
    records, t0 = [], time.perf_counter()
    for task in tasks:
        cfg = task_config(s, task, args.device)
        data = TaskData(cfg)
        for m in models:
            rec = train_one(task, m, s, data, cfg, device)
            records.append(rec)
            print(f"[holo_claims] {task:8s} {m:7s} accuracy {100 * rec['accuracy']:5.1f}%  loss "
                  f"{rec['train_loss_first']:.2f} -> {rec['train_loss_last_tenth']:.2f}  {rec['seconds']:.1f} s  "
                  f"state {state_text(rec)}", flush=True)
            meta["total_seconds"] = round(time.perf_counter() - t0, 1)
            (out / f"{name}.json").write_text(json.dumps([meta] + records, indent=1) + "\n")  # after every run
            (out / f"{name}.md").write_text(markdown(meta, records))
    print(table(records))
    print(f"[holo_claims] {meta['total_seconds']:.0f} s; wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
