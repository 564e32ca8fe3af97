import os, sys, time, tempfile
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
import torch, triton
from concurrent.futures import ThreadPoolExecutor
from triton.compiler import ASTSource
from aot import H100, jit_function
import fast.hyper_attention as fh
I32 = {"perm_q", "perm_k", "smp_k", "smp_blk", "codes"}
F32 = {"lse", "delta", "dlse", "proj", "dk_part", "dv_part"}
HALF = {"q", "k", "v", "o", "do", "dq", "dk", "dv", "x"}
TYPES = dict(dict.fromkeys(I32, "*i32"), **dict.fromkeys(F32, "*fp32"), **dict.fromkeys(HALF, "*bf16"), scale="fp32", log_w="fp32")
def job(kernel, consts, nw, ns):
    fn = jit_function(kernel)
    sig = {n: "constexpr" if n in consts else TYPES.get(n, "i32") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*")}
    t = time.time()
    triton.compile(ASTSource(fn, sig, consts, attrs), target=H100, options=dict(num_warps=nw, num_stages=ns))
    return time.time() - t
D = 64
t = fh._tiles(D, D, torch.bfloat16)
dims = dict(K=D, V=D, BK=t.BK, BV=t.BV, UPCAST=False)
hyper = dict(GATHER=True, CAUSAL=False, BLOCK_MASK=False)
leaf = dict(GATHER=False, CAUSAL=True, BLOCK_MASK=False)
jobs = []
for name, flags, acc in (("hyper", hyper, False), ("level", hyper, True), ("leaf", leaf, True)):
    samples = name != "leaf"
    ft = (t.BMG, t.BNG, t.gwarps, t.gstages) if flags["GATHER"] else (t.BM, t.BN, t.warps, t.stages)
    jobs.append((fh._hyper_attention_fwd_kernel, dict(dims, BM=ft[0], BN=ft[1], SAMPLES=samples, INIT=acc and samples, **flags), *ft[2:]))
    jobs.append((fh._hyper_attention_bwd_dq_kernel, dict(dims, BM=t.BM, BN=t.BN, SAMPLES=samples, ACC=acc, **flags), t.warps, t.stages))
mode = sys.argv[1]
t0 = time.time()
if mode == "seq":
    print([round(job(*j), 2) for j in jobs])
else:
    with ThreadPoolExecutor(int(sys.argv[2])) as ex:
        print([round(x, 2) for x in ex.map(lambda j: job(*j), jobs)])
print(mode, "wall", round(time.time() - t0, 2))
