"""Run 65 (session 17): the first call of a delta-family forward without gradients, its two kernels
compiled side by side from the op's own dry run (new, since session 17) or at their launches one
after the other (old: the dry run skipped for plans without a backward), with run20-first_diag.py's
per-compile breakdown. argv: new|old, then benchmarks.first_call's arguments. Run with an empty
TRITON_CACHE_DIR. FD_SET="NAME=0|1,..." (run 66): sets fast.deltanet's module switches first."""
import os, runpy, sys
sys.path.insert(0, os.getcwd())
import fast.deltanet as fd
for kv in filter(None, os.environ.get("FD_SET", "").split(",")):
    setattr(fd, kv.split("=")[0], bool(int(kv.split("=")[1])))
if sys.argv.pop(1) == "old":
    _precompile = fd.precompile
    fd.precompile = lambda plans: _precompile(plans) if any(key[0] == "bwd" for key in plans) else []
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "run20-first_diag.py"), run_name="__main__")
