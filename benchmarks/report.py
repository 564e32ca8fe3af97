"""Output of the harness: the markdown table, the JSON records, the plots."""

from __future__ import annotations

import json
import os

from benchmarks.impls import IMPLS

# Every record holds at least these keys (DESIGN.md, "Benchmarks"); null where not measured.
REQUIRED = ("method", "impl", "direction", "causal", "B", "T", "H", "D", "dtype",
            "ms", "peak_mb", "first_call_s", "err")
META_REQUIRED = ("method", "device", "torch", "triton", "fla", "command", "date")


def sort_key(r: dict, methods: list[str]):
    m = methods.index(r["method"]) if r["method"] in methods else len(methods)
    impl = IMPLS.index(r["impl"]) if r["impl"] in IMPLS else len(IMPLS)
    return (m, r["method"], not r["causal"], r["direction"], r["T"], r["B"], impl)


def _num(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown_table(records: list[dict], methods: list[str]) -> str:
    rows = sorted((r for r in records if r["method"] != "meta"), key=lambda r: sort_key(r, methods))
    if not rows:
        return "(no measurements)"
    varying = [k for k in ("H", "D", "dtype") if len({r[k] for r in rows}) > 1]
    fixed = ", ".join(f"{k}={rows[0][k]}" for k in ("H", "D", "dtype") if k not in varying)
    head = ["method", "impl", "dir", "causal", "B", "T", *varying,
            "ms", "TFLOP/s", "× floor", "peak MB", "first call s", "err", "note"]
    out = [f"All rows: {fixed}." if fixed else "", "| " + " | ".join(head) + " |",
           "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        method = r["method"] + (f" ({r['variant']})" if r.get("variant") else "")
        cells = [method, r["impl"], r["direction"], "yes" if r["causal"] else "no", str(r["B"]), str(r["T"]),
                 *(str(r[k]) for k in varying),
                 _num(r["ms"], ".3f"), _num(r.get("tflops"), ".3g"), _num(r.get("x_floor"), ".2f"),
                 _num(r["peak_mb"], ".0f"), _num(r["first_call_s"], ".2f"), _num(r["err"], ".1e"),
                 (r.get("note") or "").replace("|", "/").replace("\n", " ")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(line for line in out if line is not None)


def write_json(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(records, f, indent=1)
    os.replace(tmp, path)  # a reader (or a kill) never sees half a file


def plot(records: list[dict], methods: list[str], path: str) -> list[str]:
    """Time against T per method (rows) and direction (columns), one line per implementation;
    non-causal points dotted; the roofline floor dashed grey. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["method"] != "meta" and r["ms"] is not None]
    present = [m for m in methods if any(r["method"] == m for r in rows)]
    directions = [d for d in ("fwd", "fwdbwd") if any(r["direction"] == d for r in rows)]
    if not present or not directions:
        return []
    written = []

    def draw(ax, method, direction):
        mine = [r for r in rows if r["method"] == method and r["direction"] == direction]
        for causal, style in ((True, "-o"), (False, ":s")):
            for i, impl in enumerate(IMPLS):
                pts = sorted((r["T"], r["ms"]) for r in mine if r["impl"] == impl and r["causal"] == causal)
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{i}", label=impl + ("" if causal else " (non-causal)"),
                            ms=4)
            floor = sorted({(r["T"], r["floor_ms"]) for r in mine
                            if r["causal"] == causal and r.get("floor_ms") is not None})
            if floor and causal:
                ax.plot(*zip(*floor), "--", color="grey", label="roofline floor")
        shape = next(iter(mine), None)
        ax.set_title(f"{method} {direction}" + (f"  (B·T={shape['B'] * shape['T']}, H={shape['H']}, "
                                                 f"D={shape['D']}, {shape['dtype']})" if shape else ""),
                     fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel("ms (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)

    def figure(ms, name):
        fig, axes = plt.subplots(len(ms), len(directions), figsize=(6 * len(directions), 4 * len(ms)),
                                 squeeze=False)
        for i, m in enumerate(ms):
            for j, d in enumerate(directions):
                draw(axes[i][j], m, d)
        fig.tight_layout()
        fig.savefig(name, dpi=110)
        plt.close(fig)
        written.append(name)

    figure(present, path + ".png")
    if len(present) > 1:
        for m in present:
            figure([m], f"{path}-{m}.png")
    return written
