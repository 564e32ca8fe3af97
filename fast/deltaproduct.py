"""Triton mirror of zoo/deltaproduct.py; math, shapes and the layer's meaning there.

Kernel plan: DeltaProduct is the gated delta rule over T·n_h micro-steps (zoo (3)): micro-step
(t, j) carries k_{t,j}, v_{t,j}, β_{t,j} (the inputs already come interleaved token-major,
[B, T·n_h, H, ·]); the log gate g_t sits at j = 0 (so the state decays once per token, before its
first Householder step) and 0 elsewhere; the query q_t sits at j = n_h − 1 and 0 elsewhere, and the
outputs are read there. The chunk op builds the interleaved q and g (two small torch ops; autograd
takes their gradients back to q and g) and runs fast/deltanet.py's chunk kernels unchanged (see
that card for grids and what is stored/recomputed). Cost: the same as the gated delta rule over
T·n_h tokens, plus writing the zero-padded q (n_h·T·K elements) and reading every micro-step's
output: at n_h = 2 about +15 % bytes over the delta rule on 2T tokens.
Decode: fast/deltanet.py's recurrent kernel with NH = n_h micro-steps per token inside the
token loop (q, g and o per token, no interleaving); its gradient is the chunk backward over the
micro-steps.

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
    check_decay: raise if g > 0, in eager mode (reads g on the host: a sync that stalls the GPU's queue).
    Returns (o [B, T, H, V] in q's dtype, final state [B, H, K, V] fp32 or None)."""
    zoo_deltaproduct._check_inputs(q, k, v, g, beta, num_householder, initial_state, chunk_size)
    if check_decay:  # reads g on the host: a sync
        zoo_deltaproduct._check_log_decay(g)
    k, v, h0 = fast_deltanet.check_fast(q, k, v, initial_state, "fast.deltaproduct.gated_delta_product_chunk")
    n = num_householder
    q_m = fast_deltanet._interleave(q, n, last=True) if n > 1 else q  # (3) q at the last micro-step  [B, T·n_h, H, K]
    g_m = fast_deltanet._interleave(g, n, last=False) if n > 1 and g is not None else g  # (3) g at the first  [B, T·n_h, H]
    o, ht = fast_deltanet.chunk_fwd(q_m, k, v, g_m, beta, h0, fast_deltanet._scale(q, scale), output_final_state)
    return o[:, n - 1::n], (ht if output_final_state else None)  # each token's last micro-step  [B, T, H, V]


def gated_delta_product_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  g: torch.Tensor | None, beta: torch.Tensor, *, num_householder: int,
                                  scale: float | None = None, initial_state: torch.Tensor | None = None,
                                  output_final_state: bool = False, check_decay: bool = True):
    """zoo.deltaproduct.gated_delta_product_recurrent in Triton: a token loop, n_h micro-steps each,
    with the state in registers, for decoding. Its gradient runs the chunk backward kernels."""
    zoo_deltaproduct._check_inputs(q, k, v, g, beta, num_householder, initial_state)
    if check_decay:  # reads g on the host: a sync
        zoo_deltaproduct._check_log_decay(g)
    k, v, h0 = fast_deltanet.check_fast(q, k, v, initial_state,
                                        "fast.deltaproduct.gated_delta_product_recurrent")
    o, ht = torch.ops.zoo.gated_delta_rule_recurrent_fwd(q, k, v, g, beta, h0, fast_deltanet._scale(q, scale),
                                                         output_final_state, num_householder)
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
