"""Triton mirror of zoo/gated_deltanet.py; math, shapes and the layer's meaning there.

Kernel plan: the chunkwise gated delta rule of fast/deltanet.py with the gate compiled in
(USE_G = True); that file's card has the launch grids, what is stored and what is recomputed.
What the gate adds to each step: step 1 computes Γ (the chunk-local cumsum of g, tl.cumsum)
and stores it (fp32, [B, T, H]); A, W and the output take the factors e^{Γ_i − Γ_j} (masked
before exp: above the diagonal the exponent is positive), e^Γ and e^{Γ_L − Γ}; the state is
multiplied by e^{Γ_L} once per chunk. Backward: the gate gradient is assembled per chunk as dΓ
(each term's share: the output's e^Γ, the intra-chunk decay matrix, the state's e^{Γ_L} and the
write weights e^{Γ_L − Γ}, the WY factor e^Γ and the decays inside A), and dg is its reverse
cumsum inside the chunk. Extra traffic over DeltaNet: g read and Γ written/read ([B, T, H] fp32:
< 1 % of the bytes); extra FLOPs: a few exps per element of [BT, BT] blocks (no extra dots).
Decode: fast/deltanet.py's recurrent kernel with the decay S ← e^{g_t} S per token.

Legend: as in fast/deltanet.py (b_ blocks, p_ pointers, offs_/mask_, BT BK BV, h0/ht).
"""

import torch

import fast.deltanet as fast_deltanet
import zoo.gated_deltanet as zoo_gated_deltanet


def gated_delta_rule_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, *, scale: float | None = None,
                           initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                           chunk_size: int = 64, check_decay: bool = True):
    """zoo.gated_deltanet.gated_delta_rule_chunk in Triton, forward and backward (q, k, v, g, beta,
    initial state). The kernels always use chunks of 64; chunk_size is checked. check_decay: raise
    if g > 0, in eager mode (the verdict is read once the kernels are queued: no stall of the GPU's
    queue, fast_deltanet.start_decay_check). Returns
    (o [B, T, H, V] in q's dtype, final state [B, H, K, V] fp32 or None)."""
    zoo_gated_deltanet._check_inputs(q, k, v, g, beta, initial_state, chunk_size)
    pending = fast_deltanet.start_decay_check(g, zoo_gated_deltanet._check_log_decay) if check_decay else None
    k, v, h0 = fast_deltanet.check_fast(q, k, v, initial_state, "fast.gated_deltanet.gated_delta_rule_chunk")
    o, ht = fast_deltanet.chunk_fwd(q, k, v, g, beta, h0, fast_deltanet._scale(q, scale), output_final_state)
    fast_deltanet.finish_decay_check(pending)  # raises on g > 0, the kernels queued meanwhile
    return o, (ht if output_final_state else None)


def gated_delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                               beta: torch.Tensor, *, scale: float | None = None,
                               initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                               check_decay: bool = True):
    """zoo.gated_deltanet.gated_delta_rule_recurrent in Triton: a token loop with the state in
    registers, for decoding. Its gradient runs the chunk backward kernels (same function)."""
    zoo_gated_deltanet._check_inputs(q, k, v, g, beta, initial_state)
    pending = fast_deltanet.start_decay_check(g, zoo_gated_deltanet._check_log_decay) if check_decay else None
    k, v, h0 = fast_deltanet.check_fast(q, k, v, initial_state,
                                        "fast.gated_deltanet.gated_delta_rule_recurrent")
    o, ht = torch.ops.zoo.gated_delta_rule_recurrent_fwd(q, k, v, g, beta, h0, fast_deltanet._scale(q, scale),
                                                         output_final_state, 1)
    fast_deltanet.finish_decay_check(pending)  # raises on g > 0, the kernels queued meanwhile
    return o, (ht if output_final_state else None)


# ================================================================================================
# The layer: the zoo layer with the ops swapped (same parameters, same state dict)
# ================================================================================================
class GatedDeltaNet(zoo_gated_deltanet.GatedDeltaNet):
    """zoo.gated_deltanet.GatedDeltaNet running the Triton chunk and recurrent ops (form="parallel" keeps
    the zoo's parallel form: the oracle has no kernel)."""

    chunk_op = staticmethod(gated_delta_rule_chunk)
    recurrent_op = staticmethod(gated_delta_rule_recurrent)


__all__ = ["gated_delta_rule_chunk", "gated_delta_rule_recurrent", "GatedDeltaNet"]
