"""The training loop: `run(config) -> results`. `python -m train` is its command line.

- AdamW (weight decay on matrices only), linear warm-up then cosine to `min_lr`, gradient accumulation, global-norm clipping,
  bf16/fp16 autocast where the device has it (fp16 with a loss scaler).
- Exact continuation: the data of step s is a function of (data_seed, s) only (train/data.py),
  there is no dropout, and the checkpoint holds model, optimizer, schedule, scaler, step and
  every RNG state. A resumed run therefore computes the same losses as an uninterrupted one.
- DistributedDataParallel under torchrun (gloo on CPU, nccl on GPU). Each optimizer step's
  global batch is cut into (grad_accum × world) micro-batches, and every micro-batch's summed
  loss is divided by the number of scored tokens in the whole global batch, so the gradient is
  the same whatever the split: one process equals N processes up to float summation order.
- Logs: metrics.jsonl (always, rank 0), TensorBoard (tensorboard: true), W&B (wandb: true), a
  tqdm bar. Evaluation: accuracy at scored positions for the synthetic tasks (per num_kv_pairs
  slice for MQAR), loss, perplexity and bits per byte for text.
- Bad input fails before anything is written: unknown mixer, config key or type, a missing
  corpus, a fresh run into a folder holding a checkpoint, a resume from another config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import random
import time

import numpy as np
import torch
import torch.distributed as dist

from . import data as D
from .config import Config, differences, validate
from .model import LM, mixer_class

CKPT = "ckpt.pt"


# ------------------------------------------------------------------------------------------------
# Data: what one optimizer step reads, and the evaluation
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _mqar(vocab_size, segments, seed, power_a):
    """MQAR sets are cached per process: a sweep over mixers generates them once."""
    return D.mqar_mixture(vocab_size, [list(seg) for seg in segments], seed, power_a=power_a)


def _frozen(segments):
    return tuple(tuple(seg) for seg in segments)


class TaskData:
    """A finite synthetic set (MQAR, copy, reversal, needle) with a fixed test set."""

    def __init__(self, cfg: Config):
        s = cfg.data_seed
        if cfg.task == "mqar":
            # Train and test from disjoint seeds, as Zoology builds its train and test segments.
            self.x, self.y, _ = _mqar(cfg.vocab_size, _frozen(cfg.mqar_train), s, cfg.power_a)
            self.tx, self.ty, self.slice = _mqar(cfg.vocab_size, _frozen(cfg.mqar_test), s + 10_000, cfg.power_a)
        else:
            make = D.TASKS[cfg.task]
            self.x, self.y = make(cfg.vocab_size, cfg.train_examples, cfg.seq_len, s)
            self.tx, self.ty = make(cfg.vocab_size, cfg.test_examples, cfg.seq_len, s + 10_000)
            self.slice = None
        self.vocab_size, self.seed, self.seq_len = cfg.vocab_size, s + 1, self.x.shape[1]

    def step_batch(self, step: int, batch_size: int):
        idx = D.task_batch_indices(len(self.x), step, batch_size, self.seed)
        return self.x[idx], self.y[idx]

    @torch.no_grad()
    def evaluate(self, model, batch_size, device, autocast) -> dict:
        correct = torch.zeros(len(self.tx), dtype=torch.long)
        scored = (self.ty != D.IGNORE).sum(1)  # [N]
        total = 0.0
        for i in range(0, len(self.tx), batch_size):
            x, y = self.tx[i:i + batch_size].to(device), self.ty[i:i + batch_size].to(device)
            mask = y != D.IGNORE  # [b, L]
            with autocast():
                h = model.hidden(x)[mask]  # only scored positions reach the head  [S, C]
                logits = (h @ model.embed.weight.T).float()  # [S, vocab]
            total += torch.nn.functional.cross_entropy(logits, y[mask], reduction="sum").item()
            row = mask.nonzero()[:, 0]  # the example each scored position belongs to  [S]
            hit = (logits.argmax(-1) == y[mask]).long()
            correct[i:i + batch_size] = torch.zeros(len(x), dtype=torch.long, device=device).index_add_(0, row, hit).cpu()
        out = {"accuracy": correct.sum().item() / scored.sum().item(),
               "loss": total / scored.sum().item()}
        if self.slice is not None:  # MQAR: accuracy per num_kv_pairs, as Zoology reports it
            for kv in self.slice.unique().tolist():
                m = self.slice == kv
                out[f"accuracy_kv{kv}"] = correct[m].sum().item() / scored[m].sum().item()
        return out


class TextData:
    """A byte-level token stream: random training windows, fixed validation windows."""

    def __init__(self, cfg: Config):
        tokens = D.encode(D.corpus(cfg.corpus))
        self.train, val = D.split(tokens, cfg.val_fraction)
        self.vx, self.vy = D.text_eval_windows(val, cfg.seq_len, cfg.eval_windows)
        self.vocab_size, self.seed, self.seq_len = D.BYTE_VOCAB, cfg.data_seed + 1, cfg.seq_len
        if len(self.train) < cfg.seq_len + 2:
            raise ValueError(f"corpus {cfg.corpus!r} is too short for seq_len = {cfg.seq_len}")

    def step_batch(self, step: int, batch_size: int):
        return D.text_batch(self.train, step, batch_size, self.seq_len, self.seed)

    @torch.no_grad()
    def evaluate(self, model, batch_size, device, autocast) -> dict:
        total, n = 0.0, 0
        for i in range(0, len(self.vx), batch_size):
            x, y = self.vx[i:i + batch_size].to(device), self.vy[i:i + batch_size].to(device)
            with autocast():
                logits = model(x).float()
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            n += y.numel()
        loss = total / n
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2)}


def build_data(cfg: Config):
    return TextData(cfg) if cfg.task == "text" else TaskData(cfg)


def build_model(cfg: Config, vocab_size: int) -> LM:
    torch.manual_seed(cfg.seed)
    return LM(vocab_size, cfg.d_model, cfg.n_layers, cfg.num_heads, cfg.mixer,
              mixer_kwargs=cfg.mixer_kwargs, impl=cfg.impl, mlp_ratio=cfg.mlp_ratio,
              max_position_embeddings=cfg.max_position_embeddings)


# ------------------------------------------------------------------------------------------------
# Optimisation pieces
# ------------------------------------------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """Weight decay on matrices (linear and embedding weights) only; norms' gains, biases and
    1-d parameters are not decayed, as in GPT-2/nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up to lr over warmup_steps, then a cosine down to min_lr at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def resolve_precision(cfg: Config, device: torch.device) -> torch.dtype | None:
    """None = full fp32; otherwise the autocast dtype."""
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    if cfg.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg.precision == "bf16" else torch.float16


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------
# Distributed set-up
# ------------------------------------------------------------------------------------------------
def setup_distributed(cfg: Config):
    """(rank, world, device) from torchrun's environment; one process when it is absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but no CUDA device is available")
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return rank, world, device


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------
def run(cfg: Config | dict) -> dict:
    """Train as `cfg` says. Returns {"losses": {step: loss}, "evals": [...], "eval": last eval,
    "steps_done", "tokens_per_s", "seconds", "state_sizes", "params"}."""
    cfg = validate(cfg) if isinstance(cfg, dict) else cfg
    rank, world, device = setup_distributed(cfg)
    micro = cfg.batch_size // cfg.grad_accum
    if micro % world:
        raise ValueError(f"batch_size / grad_accum = {micro} must be a multiple of the number of "
                         f"processes ({world})")
    micro //= world

    # Everything that can fail on bad input fails here, before a file is written.
    for name in ([cfg.mixer] if isinstance(cfg.mixer, str) else cfg.mixer):
        mixer_class(name, cfg.impl)  # an unknown name fails before minutes of data generation
    out = pathlib.Path(cfg.out_dir)
    ckpt_path = out / CKPT
    ckpt = None
    if cfg.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        diff = differences(ckpt["config"], dataclasses.asdict(cfg))
        if diff:
            raise ValueError(f"resume: {ckpt_path} was trained with another config; differing keys: "
                             + ", ".join(f"{k} ({ckpt['config'].get(k)!r} -> {getattr(cfg, k, None)!r})"
                                         for k in diff))
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists: pass resume=true to continue it, or choose "
                              f"another out_dir (nothing was overwritten)")

    data = build_data(cfg)  # a missing corpus raises here
    model = build_model(cfg, data.vocab_size).to(device)  # bad mixer_kwargs raise here

    amp_dtype = resolve_precision(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16 and device.type == "cuda")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    optimizer = make_optimizer(model, cfg)
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start = ckpt["step"]
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(_yaml(cfg))
    log = _Logger(cfg, out, main, start)
    evals, losses = list(ckpt["evals"]) if ckpt else [], {}
    step, t_start, timed_tokens, timed_s = start, time.perf_counter(), 0.0, 0.0
    end = cfg.steps if not cfg.stop_after_steps else min(cfg.steps, start + cfg.stop_after_steps)
    bar = _bar(cfg, main, start, cfg.steps)

    def save():
        if main:
            state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "step": step, "config": dataclasses.asdict(cfg),
                     "rng": rng_state(), "evals": evals}
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)  # atomic: an interrupted save leaves the old checkpoint
        if world > 1:
            dist.barrier()

    last_eval = [None]  # the step of the last evaluation, known on every rank

    def evaluate():
        last_eval[0] = step
        result = {}
        if main:
            raw_model.eval()
            result = {"step": step, **data.evaluate(raw_model, cfg.eval_batch_size, device, autocast)}
            raw_model.train()
            evals.append(result)
            log.eval(result)
        stop = torch.tensor(int(cfg.stop_accuracy is not None
                                and result.get("accuracy", -1) >= cfg.stop_accuracy), device=device)
        if world > 1:
            dist.broadcast(stop, 0)
        return bool(stop.item())

    model.train()
    stopped = False
    while step < end and not stopped:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        x_all, y_all = data.step_batch(step, cfg.batch_size)  # the global batch of this step
        n_scored = (y_all != D.IGNORE).sum().clamp_min(1).item()  # over all processes
        step_loss = torch.zeros((), device=device, dtype=torch.float64)
        for m in range(cfg.grad_accum):
            piece = m * world + rank
            x = x_all[piece * micro:(piece + 1) * micro].to(device)
            y = y_all[piece * micro:(piece + 1) * micro].to(device)
            sync = m == cfg.grad_accum - 1 or world == 1
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast():
                total, _, _ = model(x, y)
                # DDP averages gradients over processes: scale by world to get the global sum.
                loss = total * (world / n_scored)
            scaler.scale(loss).backward()
            step_loss += total.detach().double()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            dist.all_reduce(step_loss)
        loss_value = step_loss.item() / n_scored
        step += 1
        losses[step] = loss_value
        dt = time.perf_counter() - t0
        if step - start > min(5, (end - start) // 4):  # skip warm-up steps (allocation, compile)
            timed_tokens += cfg.batch_size * data.seq_len
            timed_s += dt
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step}; lower lr or use fp32")
        log.step(step, loss_value, lr_at(step - 1, cfg), cfg.batch_size * data.seq_len / dt)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            stopped = evaluate()
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save()
    if last_eval[0] != step:
        evaluate()
    save()
    if bar is not None:
        bar.close()
    log.close()
    seq_len = data.seq_len
    return {"losses": losses, "evals": evals, "eval": evals[-1] if evals else {}, "steps_done": step,
            "tokens_per_s": timed_tokens / timed_s if timed_s else float("nan"),
            "seconds": time.perf_counter() - t_start, "state_sizes": raw_model.state_sizes(seq_len),
            "params": sum(p.numel() for p in raw_model.parameters())}


# ------------------------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------------------------
def _yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def _bar(cfg, main, start, total):
    if not (cfg.progress and main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=f"{cfg.task}:{_mixer_label(cfg)}", dynamic_ncols=True)


def _mixer_label(cfg):
    return cfg.mixer if isinstance(cfg.mixer, str) else "+".join(dict.fromkeys(cfg.mixer))


class _Logger:
    """metrics.jsonl always; TensorBoard and W&B when asked (rank 0 only)."""

    def __init__(self, cfg: Config, out: pathlib.Path, main: bool, start: int):
        self.main, self.every, self.tb, self.wandb = main, cfg.log_every, None, None
        if not main:
            return
        self.file = open(out / "metrics.jsonl", "a")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed (pip install tensorboard, or tensorboard=false): "
                      "logging to metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(out / "tb"), purge_step=start or None)
        if cfg.wandb:
            import wandb  # optional; off by default

            self.wandb = wandb.init(project="attention-zoo", config=dataclasses.asdict(cfg),
                                    dir=str(out), resume="allow")

    def _write(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def step(self, step, loss, lr, tokens_per_s):
        if not self.main or step % self.every:
            return
        self._write({"step": step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
        if self.tb:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            self.tb.add_scalar("train/tokens_per_s", tokens_per_s, step)
        if self.wandb:
            self.wandb.log({"train/loss": loss, "train/lr": lr}, step=step)

    def eval(self, result: dict):
        self._write({"eval": result})
        step = result["step"]
        for k, v in result.items():
            if k != "step":
                if self.tb:
                    self.tb.add_scalar(f"eval/{k}", v, step)
                if self.wandb:
                    self.wandb.log({f"eval/{k}": v}, step=step)

    def close(self):
        if self.main:
            self.file.close()
            if self.tb:
                self.tb.close()
            if self.wandb:
                self.wandb.finish()
