"""python -m benchmarks.recall: MQAR recall accuracy against state size, for every zoo mixer.

Trains the model of train/configs/mqar.yaml (Based figure 2 on a CPU: BaseConv, then the recall
mixer; d_model 64, one head, vocabulary 8192, L = 64 with 4, 8 and 16 key-value pairs) once per
mixer, each mixer sized to about the same decode state (MATCHED below: ~4k floats per sequence,
the recall layer's `state_size(64)`; softmax attention's KV cache is what it is, 2·T·C, and
grows with T). Writes <out>.json (one record per mixer plus a meta record with the command),
<out>.md (the table) and <out>.png (accuracy against state size).

    python -m benchmarks.recall                                  # every registered mixer
    python -m benchmarks.recall --mixers based,deltanet --merge  # add rows to an earlier run
    python -m benchmarks.recall --mixers hrc_la --merge lr=1e-3  # another learning rate: a new row
    python -m benchmarks.recall --config train/configs/mqar-paper.yaml --out benchmarks/results/recall-gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import torch

import zoo
from train.config import load
from train.trainer import run

# Per-mixer constructor arguments giving a recall layer of about 4k floats of state at
# d_model = 64 with one head (head dim D = 64): a D×D matrix memory and its normaliser.
MATCHED = {
    "linear_attention": {},  # D·D + D = 4160 (elu + 1 features)
    "deltanet": {},  # D·D + short-conv states
    "gated_deltanet": {"expand_v": 1},  # D·D (+ conv states); fla's default expand_v = 2 doubles it
    "deltaproduct": {"expand_v": 1},
    "performer": {"m_features": 64},  # M·D + M with M = 64 random features
    "hrc_la": {"m_features": 32},  # complex M·D + M: 2·(32·64 + 32) + 2
    "based": {"feature_dim": 8},  # (1 + 8 + 8²)·(D + 1) = 4745 Taylor features
    "sliding_window_attention": {"window": 32},  # 2·window·C = 4096
    "softmax_attention": {},  # 2·T·C = 8192 at T = 64: the cache grows with T
    "hyper_attention": {},  # a KV cache like softmax's; at T = 64 < block_size it is exact attention
    # Holographic's state is 2·hd_dim + 1; matching 4k would take hd_dim = 2048, a 64 -> 8192
    # projection too slow for the CPU config, so it runs at its default hd_dim = 4·C (state 513).
    "holographic": {},
}
RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def train_one(name: str, config: str, overrides: list[str], out_dir: str) -> dict:
    cfg = load(config, overrides)
    cfg.mixer = ["base_conv", name] if cfg.n_layers == 2 else [name] * cfg.n_layers
    cfg.mixer_kwargs = {**cfg.mixer_kwargs, name: {**MATCHED.get(name, {}), **cfg.mixer_kwargs.get(name, {})}}
    cfg.out_dir, cfg.progress, cfg.tensorboard = out_dir, False, False
    t0 = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - t0
    seq_len = max(s[0] for s in cfg.mqar_test) if cfg.task == "mqar" else cfg.seq_len
    ev = result["eval"]
    return {"mixer": name, "layer_kwargs": cfg.mixer_kwargs[name],
            "state_size": result["state_sizes"][-1], "state_sizes": result["state_sizes"],
            "state_at_T": seq_len, "accuracy": ev.get("accuracy"),
            "slices": {k: v for k, v in ev.items() if k.startswith("accuracy_")},
            "steps": result["steps_done"], "seconds": round(seconds, 1),
            "best_accuracy": max(e.get("accuracy", 0) for e in result["evals"]),
            "params": result["params"], "config": dataclasses.asdict(cfg)}


def table(records: list[dict]) -> str:
    rows = sorted((r for r in records if r.get("mixer") != "meta"), key=lambda r: -r["accuracy"])
    slices = sorted({k for r in rows for k in r["slices"]}, key=lambda k: int(k.split("kv")[-1]))
    head = ["mixer", "layer kwargs", "state size (floats)", "accuracy"] + \
           [f"kv={k.split('kv')[-1]}" for k in slices] + ["lr", "steps", "time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kw = ", ".join(f"{k}={v}" for k, v in r["layer_kwargs"].items()) or "defaults"
        cells = [r["mixer"], kw, f"{r['state_size']:,}", f"{100 * r['accuracy']:.1f}%"] + \
                [f"{100 * r['slices'][k]:.1f}%" if k in r["slices"] else "" for k in slices] + \
                [f"{r['config']['lr']:g}", str(r["steps"]), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label(r: dict, rows: list[dict]) -> str:
    """The mixer's name, with its learning rate where the mixer has rows at several."""
    several = sum(x["mixer"] == r["mixer"] for x in rows) > 1
    return f"{r['mixer']} (lr {r['config']['lr']:g})" if several else r["mixer"]


def draw(ax, rows: list[dict]):
    """Accuracy against state size, one marker per row, named in a legend beside the axes."""
    markers = "osD^v<>PX*hp"
    for i, r in enumerate(sorted(rows, key=lambda r: -r["accuracy"])):
        ax.scatter(r["state_size"], 100 * r["accuracy"], s=45, marker=markers[i % len(markers)],
                   label=f"{label(r, rows)}: {100 * r['accuracy']:.1f}%")
    ax.set_xscale("log")
    ticks = [t for t in (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
             if min(r["state_size"] for r in rows) / 2 <= t <= 2 * max(r["state_size"] for r in rows)]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("recall layer state size at T = 64 (floats per sequence)")
    ax.set_ylabel("MQAR accuracy (%)")
    ax.set_title("MQAR (L = 64, 4-16 key-value pairs), CPU config")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)


def plot(records: list[dict], path: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r.get("mixer") != "meta"]
    fig, ax = plt.subplots(figsize=(8, 4))
    draw(ax, rows)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", help="comma-separated names (default: every zoo.LAYERS entry)")
    parser.add_argument("--config", default="train/configs/mqar.yaml")
    parser.add_argument("--out", default=str(RESULTS / "recall-cpu"), help="path stem for .json/.md/.png")
    parser.add_argument("--merge", action="store_true", help="keep the other mixers' rows of <out>.json")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.mixers.split(",") if args.mixers else list(zoo.LAYERS)
    unknown = [n for n in names if n not in zoo.LAYERS]
    if unknown:
        parser.error(f"unknown mixer(s) {unknown}; registered: {', '.join(zoo.LAYERS)}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if args.merge and out.with_suffix(".json").exists() else []
    lr = load(args.config, args.overrides).lr  # a row is (mixer, lr): other learning rates stay
    records = [r for r in old if r.get("mixer") != "meta" and (r["mixer"] not in names or r["config"]["lr"] != lr)]
    commands = [r["command"] for r in old if r.get("mixer") == "meta"]
    commands = (commands[0] if commands else []) + ["python -m benchmarks.recall " + shlex.join(sys.argv[1:] if argv is None else argv)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"[recall] {name} ...", flush=True)
            rec = train_one(name, args.config, args.overrides, f"{tmp}/{name}")
            print(f"[recall] {name}: accuracy {100 * rec['accuracy']:.1f}% state {rec['state_size']} "
                  f"steps {rec['steps']} {rec['seconds']:.0f} s", flush=True)
            records.append(rec)
            meta = {"mixer": "meta", "device": platform.processor() or platform.machine(),
                    "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "command": commands}
            out.with_suffix(".json").write_text(json.dumps(records + [meta], indent=1))  # after every mixer
            out.with_suffix(".md").write_text(table(records) + "\n")
    plot(records, out.with_suffix(".png"))
    print(table(records))
    return 0 if all(math.isfinite(r["accuracy"]) for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
