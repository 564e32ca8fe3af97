"""fla 0.6.0's DeltaNet layer against zoo/deltanet.py's on a CPU (why tests/test_deltanet.py compares
with fla's fused_recurrent mode). Run: TRITON_INTERPRET=1 PYTHONPATH=<fla-core + flash-linear-attention
+ einops> python benchmarks/results/cpu-2026-12-06/fla_deltanet_layer.py (DT=float16 for fp16).
Under the interpreter Triton cannot autotune: each autotuned kernel takes its first configuration.
transformers (imported by fla.layers for logging and cache types, unused here) is stubbed.
fla's chunk kernels refuse fp32 and fail under the interpreter, so only fused_recurrent runs."""
import os, sys, types, logging
import torch
import triton.runtime.autotuner as at
_orig = at.Autotuner.prune_configs
def first_only(self, kwargs, *a, **k):
    return _orig(self, kwargs, *a, **k)[:1]
at.Autotuner.prune_configs = first_only
# a stand-in for transformers (not installed here): fla.layers imports its logging and cache types
class _Any(types.ModuleType):
    def __getattr__(self, n):
        if n.startswith("__"): raise AttributeError(n)
        if n == "get_logger": return logging.getLogger
        m = _Any(self.__name__ + "." + n); sys.modules[m.__name__] = m; return m
    def __call__(self, *a, **k): return self
    def __mro_entries__(self, bases): return (object,)
for name in ("transformers", "transformers.utils", "transformers.utils.logging", "transformers.cache_utils",
             "transformers.processing_utils", "transformers.modeling_utils", "transformers.activations",
             "transformers.generation", "transformers.modeling_outputs", "transformers.configuration_utils"):
    sys.modules[name] = _Any(name)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "tests"))
from strategies import randn
import zoo.deltanet as zd
import fla.layers as fl
LAYER_OPTIONS = [dict(), dict(use_gate=True, allow_neg_eigval=True, conv_bias=True, expand_v=2.0),  # [1]: the GPU test's
                 dict(use_gate=True), dict(allow_neg_eigval=True), dict(conv_bias=True), dict(expand_v=2.0)]
dt = getattr(torch, os.environ.get("DT", "float32"))
for opts in LAYER_OPTIONS:
    torch.manual_seed(0)
    ours = zd.DeltaNet(64, num_heads=2, **opts)
    x = randn(1, 2, 150, 64, scale=0.5)
    for mode in ("chunk", "fused_recurrent"):
        theirs = fl.DeltaNet(hidden_size=64, num_heads=2, mode=mode, **opts)
        theirs.load_state_dict(ours.state_dict())
        with torch.no_grad():
            y_ref = ours.double()(x.double()); ours.float()
            try:
                y = theirs.eval().to(dt)(x.to(dt))[0]
                rel = ((y.double() - y_ref).norm() / y_ref.norm()).item()
                print(opts, mode, f"rel {rel:.3g}", flush=True)
            except Exception as e:
                print(opts, mode, "failed", type(e).__name__, str(e)[:200], flush=True)
