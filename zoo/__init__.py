"""The zoo: one self-contained PyTorch file per attention method.

`METHODS` maps a method's name to its module (`zoo/<name>.py`); `LAYERS` maps it to the module's
`nn.Module` layer. One line per method. Each module stands alone: copy it into your project.
"""

# Each method adds one import here, one line in METHODS and one in LAYERS.
from zoo import hrc_la, performer
from zoo import softmax_attention
from zoo import linear_attention
from zoo import deltanet, gated_deltanet, deltaproduct
from zoo import based, sliding_window_attention
from zoo import hyper_attention
from zoo import holographic

METHODS = {
    "softmax_attention": softmax_attention,
    "linear_attention": linear_attention,
    "hrc_la": hrc_la,
    "performer": performer,
    "deltanet": deltanet,
    "gated_deltanet": gated_deltanet,
    "deltaproduct": deltaproduct,
    "based": based,
    "sliding_window_attention": sliding_window_attention,
    "hyper_attention": hyper_attention,
    "holographic": holographic,
}

LAYERS = {
    "softmax_attention": softmax_attention.SoftmaxAttention,
    "linear_attention": linear_attention.LinearAttention,
    "hrc_la": hrc_la.HRCMultiheadAttention,
    "performer": performer.PerformerAttention,
    "deltanet": deltanet.DeltaNet,
    "gated_deltanet": gated_deltanet.GatedDeltaNet,
    "deltaproduct": deltaproduct.GatedDeltaProduct,
    "based": based.BasedLinearAttention,
    "sliding_window_attention": sliding_window_attention.SlidingWindowAttention,
    "hyper_attention": hyper_attention.HyperAttentionLayer,
    "holographic": holographic.LongAttention,
}

__all__ = ["METHODS", "LAYERS"]
