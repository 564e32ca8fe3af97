"""Holographic attention (LongAttention) — tokens bound to position phasors, summed into one complex memory.

Paper: Holo-Transformer: A Hybrid Architecture for O(N) Long-Context Reasoning (cited in the code
       only; no paper text found). The binding is Plate's holographic reduced representation in
       its Fourier form: Holographic Reduced Representations. T. Plate. IEEE Trans. Neural
       Networks 1995. DOI:10.1109/72.377968.
       Code checked: Longcodedao/long-attention@1c705f0 (long_attention.py, the v1 design), through
       our reference notes (methods.md §3).
Idea:  Each token writes one complex vector into a memory of hd_dim phasors: its content
       (a magnitude and a phase, both learned from x) multiplied element-wise by a position phasor
       e^{itω} with fixed random frequencies ω. Multiplying the memory by the conjugate of a
       query phasor "unbinds": the term whose position phasor the query matches comes out phase
       aligned in every dimension, the others with pseudo-random phases, so a linear read-out
       that averages over dimensions sees the match with crosstalk ~ √(t/hd_dim). The memory is a
       plain prefix sum: O(T) training, a constant-size decode state.
Math (per element k of hd_dim = H·D; t = 0, 1, ... the absolute position; M_{-1} the initial state or 0):
  (1) c_t = σ(a_mag,t) · exp(iπ·tanh(a_phase,t))                   content phasor, |c| < 1
  (2) p_t = exp(i·t·ω),  ω_k = 2π·n_k / 2³² with integers n_k        position phasor
      t·ω_k mod 2π = 2π·((t·n_k) mod 2³²) / 2³²: an exact integer product, rounded once
  (3) b_t = c_t ⊙ p_t                                                binding
  (4) M_t = M_{t-1} + b_t          (parallel: M_t = M_{-1} + Σ_{s≤t} b_s, one cumsum)
  (5) r_t = M_t ⊙ conj(q_t) / √(t+1),  q_t = q_re,t + i·q_im,t         retrieval, scaled
  (6) o_t = [Re r_t,1, Im r_t,1, Re r_t,2, Im r_t,2, ...]             real read-out, interleaved
  (7) chunk n of L tokens: M_t = M_{nL-1} + Σ_{nL≤s≤t} b_s             local cumsum + carried memory
  Layer: [a_phase, a_mag, q_re, q_im] = split(W_in x, 4);  y = W_out LayerNorm(o).
Shapes: a_phase, a_mag, q_re, q_im [B, T, H, D]  freqs n [H, D] int64  o [B, T, H, 2D]
        state: (M [B, H, D, 2] real (Re, Im), t [B] int64 tokens seen); heads only tile hd_dim:
        the function is element-wise in (H, D), so H changes nothing but the view.
Cost:  every form O(T·H·D) time | parallel, chunk O(T·H·D) memory | recurrent: a loop of T
       element-wise steps. Decode state: 2·H·D + 1 numbers per sequence, whatever T.
Forms: holographic_parallel (one cumsum, the oracle) · holographic_recurrent (token loop,
       decoding) · holographic_chunk (local cumsum + carried memory, training)
Fast:  fast/holographic.py — chunk form fused (1)-(7) forward and backward, bf16 in, fp32 inside.
Defects of the public v1 design, fixed here:
  - a persistent max_seq_len × hd_dim table of t·ω (4 GiB per layer at its defaults): phases are
    computed on the fly from the integer frequencies (2);
  - t·ω in fp32 loses the phase at large t (t·ω ~ 10⁶ rad, fp32 spacing 0.06 rad): (2) is exact
    integer arithmetic mod 2³² at any t < 2³¹, so the phase error is one rounding, ≤ 4e-7 rad;
  - the scan runs in float32 (float64 for float64 inputs) whatever the input dtype: bf16 sums
    lose late tokens ("swamping");
  - |M_t| grows like √t for unrelated tokens (like t when aligned); (5) divides by √(t+1), so
    E|r_t|² stays O(|q|²) at every t (tested), instead of leaving the scale to the LayerNorm.
Pitfalls: positions must stay below 2³¹ (the integer product must fit int64).
          content is both key and value; q_t is a linear function of x_t alone, so retrieval by
          position needs position information in x (the hybrid's rotary softmax layers give it).
Dtype: computed in the input dtype (float64 is exact); fp16/bf16 inputs are computed in float32
       and o cast back; the state is float32 for half inputs.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TURN = 2**32  # frequencies are integers n_k: ω_k = 2π·n_k / TURN, so t·ω mod 2π is exact (2)
HALF_TURN = 2**31  # an angle of TURN/2 units is π: phases are mapped to [-π, π)
MAX_POSITION = 2**31  # t·n_k < 2⁶³ needs t < 2³¹ (n_k < 2³²)
INIT_STD = 0.02  # v1's N(0, 0.02²) for W_in and W_out


# ------------------------------------------------------------------------------------------------
# Input checks and the shared prologue
# ------------------------------------------------------------------------------------------------
def check_inputs(a_phase, a_mag, q_re, q_im, freqs, initial_state=None, chunk_size=None):
    """Raise a clear TypeError/ValueError for bad inputs; return (B, T, H, D). fast/ reuses it."""
    for name, x in (("a_phase", a_phase), ("a_mag", a_mag), ("q_re", q_re), ("q_im", q_im)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, T, H, D], got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, T, H, D], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a real floating tensor, got {x.dtype}")
        if x.dtype != a_phase.dtype or x.device != a_phase.device:
            raise TypeError(f"{name} is {x.dtype} on {x.device} but a_phase is {a_phase.dtype} on "
                            f"{a_phase.device}: pass one dtype and device")
        if x.shape != a_phase.shape:
            raise ValueError(f"{name} must be [B, T, H, D] = {tuple(a_phase.shape)} like a_phase, got {tuple(x.shape)}")
    B, T, H, D = a_phase.shape
    if T < 1:
        raise ValueError(f"a_phase must be [B, T, H, D] with T >= 1, got {tuple(a_phase.shape)}")
    if not isinstance(freqs, torch.Tensor) or freqs.dtype != torch.int64 or tuple(freqs.shape) != (H, D):
        got = (freqs.dtype, tuple(freqs.shape)) if isinstance(freqs, torch.Tensor) else type(freqs).__name__
        raise ValueError(f"freqs must be int64 [H, D] = [{H}, {D}] (integers n_k in [0, 2³²)), got {got}")
    if freqs.device != a_phase.device:
        raise ValueError(f"freqs is on {freqs.device} but a_phase is on {a_phase.device}")
    if initial_state is not None:
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            raise TypeError("initial_state must be the pair (M [B, H, D, 2], t [B] int64), "
                            f"got {type(initial_state).__name__}")
        M, t = initial_state
        if not isinstance(M, torch.Tensor) or not M.is_floating_point() or tuple(M.shape) != (B, H, D, 2):
            raise ValueError(f"initial_state[0] (M) must be a real floating [B, H, D, 2] = {[B, H, D, 2]}, "
                             f"got {getattr(M, 'shape', type(M).__name__)}")
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (B,):
            raise ValueError(f"initial_state[1] (t) must be int64 [B] = [{B}], got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if M.device != a_phase.device or t.device != a_phase.device:
            raise ValueError(f"initial_state is on {M.device}/{t.device} but a_phase is on {a_phase.device}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1
                                   or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size!r}")
    return B, T, H, D


def position_phase(pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(2) t·ω mod 2π in [-π, π), float64, for positions pos [B, T] (int64) and freqs [H, D]
    (int64): the product is exact in int64, reduced mod 2³², rounded once. [B, T, H, D]"""
    units = (pos[:, :, None, None] * freqs) % TURN  # t·n_k mod 2³² [B, T, H, D]
    units = units - TURN * (units >= HALF_TURN).long()  # the same angle in [-π, π)
    return units.double() * (2 * math.pi / TURN)


def _prologue(a_phase, a_mag, q_re, q_im, freqs, initial_state, chunk_size=None):
    """Checks; compute dtype; (1)-(3) the bound tokens b; the complex query; M_{-1}; positions."""
    B, T, H, D = check_inputs(a_phase, a_mag, q_re, q_im, freqs, initial_state, chunk_size)
    dt = torch.promote_types(a_phase.dtype, torch.float32)  # fp16/bf16 -> float32; float64 stays
    device = a_phase.device
    t0 = torch.zeros(B, dtype=torch.int64, device=device)
    M0 = torch.zeros(B, H, D, dtype=dt, device=device)
    M0 = torch.complex(M0, M0)  # [B, H, D] complex
    if initial_state is not None:
        M0 = torch.view_as_complex(initial_state[0].to(dt).contiguous())  # [B, H, D]
        t0 = initial_state[1]
    pos = t0[:, None] + torch.arange(T, device=device)  # absolute positions [B, T]
    theta = math.pi * torch.tanh(a_phase.to(dt))  # (1) content phase in (-π, π) [B, T, H, D]
    phase = theta + position_phase(pos, freqs).to(dt)  # (3) arg b_t = arg c_t + t·ω [B, T, H, D]
    b = torch.polar(torch.sigmoid(a_mag.to(dt)), phase)  # (1)-(3) b_t = c_t ⊙ p_t [B, T, H, D] complex
    q = torch.complex(q_re.to(dt), q_im.to(dt))  # q_t [B, T, H, D] complex
    scale = (pos + 1).to(dt).rsqrt()[:, :, None, None]  # (5) 1/√(t+1) [B, T, 1, 1]
    return b, q, M0, pos, scale


def _epilogue(M, q, scale, M_last, pos, output_final_state, dtype):
    """(5)-(6) the scaled retrieval, interleaved into reals; the state (M_T, t) when asked."""
    r = M * q.conj() * scale  # (5) r_t = M_t ⊙ conj(q_t) / √(t+1) [B, T, H, D] complex
    o = torch.view_as_real(r).flatten(-2)  # (6) [Re r_1, Im r_1, ...] [B, T, H, 2D]
    final = (torch.view_as_real(M_last), pos[:, -1] + 1) if output_final_state else None
    return o.to(dtype), final


# ------------------------------------------------------------------------------------------------
# Forms
# ------------------------------------------------------------------------------------------------
def holographic_parallel(a_phase, a_mag, q_re, q_im, freqs, *, initial_state=None, output_final_state=False):
    """(4) The definition: one cumsum over the whole sequence. The oracle of the tests.
    Returns (o [B, T, H, 2D], final_state (M [B, H, D, 2], t [B]) or None)."""
    b, q, M0, pos, scale = _prologue(a_phase, a_mag, q_re, q_im, freqs, initial_state)
    M = M0[:, None] + torch.cumsum(b, dim=1)  # (4) M_t = M_{-1} + Σ_{s≤t} b_s [B, T, H, D]
    return _epilogue(M, q, scale, M[:, -1], pos, output_final_state, a_phase.dtype)


def holographic_recurrent(a_phase, a_mag, q_re, q_im, freqs, *, initial_state=None, output_final_state=False):
    """(4) Token by token with the state (M, t): how decoding runs. torch.compile unrolls the
    loop: compile it only at small T. Returns (o [B, T, H, 2D], final_state or None)."""
    b, q, M, pos, scale = _prologue(a_phase, a_mag, q_re, q_im, freqs, initial_state)
    Ms = []
    for t in range(b.shape[1]):
        M = M + b[:, t]  # (4) M_t = M_{t-1} + b_t [B, H, D]
        Ms.append(M)
    return _epilogue(torch.stack(Ms, dim=1), q, scale, M, pos, output_final_state, a_phase.dtype)


def holographic_chunk(a_phase, a_mag, q_re, q_im, freqs, *, initial_state=None, output_final_state=False,
                      chunk_size=64):
    """(7) Chunkwise: a cumsum inside each chunk of L tokens plus the memory carried from the
    chunks before. What training uses and fast/ implements. Returns (o [B, T, H, 2D], final_state or None)."""
    b, q, M0, pos, scale = _prologue(a_phase, a_mag, q_re, q_im, freqs, initial_state, chunk_size)
    B, T, H, D = b.shape
    L = chunk_size
    N = -(-T // L)
    # Pad T to N·L with zero tokens: b = 0 adds nothing to M, and the padded rows are sliced off.
    b_c = F.pad(torch.view_as_real(b), (0, 0, 0, 0, 0, 0, 0, N * L - T))  # [B, N·L, H, D, 2]
    b_c = torch.view_as_complex(b_c).view(B, N, L, H, D)  # [B, N, L, H, D]
    # intra-chunk, (7): the local cumsum Σ_{nL≤s≤t} b_s.
    M_intra = torch.cumsum(b_c, dim=2)  # [B, N, L, H, D]
    # state pass, (7): M_{nL-1} = M_{-1} + the sum of every earlier chunk (an exclusive prefix
    # sum, made by shifting the inclusive one: its rounding never sees chunk n's tokens).
    totals = torch.cumsum(M_intra[:, :, -1], dim=1)  # after chunk n [B, N, H, D]
    M_carry = M0[:, None] + torch.cat([torch.zeros_like(totals[:, :1]), totals[:, :-1]], dim=1)  # [B, N, H, D]
    # inter-chunk, (7): add the carried memory to every token of the chunk.
    M = (M_carry[:, :, None] + M_intra).view(B, N * L, H, D)[:, :T]  # [B, T, H, D]
    return _epilogue(M, q, scale, M0 + totals[:, -1], pos, output_final_state, a_phase.dtype)


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------
def random_frequencies(H: int, D: int, seed: int) -> torch.Tensor:
    """(2) n_k uniform in [0, 2³²): ω_k = 2π·n_k/2³² uniform in [0, 2π), as v1's ω ~ U(0, 2π).
    Drawn from a private CPU generator, so every layer built with the same seed agrees. [H, D] int64"""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TURN, (H, D), generator=g, dtype=torch.int64)


class LongAttention(nn.Module):
    """The v1 LongAttention mixer: W_in (`proj_in`) -> (1)-(6) -> LayerNorm (`out_norm`) ->
    W_out (`proj_out`), v1's names. hd_dim (default 4·hidden_size, v1's 8192 for 2048) is split
    into num_heads groups of D = hd_dim / num_heads only for the [B, T, H, D] view. The integer
    frequencies are a persistent int64 buffer `freqs` [H, D] (H·D numbers, not max_seq_len·hd_dim;
    an integer buffer is never cast by .to(dtype)). The decode cache is {"M": [B, H, D, 2],
    "t": [B] int64}: 2·hd_dim + 1 numbers per sequence whatever the length."""

    parallel_op = staticmethod(holographic_parallel)
    recurrent_op = staticmethod(holographic_recurrent)
    chunk_op = staticmethod(holographic_chunk)

    def __init__(self, hidden_size: int, num_heads: int = 1, hd_dim: int | None = None, form: str = "chunk",
                 seed: int = 42):
        super().__init__()
        hd_dim = 4 * hidden_size if hd_dim is None else hd_dim
        if not isinstance(hd_dim, int) or hd_dim <= 0:
            raise ValueError(f"hd_dim must be a positive int, got {hd_dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0 or hd_dim % num_heads:
            raise ValueError(f"hd_dim ({hd_dim}) must be a multiple of num_heads ({num_heads})")
        if form not in ("chunk", "recurrent", "parallel"):
            raise ValueError(f"form must be 'chunk', 'recurrent' or 'parallel', got {form!r}")
        self.hidden_size, self.num_heads, self.hd_dim, self.form = hidden_size, num_heads, hd_dim, form
        self.head_dim = hd_dim // num_heads
        self.proj_in = nn.Linear(hidden_size, 4 * hd_dim, bias=False)
        self.proj_out = nn.Linear(2 * hd_dim, hidden_size, bias=False)
        self.out_norm = nn.LayerNorm(2 * hd_dim)
        for w in (self.proj_in.weight, self.proj_out.weight):
            nn.init.normal_(w, std=INIT_STD)
        self.register_buffer("freqs", random_frequencies(num_heads, self.head_dim, seed))

    def _mix(self, x, op, initial_state, output_final_state):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, T, C] with C = {self.hidden_size}, got {got}")
        B, T, _ = x.shape
        shape = (B, T, self.num_heads, self.head_dim)
        a_phase, a_mag, q_re, q_im = (z.view(shape) for z in self.proj_in(x).chunk(4, dim=-1))  # [B, T, H, D]
        o, state = op(a_phase, a_mag, q_re, q_im, self.freqs, initial_state=initial_state,
                      output_final_state=output_final_state)  # [B, T, H, 2D]
        return self.proj_out(self.out_norm(o.reshape(B, T, 2 * self.hd_dim))), state  # [B, T, C]

    def _op(self):
        return {"chunk": self.chunk_op, "recurrent": self.recurrent_op, "parallel": self.parallel_op}[self.form]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(x, self._op(), None, False)[0]

    def prefill(self, x: torch.Tensor):
        """Forward that also returns the decode cache {"M", "t"} after the last token."""
        y, (M, t) = self._mix(x, self._op(), None, True)
        return y, {"M": M, "t": t}

    def step(self, x_t: torch.Tensor, cache: dict | None = None):
        """One token x_t [B, C] -> (y_t [B, C], new cache), with (4)-(6) on the cached (M, t)."""
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2:
            raise ValueError(f"x_t must be [B, C], got {getattr(x_t, 'shape', type(x_t).__name__)}")
        state = None if cache is None else (cache["M"], cache["t"])
        y, (M, t) = self._mix(x_t.unsqueeze(1), self.recurrent_op, state, True)
        return y.squeeze(1), {"M": M, "t": t}

    def state_size(self, seq_len: int) -> int:
        """Numbers per sequence in the cache: M (2·hd_dim reals) and the position, whatever seq_len."""
        return 2 * self.hd_dim + 1


__all__ = ["position_phase", "random_frequencies", "holographic_parallel", "holographic_recurrent",
           "holographic_chunk", "LongAttention"]
