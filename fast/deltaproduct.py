"""Triton mirror of zoo/deltaproduct.py; math, shapes and the layer's meaning there.

Kernel plan: DeltaProduct is the gated delta rule over T·n_h micro-steps (zoo (3)): micro-step
(t, j) carries k_{t,j}, v_{t,j}, β_{t,j} (the inputs already come interleaved token-major,
[B, T·n_h, H, ·]); the log gate g_t sits at j = 0 (so the state decays once per token, before its
first Householder step) and 0 elsewhere; the query q_t sits at j = n_h − 1 and 0 elsewhere, and the
outputs are read there. The chunk kernels of fast/deltanet.py run over the micro-steps with
NH = n_h (see "Micro-steps" in that card): they read q, g and dO a row per token, without building
the interleaved, zero-padded copies (a micro-step reads its token's row; only the last micro-step
stores an output or dq, only the first stores dg). n_h that does not divide 16 falls back to the
interleaved copies on the host. Cost: the gated delta rule's over T·n_h micro-steps, with q, o,
dq and dO at T rows (the interleaved copies cost the H100 about 0.2 ms of the 1.19 ms forward at
the issue's size, run 27).
Decode: fast/deltanet.py's recurrent kernel with NH = n_h micro-steps per token inside the
token loop (q, g and o per token, no interleaving); its gradient is the chunk backward over the
micro-steps.

Found and fixed (runs 58-61, H100, Triton 3.6): the gradients of runs 54-57 differed between two
fwd + bwd on the same inputs, and dk was 4-6e-2 of its largest entry off the fp32 op's (the gated
rule's 5e-3). The cause was step 4 of fast/deltanet.py built at 3 stages, 8 warps: a launch replayed
on the same inputs wrote a different, wrong dw (off by up to 69% of its largest entry) in thousands
of rows, with n_h = 2 every time, with the gated rule once; at K = 64 the same at 2 stages (run
62). At K = 128 at 2 stages (run 61) repeats are bit-identical, dk's error is 5.8e-3, and kept and
recomputed intermediates give the same gradients to the bit; with the tile rule's fix for other
head dims (one V tile up to V = 64 in 16-bit, or one stage) the repeated fwd + bwd of
tests/test_deltaproduct_fast.py gave bit-identical gradients at K = 64 and 128 (run 63). The GPU
tests against the zoo in float64 had passed at their tolerances throughout: too small to meet it.

Legend: as in fast/deltanet.py (b_ blocks, p_ pointers, offs_/mask_, BT BK BV, h0/ht).
"""

import torch

import fast.deltanet as fast_deltanet
import zoo.deltaproduct as zoo_deltaproduct


def gated_delta_product_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              g: torch.Tensor | None, beta: torch.Tensor, *, num_householder: int,
                              scale: float | None = None, initial_state: torch.Tensor | None = None,
                              output_final_state: bool = False, chunk_size: int = 64, check_decay: bool = True):
    """zoo.deltaproduct.gated_delta_product_chunk in Triton, forward and backward (q, k, v, g, beta,
    initial state). The kernels always use chunks of 64 micro-steps; chunk_size is checked.
    check_decay: raise if g > 0, in eager mode (the verdict is read once the kernels are queued: no
    stall of the GPU's queue, fast_deltanet.start_decay_check).
    Returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V] fp32 or None)."""
    zoo_deltaproduct._check_inputs(q, k, v, g, beta, num_householder, initial_state, chunk_size)
    pending = fast_deltanet.start_decay_check(g, zoo_deltaproduct._check_log_decay) if check_decay else None
    k, v, h0 = fast_deltanet.check_fast(q, k, v, initial_state, "fast.deltaproduct.gated_delta_product_chunk")
    # (3): the kernels read q at each token's last micro-step and g at its first (NH = n_h)
    o, ht = fast_deltanet.chunk_fwd(q, k, v, g, beta, h0, fast_deltanet._scale(q, scale), output_final_state,
                                    num_householder)
    fast_deltanet.finish_decay_check(pending)  # raises on g > 0, the kernels queued meanwhile
    return o, (ht if output_final_state else None)


def gated_delta_product_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  g: torch.Tensor | None, beta: torch.Tensor, *, num_householder: int,
                                  scale: float | None = None, initial_state: torch.Tensor | None = None,
                                  output_final_state: bool = False, check_decay: bool = True):
    """zoo.deltaproduct.gated_delta_product_recurrent in Triton: a token loop, n_h micro-steps each,
    with the state in registers, for decoding. Its gradient runs the chunk backward kernels."""
    zoo_deltaproduct._check_inputs(q, k, v, g, beta, num_householder, initial_state)
    pending = fast_deltanet.start_decay_check(g, zoo_deltaproduct._check_log_decay) if check_decay else None
    k, v, h0 = fast_deltanet.check_fast(q, k, v, initial_state,
                                        "fast.deltaproduct.gated_delta_product_recurrent")
    o, ht = torch.ops.zoo.gated_delta_rule_recurrent_fwd(q, k, v, g, beta, h0, fast_deltanet._scale(q, scale),
                                                         output_final_state, num_householder)
    fast_deltanet.finish_decay_check(pending)  # raises on g > 0, the kernels queued meanwhile
    return o, (ht if output_final_state else None)


# ================================================================================================
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ================================================================================================
class GatedDeltaProduct(zoo_deltaproduct.GatedDeltaProduct):
    """zoo.deltaproduct.GatedDeltaProduct running the Triton chunk and recurrent ops (form="parallel" keeps
    the zoo's parallel form: the oracle has no kernel)."""

    chunk_op = staticmethod(gated_delta_product_chunk)
    recurrent_op = staticmethod(gated_delta_product_recurrent)


__all__ = ["gated_delta_product_chunk", "gated_delta_product_recurrent", "GatedDeltaProduct"]
