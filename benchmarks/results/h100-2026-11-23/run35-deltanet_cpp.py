"""The step-1 variant of run 35 (two or more chunks a program, pipelined), built from fast/deltanet.py
rather than kept as a copy of it: `source(text)` rewrites the module's text, `load()` imports the
result under other custom-op names. The rewrite: the solve's loop unrolled (tl.static_range: Triton
pipelines innermost loops only); _chunk_wy_fwd_kernel's body in a loop over CPP chunks a program;
the launch's grid and options from the module constants CPP_RUN and WY_OVERRIDE (set them before a
call). Applied to f8cd4b3's fast/deltanet.py this gives, byte for byte, the file run 35 ran."""
import importlib.util
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = os.path.join(HERE, "..", "..", "..", "fast", "deltanet.py")


def _replace(s: str, old: str, new: str) -> str:
    assert old in s, f"fast/deltanet.py no longer holds: {old[:60]!r}"
    return s.replace(old, new)


def source(s: str) -> str:
    s = s.replace('"zoo::', '"zoocpp::')  # its own custom ops beside fast.deltanet's
    s = _replace(s, "    for m in range(0, BS - 1):", "    for m in tl.static_range(0, BS - 1):")
    a = s.index('@triton.jit(do_not_specialize=["T", "STORE_X"])\ndef _chunk_wy_fwd_kernel')
    b = s.index('@triton.jit(do_not_specialize=["T"])', a)
    k = s[a:b]
    k = _replace(k, "PREC: tl.constexpr, NH: tl.constexpr, MERGE_PREC: tl.constexpr):",
                 "PREC: tl.constexpr, NH: tl.constexpr, MERGE_PREC: tl.constexpr, CPP: tl.constexpr = 1):")
    k = _replace(k, "    i_t, i_bh = tl.program_id(0), tl.program_id(1)\n", "    i_p, i_bh = tl.program_id(0), tl.program_id(1)\n")
    k = _replace(k, "    t0 = i_t * BT\n", "")
    mark = "    # -------------------------------------------------------------- load k, β, and Γ\n"
    head, body = k.split(mark)
    lines = (mark + body).rstrip("\n").split("\n")
    loop = ["    n_c = tl.minimum(CPP, T // BT - i_p * CPP)",
            "    for i_c in range(0, n_c):",
            "        t0 = (i_p * CPP + i_c) * BT"]
    s = s[:a] + head + "\n".join(loop + [("    " + l if l.strip() else l) for l in lines]) + "\n\n\n" + s[b:]
    s = _replace(s, "    launch(_chunk_wy_fwd_kernel, (NT, B * H),",
                 "    launch(_chunk_wy_fwd_kernel, (triton.cdiv(NT, CPP_RUN), B * H),")
    s = _replace(s, """        MERGE_PREC=MERGE_PRECISION, **t["wy"])""",
                 """        MERGE_PREC=MERGE_PRECISION, CPP=CPP_RUN, **{**t["wy"], **WY_OVERRIDE})""")
    return _replace(s, 'MERGE_PRECISION = "ieee"', 'MERGE_PRECISION = "ieee"\nCPP_RUN = 1\nWY_OVERRIDE = {}')


def load(path: str = FAST):
    """The variant as a module (written to a file: Triton reads a kernel's source from it)."""
    with open(path) as f:
        text = source(f.read())
    out = os.path.join(tempfile.mkdtemp(), "deltanet_cpp.py")
    with open(out, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("deltanet_cpp", out)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["deltanet_cpp"] = mod
    spec.loader.exec_module(mod)
    return mod
