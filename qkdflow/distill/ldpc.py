"""Rate-adaptive one-way LDPC reconciliation (syndrome coding of the BSC with puncturing and shortening).

Protocol (D. Elkouss, J. Martinez-Mateo, D. Lancho, V. Martin, "Rate compatible protocol for information
reconciliation: an application to QKD", IEEE ITW 2010, arXiv:1006.2660, Sec. II "The protocol", Eqs. (4)-(7)):
a pool of mother codes of length n (rates R0 from ``ldpc_codes.TABLE_RATES``) and a fixed d = round(delta*n)
modulated symbols. From the QBER estimate q Alice targets R = 1 - f*h(q) (f = ``efficiency``), picks a mother
code and s = ceil((R0 - R(1 - d/n)) n) shortened, p = d - s punctured symbols (Eq. 7). She builds the word
x+ of length n: her n - d key bits, p uniformly random bits (punctured) and s bits of a public pseudo-random
sequence (shortened), and sends the syndrome H x+ (m bits). Bob puts his key bits with channel LLR
+-ln((1-q)/q), LLR 0 at punctured and +-inf at shortened positions, and decodes with belief propagation.

Leak (exact accounting, per frame)
----------------------------------
Charged: ``leak_bits = m - p`` (syndrome length m minus punctured symbols p).
Why exact: the syndrome is S = H_K x + H_P r + H_S z with x the key, r the p secret uniform punctured bits
and z public. Then I(X; S) = H(S) - H(S|X) <= m - rank(H_P), and ``ldpc_codes`` only punctures symbols that
own a private check, so rank(H_P) = p (if rows of H are dependent the true leak is smaller still; we charge
the bound). The shortened values z are public pseudo-random bits independent of the key, so they add
nothing: Elkouss et al.'s efficiency f = (1 - R)/h(q), R = (k - s)/(n - p - s) (Eq. 4) is exactly
(m - p)/((n - d) h(q)). A "+ s" term (as in "m - p + s") arises only where shortened positions carry values
that were secret when the syndrome was sent: in blind reconciliation (Martinez-Mateo, Elkouss, Martin,
QIC 12 (2012)) t punctured values are revealed in later rounds, turning them into shortened ones, and the
leak is m - p_0 + t = m - (punctured values still secret). That is the quantity charged here; this one-way
protocol reveals none (t = 0).
The punctured values must come from a secret RNG: pass ``seed=None`` to ``LdpcAlice`` outside simulations.

Blind mode (J. Martinez-Mateo, D. Elkouss, V. Martin, "Blind reconciliation", Quantum Inf. Comput. 12, 791
(2012), Sec. 3): the rate is not fixed from the QBER estimate but adapted to the frame's actual errors.
Alice's first message is a syndrome at a high rate: p0 of the d modulated symbols punctured (all d in the
paper; here as many as bring the efficiency down to ``blind_start``, since attempts far below f = 1 cannot
succeed and only cost decoder time), s0 = d - p0 shortened. Each time Bob's decoder fails, Alice reveals the
values of the next ``reveal_step`` punctured symbols (the last ones in the puncturing order, so the symbols
still punctured are always a prefix of the untainted order), which become shortened, and Bob decodes again,
until no punctured symbol is left. Leak, exactly: ``m - p0 + t`` with t the values revealed so far, i.e. m
minus the punctured values that are still secret (the bound above with rank(H_P') = p0 - t). The mother code
is the highest-rate code of the pool whose fully shortened efficiency m/((n-d) h(q)) reaches ``blind_max`` for
a frame ``margin_sigmas`` standard deviations of its error count above the estimate.
Extension (beyond the paper): a frame that still fails with every punctured value revealed does not end the
key block. Alice goes on revealing, ``reveal_step`` at a time, the syndrome of the code's extension rows
(``ldpc_codes.extended_code``: 0.5 m extra parity checks, every variable in exactly one), i.e. Bob decodes
[H; E_j] x = (s, s_E[:j]): a lower-rate code of the same family of graphs, up to f = 1.5 times the fully
shortened one. Every extension bit is one more bit of leak (``m - p0 + t`` still counts them all: t runs past
p0). Only a frame that fails with the whole extension revealed is lost.
Bob resumes every later attempt from the previous attempt's messages (``decode_syndromes(state=...)``).

Decoder
-------
Sum-product BP in the log domain, check update in Gallager's phi-function form (phi(x) = -ln tanh(x/2);
Richardson & Urbanke, "Modern Coding Theory" (2008), Sec. 2.5.2 / Gallager 1963), with the syndrome bit
flipping the sign of each check's outgoing messages. Two implementations:
  * numpy (always available): flooding schedule, vectorised over check-sorted edge arrays
    (``np.add.reduceat`` per check, ``np.bincount`` per variable);
  * numba (used when importable, never required): layered schedule (checks updated serially, posteriors
    refreshed at once; Hocevar, SiPS 2004), converging in about half the iterations, phi from a table.
  * C (``qkdflow.distill._ldpc``, built by setup.py, optional; the default when present, ``QKDFLOW_NO_CEXT=1``
    disables it): the same layered schedule on float32 messages with phi from a log-spaced table, and a
    16-lane AVX-512 kernel (``LdpcBob.decode_many``: frames of one code decoded side by side, one frame per
    SIMD lane, phi from a per-octave quartic) used where the CPU has AVX-512F; with AVX-512DQ and F16C the
    streaming variant (a lane whose frame has converged takes the next frame, posterior rows prefetched, check
    messages stored as float16, hard decisions packed for the convergence test: ~2.3x).
``DECODER`` names the single-frame path in use ("c", "numba" or "numpy").

Min-sum (``algorithm="min-sum"``, C only): layered normalised + offset min-sum (Chen & Fossorier, IEEE Trans.
Commun. 50(3) 2002) with self-correction (Savin, ISIT 2008: a variable-to-check message whose sign flipped since
the previous iteration is erased), saturated int16 messages, 32 frames per AVX-512BW pass (bit-identical scalar
kernel elsewhere). Plain normalised min-sum oscillates on these codes (variable degrees up to 73, check degrees
up to 50): 0/32 frames at f = 1.5 for rate 0.70; self-correction fixes that, but a penalty in f remains
(n = 1e5, 32 frames, tools/bench_ldpc.py --decoder min-sum: 16-32/32 frames fail at f = 1.10 for QBER 2-11 %,
28/32 at f = 1.15 and 5 %, where sum-product decodes all), so sum-product stays the default. ``stall`` > 0
gives a frame up once its count of unsatisfied checks has not reached a new minimum for that many iterations
(saves decoder time on hopeless attempts; sum-product: the C kernels, counting during the layered pass each check
with the hard decisions right after its own update, which costs nothing extra).
All stop as soon as the hard decision satisfies all m parity checks. A frame that does not within
``max_iterations`` is reported as not converged and no key is returned. Convergence to a *different* word
with the same syndrome is possible (undetected error); the caller's verification hash catches it.

Frame sizes: mother code length n in [256, 4e6]; each frame carries n - d key bits (d = round(delta n),
delta = 0.1 by default). ``reconcile`` splits longer keys into such frames.
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from qkdflow.distill.entropy import binary_entropy  # noqa: F401 (also re-exported)
from qkdflow.distill.ldpc_codes import (
    DE_THRESHOLDS,
    TABLE_RATES,
    LdpcCode,
    extended_code,
    extension_rows,
    extension_syndrome,
    load_or_build_code,
    load_or_build_codes,
)

__all__ = [
    "LdpcCode",
    "SyndromeMessage",
    "LdpcResult",
    "LdpcAlice",
    "LdpcBob",
    "RevealMessage",
    "BlindAliceFrame",
    "BlindDecoder",
    "plan_blind",
    "reconcile_blind",
    "ReconcileResult",
    "binary_entropy",
    "load_or_build_code",
    "load_or_build_codes",
    "plan_frame",
    "reconcile",
    "decode_syndrome",
    "DE_THRESHOLDS",
    "TABLE_RATES",
    "DECODER",
    "decode_syndromes",
    "ALGORITHMS",
    "REVEAL_MODES",
    "encode_positions",
    "decode_positions",
]

DEFAULT_DELTA = 0.1
DEFAULT_EFFICIENCY = 1.10
DEFAULT_MAX_ITERATIONS = 200
# Blind mode defaults (tuned with tools/bench_ldpc.py --mode blind at n = 1e5): first attempt at f = 1.0, a step
# of 0.01 in f per round (reliability reveals, 32 frames at QBER 0.5 / 1 / 2 %: f 1.090 / 1.074 / 1.067 against
# 1.097 / 1.082 / 1.072 with 0.015 and 1.102 / 1.088 / 1.078 with 0.02, for ~1.5x the decoding), the mother code
# the highest-rate one able to reach f = 1.15 with every modulated symbol
# shortened (1.22 / 1.3 chose more heavily punctured lower-rate codes: f 0.01-0.03 worse at 2-5 % QBER); 30
# layered iterations per attempt while more values can be revealed (60: f ~0.01 lower, half the throughput), the
# last attempt gets max_iterations.
DEFAULT_BLIND_START = 1.0
DEFAULT_BLIND_STEP = 0.01
DEFAULT_BLIND_MAX = 1.15
# The ceiling is raised for the frame's own statistics: a frame of k key bits at QBER q carries q k +- sqrt(q(1-q) k)
# errors, and the mother code must still reach ``blind_max`` for a frame BLIND_MARGIN_SIGMAS standard deviations
# above the mean (else that frame needs the extension rows, and fails if even they do not suffice, which discards
# its key block): ceiling = blind_max * h(q + z sigma_q) / h(q), sigma_q = sqrt(q (1 - q) / k). Before the
# extension, without it the blind plan lost 2/64 frames at 0.5 % (n = 1e5) and 8-16/64 at 2-3 % (n = 1e4).
BLIND_MARGIN_SIGMAS = 3.0
# From BLIND_LONG_N symbols on, no margin: the mother code is chosen for the QBER estimate itself, and the few
# frames beyond it are rescued by the extension rows (ldpc_codes.extended_code) instead of a lower-rate code for
# every frame. Measured (tools/bench_ldpc.py --mode blind --n 100000 --blind-margin 0 / 3, 256 frames, seed 7):
# f 1.137 / 1.186 at QBER 0.5 %, 1.105 / 1.131 at 1 %, 1.090 / 1.099 at 2 %, 0/256 frames lost (5, 0, 0 rescued).
# Below it the extension does not cover the spread (n = 1e4, margin 0: 6/64 frames lost at 1 %, 3/64 at 3 %).
BLIND_LONG_N = 100_000
# The mother-code pool of the protocol: family "de" (ldpc_codes: density-evolution-designed rates 0.79-0.95 + the
# Elkouss et al. rows below 0.79): when introduced, at n = 1e5, blind f 1.14 / 1.15 / 1.08 at 1 / 2 / 3 % QBER with no
# frame lost (the Elkouss rows alone: 1.21 / 1.12 / 1.14); README's f table for the current figures.
DEFAULT_CODE_FAMILY = "de"
DEFAULT_ROUND_ITERATIONS = 30
# Blind rounds with values left to reveal give a frame up after this many iterations without a new minimum of
# failing checks (C kernels). Measured (tools/bench_ldpc.py --mode blind --frames 64 --n 100000, QBER 0.5-3 %): BP
# iterations per frame ~40 % fewer than with 0 (off), mean f within +-0.003. The attempt with nothing left to
# reveal never stalls out (the decoder's own ``stall``, 0 by default).
DEFAULT_ROUND_STALL = 5
# Blind reveals: "reliability" (Bob names the symbols he is least sure of, Alice discloses her values there: the
# symmetric blind reconciliation of Kiktenko, Trushechkin, Lim, Kurochkin, Fedorov, PR Applied 8, 044017 (2017),
# arXiv:1612.03673) or "order" (the next punctured values in a fixed order, then extension syndrome bits:
# Martinez-Mateo et al. 2012). Measured at n = 1e5, 32 frames per point (tools/bench_ldpc.py --mode blind
# --reveal ...): see README; reliability lowers f by 0.015-0.04 at QBER 0.5-5 % and needs fewer rounds.
REVEAL_MODES = ("reliability", "order")
DEFAULT_REVEAL = "reliability"
# Reliability mode's code choice (plan_blind): a first attempt at a fully shortened efficiency in [0.9, 1] ends at
# f 1.06-1.07 (n = 1e5, 32 frames, QBER 1 %: rate 0.93, 0.963 -> 1.057; QBER 0.7 %: rate 0.95, 0.923 -> 1.073);
# from 0.83 it needs 40-50 rounds and ends at 1.12-1.13 (QBER 0.8 % rate 0.95, 1.2 % rate 0.93).
RELIABILITY_FLOOR = 0.9
RELIABILITY_CEILING = 1.1
# Fewer checks than this and reliability reveals fail on the dense high-rate graphs (n = 1e4, QBER 0.5 %: rate 0.962,
# m = 380, check degree 220: frames with 52-60 errors did not converge with 380 values disclosed); such a frame is
# planned for order reveals instead (puncturing, the 3-sigma margin below BLIND_LONG_N).
RELIABILITY_MIN_CHECKS = 1000


def reveal_limit(code: "LdpcCode", p0: int, reveal: str) -> int:
    """Values a blind frame may have disclosed before it counts as lost (both ends compute the same). Order mode:
    its p0 punctured values, then the code's extension syndrome bits. Reliability mode: p0 + m values, i.e. up to
    twice the first attempt's leak (with 0.5 m, as in order mode, 11 of 64 frames of 10^4 bits at QBER 0.5 % ran
    out: the spread of a short frame's error count is wide)."""
    return p0 + (code.m if reveal == "reliability" else extension_rows(code))


ALGORITHMS = ("sum-product", "min-sum")
DEFAULT_ALGORITHM = "sum-product"
# Min-sum parameters (tuned with /tmp sweeps at n = 1e5, rate 0.70, QBER 4.5 %: alpha 0.8, beta 0.25 decoded
# 30/32 frames where alpha 0.7-1.0 without offset decoded 9-25/32).
MINSUM_ALPHA = 0.8
MINSUM_BETA = 0.25            # LLR units
_SHORTENED_LLR = 1.0e3        # "infinite" reliability; phi(1e3) underflows to the clip floor


_PHI_MIN, _PHI_MAX = 1.0e-12, 40.0


def _known_llr(bits: np.ndarray) -> np.ndarray:
    """LLRs of symbols whose values are public (shortened, revealed): +-_SHORTENED_LLR for 0 / 1."""
    return _SHORTENED_LLR - (2.0 * _SHORTENED_LLR) * np.asarray(bits, dtype=np.float64)


# --------------------------------------------------------------------------------------------- messages
_MAGIC = b"QLDP"
_VERSION = 1                              # one-shot
_VERSION_BLIND = 2                        # blind: header + reveal step
_HEADER = struct.Struct("<4sB8sQIIIId")   # magic, version, code fingerprint, frame id, n, m, p, s, qber
_STEP = struct.Struct("<I")               # v2 only: punctured values revealed per blind round


@dataclass(frozen=True)
class SyndromeMessage:
    """Alice -> Bob: which code, how it was punctured/shortened, the QBER estimate and the syndrome."""

    code_fingerprint: bytes
    frame_id: int
    n: int
    m: int
    punctured: int
    shortened: int
    qber_estimate: float
    syndrome: np.ndarray       # uint8 0/1, length m
    reveal_step: int = 0       # blind mode: punctured values Alice reveals per failed attempt (0: one-shot)

    @property
    def key_bits(self) -> int:
        return self.n - self.punctured - self.shortened

    @property
    def blind(self) -> bool:
        return self.reveal_step > 0

    @property
    def leak_bits(self) -> int:
        """Information about the key disclosed by this message: m - p (see module docstring)."""
        return self.m - self.punctured

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(_MAGIC, _VERSION_BLIND if self.blind else _VERSION, self.code_fingerprint,
                            self.frame_id, self.n, self.m, self.punctured, self.shortened, self.qber_estimate)
        if self.blind:
            head += _STEP.pack(self.reveal_step)
        return head + np.packbits(self.syndrome.astype(np.uint8)).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SyndromeMessage":
        """Strict decode: ValueError on wrong magic/version, truncation, trailing bytes, bad fields."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("syndrome message: expected bytes")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ValueError(f"syndrome message: truncated header ({len(data)} < {_HEADER.size} bytes)")
        magic, ver, fp, frame_id, n, m, p, s, q = _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise ValueError("syndrome message: bad magic")
        if ver not in (_VERSION, _VERSION_BLIND):
            raise ValueError(f"syndrome message: unsupported version {ver}")
        step, head_size = 0, _HEADER.size
        if ver == _VERSION_BLIND:
            if len(data) < head_size + _STEP.size:
                raise ValueError("syndrome message: truncated blind header")
            (step,) = _STEP.unpack_from(data, head_size)
            head_size += _STEP.size
            if step < 1:
                raise ValueError("syndrome message: blind reveal_step must be >= 1")
        if not (0 < m < n):
            raise ValueError(f"syndrome message: m={m} must be in (0, n={n})")
        if p + s >= n:
            raise ValueError(f"syndrome message: punctured+shortened={p + s} must be < n={n}")
        if not (math.isfinite(q) and 0.0 < q < 0.5):
            raise ValueError(f"syndrome message: qber_estimate={q!r} must be in (0, 0.5)")
        nbytes = (m + 7) // 8
        body = data[head_size:]
        if len(body) != nbytes:
            raise ValueError(f"syndrome message: syndrome is {len(body)} bytes, expected {nbytes}")
        bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
        if bits[m:].any():
            raise ValueError("syndrome message: non-zero padding bits")
        return cls(fp, frame_id, n, m, p, s, q, bits[:m].copy(), step)


_RMAGIC = b"QLDR"
_RVERSION = 1
_RVERSION_POS = 2                       # values at the positions Bob asked for, positions echoed (uint32 LE)
_RHEADER = struct.Struct("<4sB8sQII")    # magic, version, code fingerprint, frame id, revealed before, count


@dataclass(frozen=True)
class RevealMessage:
    """Alice -> Bob (blind mode): ``count`` values of a frame's word.

    Order mode (``positions`` None, wire version 1): the symbols ``puncture_order[p0 - revealed_before - count :
    p0 - revealed_before]`` (in that order; revealing from the end of the puncturing order keeps the
    still-punctured set a prefix of it), or, once all punctured values are out, extension syndrome bits.
    Reliability mode (wire version 2): Alice's values at ``positions`` (symbol indices of the mother code, as Bob
    asked for them; echoed so the message is self-contained). Every revealed value is one bit of leak
    (``leak_bits = count``).
    """

    code_fingerprint: bytes
    frame_id: int
    revealed_before: int
    values: np.ndarray         # uint8 0/1
    positions: np.ndarray | None = None    # uint32, reliability mode

    @property
    def count(self) -> int:
        return int(self.values.size)

    @property
    def leak_bits(self) -> int:
        return self.count

    def to_bytes(self) -> bytes:
        values = np.packbits(self.values.astype(np.uint8)).tobytes()
        if self.positions is None:
            return _RHEADER.pack(_RMAGIC, _RVERSION, self.code_fingerprint, self.frame_id, self.revealed_before,
                                 self.count) + values
        return (_RHEADER.pack(_RMAGIC, _RVERSION_POS, self.code_fingerprint, self.frame_id, self.revealed_before,
                              self.count) + encode_positions(self.positions) + values)

    @classmethod
    def from_bytes(cls, data: bytes) -> "RevealMessage":
        """Strict decode: ValueError on wrong magic/version, truncation, trailing bytes, padding bits."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("reveal message: expected bytes")
        data = bytes(data)
        if len(data) < _RHEADER.size:
            raise ValueError(f"reveal message: truncated header ({len(data)} < {_RHEADER.size} bytes)")
        magic, ver, fp, frame_id, before, count = _RHEADER.unpack_from(data)
        if magic != _RMAGIC:
            raise ValueError("reveal message: bad magic")
        if ver not in (_RVERSION, _RVERSION_POS):
            raise ValueError(f"reveal message: unsupported version {ver}")
        if count < 1:
            raise ValueError("reveal message: count must be >= 1")
        body = data[_RHEADER.size:]
        positions = None
        if ver == _RVERSION_POS:
            if len(body) < 4 * count:
                raise ValueError(f"reveal message: truncated positions ({len(body)} < {4 * count} bytes)")
            positions = decode_positions(body[:4 * count])
            body = body[4 * count:]
        if len(body) != (count + 7) // 8:
            raise ValueError(f"reveal message: {len(body)} value bytes, expected {(count + 7) // 8}")
        bits = np.unpackbits(np.frombuffer(body, dtype=np.uint8))
        if bits[count:].any():
            raise ValueError("reveal message: non-zero padding bits")
        return cls(fp, frame_id, before, bits[:count].copy(), positions)


def _checked_positions(positions: np.ndarray, upper: int) -> np.ndarray:
    """A non-empty 1-D integer array of ascending, distinct symbol positions in [0, upper); ValueError otherwise."""
    pos = np.asarray(positions)
    if pos.ndim != 1 or pos.size < 1 or not np.issubdtype(pos.dtype, np.integer):
        raise ValueError("positions: expected a non-empty 1-D integer array")
    if pos.min() < 0 or pos.max() >= upper or (pos.size > 1 and np.any(np.diff(pos) <= 0)):
        raise ValueError(f"positions: must be ascending, distinct and in [0, {upper})")
    return pos


def encode_positions(positions: np.ndarray) -> bytes:
    """Symbol positions on the wire: uint32 little-endian, ascending and distinct (checked)."""
    return _checked_positions(positions, 2**32).astype("<u4").tobytes()


def decode_positions(data: bytes) -> np.ndarray:
    """Inverse of ``encode_positions`` (strict: ValueError on a ragged length or unsorted/repeated positions)."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) % 4 or not len(data):
        raise ValueError("positions: expected a non-empty multiple of 4 bytes")
    return _checked_positions(np.frombuffer(bytes(data), dtype="<u4").astype(np.int64), 2**32)


@dataclass
class LdpcResult:
    """Bob's outcome for one frame. ``corrected`` is None unless the decoder converged."""

    corrected: np.ndarray | None
    converged: bool
    leak_bits: int
    iterations: int
    frame_id: int = 0
    key_bits: int = 0
    punctured: int = 0
    shortened: int = 0
    syndrome_bits: int = 0


# ------------------------------------------------------------------------------------------ frame plan
def plan_frame(codes: Sequence[LdpcCode], qber_estimate: float, efficiency: float = DEFAULT_EFFICIENCY,
               delta: float = DEFAULT_DELTA) -> tuple[LdpcCode, int, int]:
    """Choose (mother code, p, s) for a QBER estimate (Elkouss et al. 2010, Eqs. (5), (7)).

    Target rate R = 1 - efficiency*h(q); s = ceil((R0 - R(1 - d/n)) n), p = d - s. Among the codes that can
    reach R (0 <= s <= d and p within the code's recoverable-puncturing list) the one with R0 nearest R is
    used: it is modulated least (R = R0 at s = R0 d), where Elkouss et al. 2010 (Table I) find f lowest.
    """
    if not (math.isfinite(qber_estimate) and 0.0 < qber_estimate < 0.5):
        raise ValueError(f"qber_estimate: must be in (0, 0.5), got {qber_estimate!r}")
    if not (math.isfinite(efficiency) and efficiency >= 1.0):
        raise ValueError(f"efficiency: must be >= 1, got {efficiency!r}")
    if not (0.0 <= delta < 0.5):
        raise ValueError(f"delta: must be in [0, 0.5), got {delta!r}")
    if not codes:
        raise ValueError("codes: empty code pool")
    rate = 1.0 - efficiency * binary_entropy(qber_estimate)
    best = None
    for code in codes:
        d = int(round(delta * code.n))
        r0 = 1.0 - code.m / code.n
        s = int(math.ceil((r0 - rate * (1.0 - d / code.n)) * code.n - 1e-6))
        p = d - s
        if s < 0 or p < 0 or p > code.puncture_order.size or s > code.shorten_order.size:
            continue
        score = abs(r0 - rate)
        if best is None or score < best[0]:
            best = (score, code, p, s)
    if best is None:
        raise ValueError(f"qber_estimate: {qber_estimate:.4g} (target rate {rate:.4f}) is outside the range "
                         f"of the code pool with delta={delta}")
    return best[1], best[2], best[3]


def plan_blind(codes: Sequence[LdpcCode], qber_estimate: float, start: float = DEFAULT_BLIND_START,
               step: float = DEFAULT_BLIND_STEP, max_efficiency: float = DEFAULT_BLIND_MAX,
               delta: float = DEFAULT_DELTA, margin_sigmas: float | None = None, pad_bits: int = 0,
               reveal: str = "order") -> tuple[LdpcCode, int, int, int]:
    """Choose (mother code, p0, s0, reveal step) for blind reconciliation from a QBER estimate.

    ``reveal="reliability"``: no punctured symbols (p0 = 0, s0 = d): Bob's requests are then a function of the
    error pattern and public data only (see ``BlindDecoder``). The code is the lowest-rate one whose fully
    shortened efficiency m / (k h) is at most ``start`` if that is at least ``RELIABILITY_FLOOR`` (its first
    attempt just below capacity; reveals take it up), else the highest-rate one above ``start`` if within
    ``RELIABILITY_CEILING`` (decodes at about that efficiency), else the nearest below. ``max_efficiency`` and
    the margin are not used (a frame can always be told more values). A code with fewer than
    ``RELIABILITY_MIN_CHECKS`` checks is not used that way: the frame gets the order-mode plan (p0 > 0, so it is
    revealed in order; ``BlindDecoder`` handles both kinds of frame in one batch).

    k = n - d key bits, h = h(q). Code: the highest-rate one whose fully shortened efficiency m / (k h)
    reaches ``max_efficiency`` for a frame ``margin_sigmas`` standard deviations of its error count above
    the estimate (else the lowest-rate code); None: ``BLIND_MARGIN_SIGMAS`` below ``BLIND_LONG_N`` symbols, 0 from
    there on. p0 = m - ceil(start k h), within [0, min(d,
    recoverable punctures)]: the first attempt runs at efficiency ``start`` (or the highest rate the code
    reaches with every modulated symbol punctured, Martinez-Mateo et al. 2012). Step: ceil(step k h) values
    per round, i.e. about ``step`` in efficiency. ``pad_bits``: the frame's last key bits are public zeros (a key
    block's padded last frame), so only k - pad_bits bits count, for the code choice and the efficiencies.
    """
    if not (math.isfinite(qber_estimate) and 0.0 < qber_estimate < 0.5):
        raise ValueError(f"qber_estimate: must be in (0, 0.5), got {qber_estimate!r}")
    if not (math.isfinite(start) and start > 0 and math.isfinite(step) and step > 0):
        raise ValueError(f"blind start/step efficiencies must be positive, got {start!r}, {step!r}")
    if not (math.isfinite(max_efficiency) and max_efficiency >= 1.0):
        raise ValueError(f"blind max efficiency: must be >= 1, got {max_efficiency!r}")
    if margin_sigmas is None:
        margin_sigmas = BLIND_MARGIN_SIGMAS if codes and codes[0].n < BLIND_LONG_N else 0.0
    if not (math.isfinite(margin_sigmas) and margin_sigmas >= 0):
        raise ValueError(f"blind margin: must be >= 0 standard deviations, got {margin_sigmas!r}")
    if not (0.0 <= delta < 0.5):
        raise ValueError(f"delta: must be in [0, 0.5), got {delta!r}")
    if not codes:
        raise ValueError("codes: empty code pool")
    h = binary_entropy(qber_estimate)
    ordered = sorted(codes, key=lambda c: c.m)
    k_all = ordered[0].n - int(round(delta * ordered[0].n))
    if not (isinstance(pad_bits, (int, np.integer)) and 0 <= pad_bits < k_all):
        raise ValueError(f"pad_bits: must be an integer in [0, {k_all}), got {pad_bits!r}")

    def reaches(c: LdpcCode) -> bool:   # fully shortened, f >= max_efficiency for a frame z sigma above the mean
        k = c.n - round(delta * c.n) - pad_bits     # the real bits: padding is known to both
        q_hi = min(qber_estimate + margin_sigmas * math.sqrt(qber_estimate * (1 - qber_estimate) / k), 0.5)
        return c.m >= max_efficiency * k * binary_entropy(q_hi)

    if reveal == "reliability":
        d = int(round(delta * ordered[0].n))
        kh_all = (ordered[0].n - d - pad_bits) * h
        below = [c for c in ordered if c.m <= start * kh_all]
        above = [c for c in ordered if c.m > start * kh_all]
        if below and below[-1].m >= RELIABILITY_FLOOR * kh_all:
            code = below[-1]
        elif above and above[0].m <= RELIABILITY_CEILING * kh_all:
            code = above[0]
        else:
            code = below[-1] if below else above[0]
        if code.m >= RELIABILITY_MIN_CHECKS:
            if d > code.shorten_order.size:
                raise ValueError(f"delta: {delta} needs more shortened symbols than the code allows")
            return code, 0, d, max(1, int(math.ceil(step * kh_all)))
    elif reveal != "order":
        raise ValueError(f"reveal: must be one of {', '.join(REVEAL_MODES)}, got {reveal!r}")
    code = next((c for c in ordered if reaches(c)), ordered[-1])
    d = int(round(delta * code.n))
    kh = (code.n - d - pad_bits) * h
    p_cap = min(d, int(code.puncture_order.size))
    p0 = int(min(max(code.m - math.ceil(start * kh - 1e-9), 0), p_cap))
    s0 = d - p0
    if s0 > code.shorten_order.size:
        raise ValueError(f"delta: {delta} needs more shortened symbols than the code allows")
    return code, p0, s0, max(1, int(math.ceil(step * kh)))


_POSITIONS: dict = {}   # (id(code), p, s) -> (code, positions): frames of a block share (p, s)
_POSITIONS_MAX = 256


def _positions(code: LdpcCode, p: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key positions, punctured, shortened), sorted and read-only; cached (two sorts and an n-wide mask cost
    ~1 ms per frame at n = 1e5, a visible share of a fast decoder's time)."""
    hit = _POSITIONS.get((id(code), p, s))
    if hit is not None and hit[0] is code:
        return hit[1]
    punct = np.sort(code.puncture_order[:p])
    short = np.sort(code.shorten_order[:s])
    mask = np.ones(code.n, dtype=bool)
    mask[punct] = False
    mask[short] = False
    out = (np.flatnonzero(mask), punct, short)
    for a in out:
        a.flags.writeable = False
    if len(_POSITIONS) >= _POSITIONS_MAX:
        _POSITIONS.clear()
    _POSITIONS[(id(code), p, s)] = (code, out)
    return out


def _shortened_values(code: LdpcCode, frame_id: int, s: int) -> np.ndarray:
    """Public pseudo-random values of the shortened symbols (synchronised PRNG, Elkouss 2010 step 3)."""
    rng = np.random.default_rng([0x5157, int(frame_id), code.n, code.m])
    return rng.integers(0, 2, size=s, dtype=np.uint8)


def _as_bits(key: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(key)
    if a.ndim != 1:
        raise ValueError(f"{name}: must be a 1-D bit array")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: must be an integer or bool array of 0/1, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"{name}: values must be 0 or 1")
    return a.astype(np.uint8)


def _code_pool(code) -> list[LdpcCode]:
    if isinstance(code, LdpcCode):
        return [code]
    pool = list(code)
    if not pool or not all(isinstance(c, LdpcCode) for c in pool):
        raise ValueError("code: expected an LdpcCode or a non-empty sequence of LdpcCode")
    if len({c.n for c in pool}) != 1:
        raise ValueError("code: all codes in a pool must have the same length n")
    return pool


class LdpcAlice:
    """Alice's half: computes the syndrome of her frame (one message, no feedback).

    ``code``: one mother code or the pool (same n) to choose from; ``seed`` drives the punctured values,
    which must be secret -- ``None`` (OS entropy) outside reproducible simulations. ``efficiency`` is the
    target f used to choose the rate, ``delta`` the fraction d/n of punctured + shortened symbols.
    """

    def __init__(self, code: LdpcCode | Sequence[LdpcCode], seed: int | None,
                 efficiency: float = DEFAULT_EFFICIENCY, delta: float = DEFAULT_DELTA,
                 blind_start: float = DEFAULT_BLIND_START, blind_step: float = DEFAULT_BLIND_STEP,
                 blind_max: float = DEFAULT_BLIND_MAX, blind_margin_sigmas: float | None = None,
                 blind_reveal: str = DEFAULT_REVEAL) -> None:
        self.codes = _code_pool(code)
        if blind_reveal not in REVEAL_MODES:
            raise ValueError(f"blind_reveal: must be one of {', '.join(REVEAL_MODES)}, got {blind_reveal!r}")
        self.blind_reveal = blind_reveal
        self.blind_start, self.blind_step, self.blind_max = float(blind_start), float(blind_step), float(blind_max)
        self.blind_margin_sigmas = None if blind_margin_sigmas is None else float(blind_margin_sigmas)
        self._rng = np.random.default_rng(seed)   # punctured values: must be secret (seed=None in use)
        self.efficiency = float(efficiency)
        self.delta = float(delta)
        if not (math.isfinite(self.efficiency) and self.efficiency >= 1.0):
            raise ValueError(f"efficiency: must be >= 1, got {efficiency!r}")
        if not (0.0 <= self.delta < 0.5):
            raise ValueError(f"delta: must be in [0, 0.5), got {delta!r}")
        self._frame_id = 0

    @property
    def frame_bits(self) -> int:
        """Key bits per frame: n - round(delta * n)."""
        n = self.codes[0].n
        return n - int(round(self.delta * n))

    def encode(self, key: np.ndarray, qber_estimate: float, frame_id: int | None = None) -> SyndromeMessage:
        bits = _as_bits(key, "key")
        if bits.size != self.frame_bits:
            raise ValueError(f"key: frame must have {self.frame_bits} bits, got {bits.size}")
        code, p, s = plan_frame(self.codes, qber_estimate, self.efficiency, self.delta)
        if frame_id is None:
            frame_id = self._frame_id
        if not (isinstance(frame_id, (int, np.integer)) and 0 <= frame_id < 2**64):
            raise ValueError(f"frame_id: must be an integer in [0, 2^64), got {frame_id!r}")
        self._frame_id = (int(frame_id) + 1) % 2**64
        key_pos, punct, short = _positions(code, p, s)
        word = np.empty(code.n, dtype=np.uint8)
        word[key_pos] = bits
        word[punct] = self._rng.integers(0, 2, size=p, dtype=np.uint8)
        word[short] = _shortened_values(code, frame_id, s)
        return SyndromeMessage(code.fingerprint, int(frame_id), code.n, code.m, p, s, float(qber_estimate),
                               code.syndrome(word))

    def encode_blind(self, key: np.ndarray, qber_estimate: float, frame_id: int | None = None,
                     pad_bits: int = 0) -> tuple[SyndromeMessage, "BlindAliceFrame"]:
        """Blind mode: the first syndrome (rate from ``plan_blind``) and the frame's state for later reveals.

        The caller keeps the ``BlindAliceFrame`` (it holds the secret punctured values) until the frame is done.
        ``pad_bits``: the last key bits are public zero padding (Bob is told the same count); the first
        attempt's rate is planned for the other bits, so a part-filled frame does not cost a full frame's leak.
        """
        bits = _as_bits(key, "key")
        if bits.size != self.frame_bits:
            raise ValueError(f"key: frame must have {self.frame_bits} bits, got {bits.size}")
        if pad_bits and bits[bits.size - pad_bits:].any():
            raise ValueError("key: the padding bits must be zeros")
        code, p, s, step = plan_blind(self.codes, qber_estimate, self.blind_start, self.blind_step,
                                      self.blind_max, self.delta, self.blind_margin_sigmas, pad_bits,
                                      reveal=self.blind_reveal)
        if frame_id is None:
            frame_id = self._frame_id
        if not (isinstance(frame_id, (int, np.integer)) and 0 <= frame_id < 2**64):
            raise ValueError(f"frame_id: must be an integer in [0, 2^64), got {frame_id!r}")
        self._frame_id = (int(frame_id) + 1) % 2**64
        key_pos, _, short = _positions(code, p, s)
        word = np.empty(code.n, dtype=np.uint8)
        word[key_pos] = bits
        order = code.puncture_order[:p]
        word[order] = self._rng.integers(0, 2, size=p, dtype=np.uint8)
        word[short] = _shortened_values(code, frame_id, s)
        msg = SyndromeMessage(code.fingerprint, int(frame_id), code.n, code.m, p, s, float(qber_estimate),
                              code.syndrome(word), reveal_step=step)
        mode = "order" if p else self.blind_reveal       # a punctured frame is always revealed in order
        return msg, BlindAliceFrame(code, int(frame_id), p, step, word, shortened=s, reveal=mode)


class BlindAliceFrame:
    """Alice's state of one blind frame: her word x+ (key, secret punctured values, shortened values) and how
    many values have been revealed. ``leak_bits`` = m - p0 + revealed, exactly what Bob has been told about the
    frame."""

    def __init__(self, code: LdpcCode, frame_id: int, p0: int, step: int, word: np.ndarray,
                 shortened: int = 0, reveal: str = "order") -> None:
        self.fingerprint, self.m = code.fingerprint, code.m
        self.frame_id, self.p0, self.step, self.s0 = frame_id, p0, step, shortened
        self._code, self._word = code, word
        self._ext: np.ndarray | None = None
        self._public: np.ndarray | None = None      # reliability mode: symbols already known to Bob
        self._mode = reveal                         # "order" or "reliability": how Bob may ask
        # values Bob may be told: order mode, the punctured values then the extension syndrome bits; reliability
        # mode, as many values at the positions he names
        self.limit = reveal_limit(code, p0, reveal)
        self.revealed = 0

    @property
    def leak_bits(self) -> int:
        return self.m - self.p0 + self.revealed

    @property
    def exhausted(self) -> bool:
        return self.revealed >= self.limit

    def reveal(self) -> RevealMessage | None:
        """The next ``step`` punctured values (fewer at the end), then the next ``step`` extension syndrome bits
        (a message never mixes the two); None once everything has been revealed."""
        self._set_mode("order")
        if self.revealed < self.p0:   # from the end of the puncturing order: the rest stays a prefix
            left = self.p0 - self.revealed
            c = min(self.step, left)
            values = self._word[self._code.puncture_order[left - c:left]]
        elif self.revealed < self.limit:
            if self._ext is None:   # H_E x+ once: every punctured value is public by now
                self._ext = extension_syndrome(self._code, self._word)
            e0 = self.revealed - self.p0
            c = min(self.step, self.limit - self.revealed)
            values = self._ext[e0:e0 + c].copy()
        else:
            return None
        msg = RevealMessage(self.fingerprint, self.frame_id, self.revealed, values)
        self.revealed += c
        return msg

    def reveal_at(self, positions: np.ndarray) -> RevealMessage:
        """Reliability mode: Alice's values at the symbol ``positions`` Bob asked for (ascending, distinct). Each
        must be a key or punctured symbol not disclosed before (shortened ones are public already), and the
        frame's total stays within ``limit``; ValueError otherwise (nothing is disclosed then)."""
        pos = _checked_positions(positions, self._code.n)
        if self.revealed + pos.size > self.limit:
            raise ValueError(f"positions: {self.revealed} + {pos.size} values exceed the frame's {self.limit}")
        self._set_mode("reliability")
        if self._public is None:
            self._public = np.zeros(self._code.n, dtype=bool)
            self._public[self._code.shorten_order[:self.s0]] = True
        if self._public[pos].any():
            raise ValueError("positions: a symbol that is shortened or was disclosed before")
        self._public[pos] = True
        msg = RevealMessage(self.fingerprint, self.frame_id, self.revealed, self._word[pos].copy(),
                            pos.astype(np.int64))
        self.revealed += int(pos.size)
        return msg

    def answer(self, request: np.ndarray | None) -> RevealMessage | None:
        """Alice's reply to one entry of Bob's request (``BlindDecoder.requests``): the values at the positions
        he names, or with None the next values in order."""
        return self.reveal() if request is None else self.reveal_at(request)

    def _set_mode(self, mode: str) -> None:
        if self._mode != mode:
            raise ValueError(f"reveal: frame {self.frame_id} is revealed in {self._mode} mode, not {mode}")


class LdpcBob:
    """Bob's half: decodes his frame against Alice's syndrome."""

    def __init__(self, code: LdpcCode | Sequence[LdpcCode], seed: int | None = None,
                 max_iterations: int = DEFAULT_MAX_ITERATIONS, use_numba: bool | None = None,
                 algorithm: str = DEFAULT_ALGORITHM, stall: int = 0) -> None:
        # ``seed`` is accepted for API symmetry; Bob's decoder is deterministic.
        # ``algorithm``: "sum-product" (float) or "min-sum" (int16, C only); ``stall``: min-sum early stop.
        self.codes = {c.fingerprint: c for c in _code_pool(code)}
        self.algorithm = _check_algorithm(algorithm)
        if not (isinstance(stall, int) and stall >= 0):
            raise ValueError(f"stall: must be a non-negative integer, got {stall!r}")
        self.stall = stall
        if algorithm == "min-sum" and use_numba is not None:
            raise ValueError("use_numba: the numba/numpy paths are sum-product only")
        if not (isinstance(max_iterations, int) and max_iterations >= 1):
            raise ValueError(f"max_iterations: must be a positive integer, got {max_iterations!r}")
        self.max_iterations = max_iterations
        self.use_numba = use_numba

    def decode(self, key: np.ndarray, msg: SyndromeMessage, reveals: Sequence[RevealMessage] = ()) -> LdpcResult:
        code, key_pos, llr, t, syn = self._prepare(key, msg, reveals)
        if self.algorithm == "min-sum":
            words, oks, its = decode_syndromes(code, llr[None, :], syn[None, :], self.max_iterations,
                                               simd=False, algorithm="min-sum", stall=self.stall)
            return self._result(msg, key_pos, words[0], bool(oks[0]), int(its[0]), t)
        word, ok, iters = decode_syndrome(code, llr, syn, self.max_iterations, self.use_numba)
        return self._result(msg, key_pos, word, ok, iters, t)

    def decode_many(self, keys: Sequence[np.ndarray], msgs: Sequence[SyndromeMessage],
                    reveals: Sequence[Sequence[RevealMessage]] | None = None,
                    states: list | None = None, max_iterations: int | None = None,
                    pads: Sequence[int] | None = None, stall: int | None = None,
                    posts: list | None = None,
                    store: tuple | None = None) -> list[LdpcResult]:
        """Decode several frames; frames of the same mother code go to the C multi-frame kernel together.

        Same results as ``decode`` frame by frame (up to the float rounding of the SIMD kernel's phi), faster
        where AVX-512 is available. ``use_numba`` set (True/False) selects the per-frame reference path.
        Blind mode: ``reveals[i]`` are the reveal messages received so far for frame i (in order; their values
        become shortened symbols, and ``leak_bits`` counts them); ``states`` (C path only) is a list with one
        entry per frame, ``None`` or the float32 messages of that frame's previous attempt: decoding resumes
        from them, and the entry is replaced by the new messages (``None`` once the frame has converged).
        ``max_iterations`` and ``stall`` override the instance's for this call. ``pads[i]``: frame i's last key bits are
        public zero padding (decoded as known zeros). ``posts`` (a list with one entry per frame): set to the
        float32 a-posteriori LLRs of each frame that did not converge (C sum-product kernels), else to None.
        ``store`` (instead of ``states``; C sum-product only, see ``uses_store``): (array, rows, warm, posts):
        frame i's messages live in row rows[i] of a float32 (R, S) array, zero until its first attempt (warm[i]
        False), resumed and written back in place; posts[i], if not None, are the float32 posteriors frame i
        resumes from (``decode_syndromes(post_in=...)``).
        """
        if len(keys) != len(msgs):
            raise ValueError(f"keys: {len(keys)} frames but {len(msgs)} syndrome messages")
        if reveals is not None and len(reveals) != len(msgs):
            raise ValueError(f"reveals: {len(reveals)} lists for {len(msgs)} frames")
        if states is not None and len(states) != len(msgs):
            raise ValueError(f"states: {len(states)} entries for {len(msgs)} frames")
        if pads is not None and len(pads) != len(msgs):
            raise ValueError(f"pads: {len(pads)} entries for {len(msgs)} frames")
        if store is not None and (states is not None or not self.uses_store
                                  or any(len(x) != len(msgs) for x in store[1:])):
            raise ValueError("store: needs the C sum-product decoder, no states, and one row, flag and posterior "
                             "entry per frame")
        if posts is not None:
            if len(posts) != len(msgs):
                raise ValueError(f"posts: {len(posts)} entries for {len(msgs)} frames")
            posts[:] = [None] * len(msgs)
        cap = self.max_iterations if max_iterations is None else int(max_iterations)
        stall = self.stall if stall is None else int(stall)
        out: list[LdpcResult | None] = [None] * len(msgs)
        if self.use_numba is not None or _cldpc is None:
            prepared = [self._prepare(k, msg, reveals[i] if reveals is not None else (),
                                      pad_bits=pads[i] if pads is not None else 0)
                        for i, (k, msg) in enumerate(zip(keys, msgs))]
            for i, ((code, key_pos, llr, t, syn), msg) in enumerate(zip(prepared, msgs)):
                word, ok, iters = decode_syndrome(code, llr, syn, cap, self.use_numba)
                out[i] = self._result(msg, key_pos, word, ok, iters, t)
            return out  # type: ignore[return-value]
        # frames decode together when they share the mother code and the number of extension bits revealed
        groups: dict[tuple[bytes, int], list[int]] = {}
        for i, msg in enumerate(msgs):
            t = sum(r.count for r in reveals[i] if r.positions is None) if reveals is not None else 0
            groups.setdefault((msg.code_fingerprint, max(0, t - msg.punctured)), []).append(i)
        # every frame validated before any is decoded; each group's LLRs written straight into one (F, n) array
        prepared: list = [None] * len(msgs)
        group_llr: dict[tuple[bytes, int], np.ndarray | None] = {}
        for fp, idx in groups.items():
            c = self.codes.get(fp[0])
            arr = None if c is None else np.empty((len(idx), c.n), dtype=np.float64)
            for j, i in enumerate(idx):
                prepared[i] = self._prepare(keys[i], msgs[i], reveals[i] if reveals is not None else (),
                                            out=None if arr is None else arr[j],
                                            pad_bits=pads[i] if pads is not None else 0)
            group_llr[fp] = arr
        for fp, idx in groups.items():
            code = prepared[idx[0]][0]
            st = None
            warm = False
            if states is not None:
                st = np.zeros((len(idx), code.n_edges),
                              dtype=np.int16 if self.algorithm == "min-sum" else np.float32)
                for j, i in enumerate(idx):
                    if states[i] is not None:   # fewer extension rows before: their edges are a prefix
                        st[j, :states[i].size] = states[i]
                        warm = True
            po = (np.empty((len(idx), code.n), dtype=np.float32)
                  if posts is not None and self.algorithm == "sum-product" else None)
            rows = pin = pok = None
            if store is not None:
                st, rows = store[0], np.array([store[1][i] for i in idx], dtype=np.int64)
                warm = any(store[2][i] for i in idx)    # a frame's row is zero before its first attempt
                given = [store[3][i] for i in idx]
                if warm and any(p is not None for p in given):
                    pin = np.zeros((len(idx), code.n), dtype=np.float32)
                    pok = np.zeros(len(idx), dtype=np.uint8)
                    for j, p in enumerate(given):
                        if p is not None:
                            pin[j], pok[j] = p, 1
            words, ok, iters = decode_syndromes(code, group_llr[fp],
                                                np.stack([prepared[i][4] for i in idx]), cap,
                                                state=st, warm=warm, algorithm=self.algorithm, stall=stall,
                                                post_out=po, state_rows=rows, post_in=pin, post_ok=pok)
            for j, i in enumerate(idx):
                out[i] = self._result(msgs[i], prepared[i][1], words[j], bool(ok[j]), int(iters[j]),
                                      prepared[i][3])
                if states is not None:
                    states[i] = None if ok[j] else st[j]  # a view: the next round copies it into its own array
                if po is not None and not ok[j]:
                    posts[i] = po[j]
        return out  # type: ignore[return-value]

    @property
    def uses_store(self) -> bool:
        """``decode_many`` accepts ``store`` (messages kept in place in one array): the C sum-product path."""
        return self.use_numba is None and _cldpc is not None and self.algorithm == "sum-product"

    def _prepare(self, key: np.ndarray, msg: SyndromeMessage, reveals: Sequence[RevealMessage] = (),
                 out: np.ndarray | None = None, pad_bits: int = 0,
                 ) -> tuple[LdpcCode, np.ndarray, np.ndarray, int, np.ndarray]:
        """Validate one frame and build Bob's LLRs: channel at key bits, 0 punctured, +-inf shortened and
        revealed (into ``out``, a float64 row of length n, if given). Returns (code to decode: the mother code,
        extended by the extension bits revealed; key positions; llr; values revealed; syndrome to decode)."""
        code = self.codes.get(msg.code_fingerprint)
        if code is None:
            raise ValueError("msg: code fingerprint does not match any code held by Bob")
        if msg.n != code.n or msg.m != code.m:
            raise ValueError("msg: n/m do not match the code")
        if msg.punctured > code.puncture_order.size or msg.shortened > code.shorten_order.size:
            raise ValueError("msg: more punctured/shortened symbols than the code allows")
        if msg.syndrome.size != code.m:
            raise ValueError("msg: syndrome length does not match m")
        bits = _as_bits(key, "key")
        if bits.size != msg.key_bits:
            raise ValueError(f"key: frame must have {msg.key_bits} bits, got {bits.size}")
        key_pos, punct, short = _positions(code, msg.punctured, msg.shortened)
        q = msg.qber_estimate
        if out is None:
            llr = np.zeros(code.n, dtype=np.float64)
        else:  # a row of the caller's (frames, n) array: no per-frame array and no stacking afterwards
            llr = out
            llr.fill(0.0)
        big = math.log((1.0 - q) / q)
        llr[key_pos] = big - (2.0 * big) * bits      # +L for 0, -L for 1
        if pad_bits:                                 # public zero padding: known, like a shortened symbol
            if not (0 <= pad_bits < bits.size) or bits[bits.size - pad_bits:].any():
                raise ValueError(f"pad_bits: {pad_bits} padding bits must be zeros at the end of the frame")
            llr[key_pos[bits.size - pad_bits:]] = _SHORTENED_LLR
        llr[short] = _known_llr(_shortened_values(code, msg.frame_id, msg.shortened))
        t = 0
        p0 = msg.punctured
        limit = reveal_limit(code, p0, "reliability" if reveals and reveals[0].positions is not None else "order")
        ext: list[np.ndarray] = []
        for r in reveals:
            if not msg.blind:
                raise ValueError("reveal: frame was sent in one-shot mode")
            if r.code_fingerprint != msg.code_fingerprint or r.frame_id != msg.frame_id:
                raise ValueError(f"reveal: for frame {r.frame_id}, expected frame {msg.frame_id} of this code")
            if r.revealed_before != t:
                raise ValueError(f"reveal: starts after {r.revealed_before} values, Bob holds {t}")
            if t + r.count > limit:
                raise ValueError(f"reveal: {t + r.count} values revealed but the frame has only {limit} "
                                 f"({p0} punctured + {limit - p0} extension bits)")
            if (r.positions is None) != (reveals[0].positions is None):
                raise ValueError("reveal: a frame's reveals mix the order and reliability modes")
            if r.positions is not None:             # reliability mode: Alice's values where Bob asked
                if r.positions.size != r.count or r.positions.max() >= code.n:
                    raise ValueError("reveal: positions do not match the values or the code length")
                llr[r.positions] = _known_llr(r.values)
                t += r.count
                continue
            if t < p0 < t + r.count:
                raise ValueError(f"reveal: values {t}..{t + r.count} cross the end of the {p0} punctured values")
            if t < p0:
                left = p0 - t
                pos = code.puncture_order[left - r.count:left]
                llr[pos] = _known_llr(r.values)
            else:
                ext.append(r.values)
            t += r.count
        if not ext:
            return code, key_pos, llr, t, msg.syndrome
        syn = np.concatenate([msg.syndrome, *ext]).astype(np.uint8)
        return extended_code(code, syn.size - code.m), key_pos, llr, t, syn

    @staticmethod
    def _result(msg: SyndromeMessage, key_pos: np.ndarray, word: np.ndarray, ok: bool, iters: int,
                revealed: int = 0) -> LdpcResult:
        shown = min(revealed, msg.punctured)     # the rest are extension syndrome bits
        return LdpcResult(corrected=word[key_pos].copy() if ok else None, converged=ok,
                          leak_bits=msg.leak_bits + revealed, iterations=iters, frame_id=msg.frame_id,
                          key_bits=msg.key_bits, punctured=msg.punctured - shown,
                          shortened=msg.shortened + shown, syndrome_bits=msg.m + revealed - shown)


class BlindDecoder:
    """Bob's side of blind reconciliation for a batch of frames (e.g. one key block), round by round.

    ``decode()`` tries every frame not yet converged (all in one ``LdpcBob.decode_many`` call per cap) and
    returns the indices still failing that have values left to reveal (punctured values, then extension syndrome
    bits); the caller asks Alice for reveals of those, passes them to ``add_reveals`` and calls ``decode()``
    again. Frames that failed with every value revealed are listed in ``failed`` (lost; reconcile_du aborts the
    block). While a frame has punctured values left an attempt runs at
    most ``round_iterations`` iterations (resuming from the previous attempt's messages) and stops early after
    ``round_stall`` iterations without progress (0: never; the messages are kept, so nothing is lost but the
    iterations that would not have converged); the attempt with nothing left to reveal gets the decoder's
    ``max_iterations`` and ``stall``.

    ``reveal="reliability"`` (default): after a failed attempt Bob asks, per frame, for Alice's values at the
    ``reveal_step`` symbols with the smallest a-posteriori |LLR| (llr + sum of the saved check messages) among
    the key symbols he does not know: ``requests[i]`` after ``decode()``, answered by
    ``BlindAliceFrame.answer``. The symbols BP is least sure of carry the most information per disclosed bit
    (Kiktenko et al. 2017). ``requests[i]`` is None for a frame with punctured symbols (``plan_blind`` plans those
    for short codes): it is revealed in order. The others have no punctured symbols: by the
    sign symmetry of BP the |LLR| are then a function of the error pattern e and public data (H e = Alice's
    syndrome + Bob's, shortened and disclosed values), so Bob's choice tells nothing about Alice's key beyond
    what e does, the same kind of information as Cascade's mismatch reports. (With secret punctured values x_P the
    |LLR| would depend on H e + H_P x_P, and the choice could unmask the syndrome bits x_P is charged to hide.)
    Each disclosed value is charged one bit. Without saved messages (no C extension, ``warm_start=False``) the
    channel |LLR| ranks the symbols. ``reveal="order"``: the next
    punctured values, then extension syndrome bits (Martinez-Mateo et al. 2012). ``leak_bits`` = sum over frames of
    m - p0 + revealed; ``iterations`` and ``attempts`` count every decoding attempt (for throughput figures).
    With the C sum-product kernels every frame's messages stay in one (frames, E) array, resumed and written back
    in place (``LdpcBob.decode_many(store=...)``), and the kernel hands back each failed frame's posteriors for the
    request: no per-round copies of the messages and no Python pass over the edges. With ``resume_posteriors``
    (default) a reliability-mode frame's next attempt starts from those posteriors, corrected for the values
    disclosed since (``add_reveals``), instead of llr + the sum of its saved messages: the same up to float rounding
    (the kernel's running posteriors hold unrounded messages, the saved ones float16), without the streaming
    kernel's pass over the edges with random posterior accesses (~18 % of the kernel's time in blind mode, perf).
    """

    def __init__(self, bob: "LdpcBob", keys: Sequence[np.ndarray], msgs: Sequence[SyndromeMessage],
                 round_iterations: int = DEFAULT_ROUND_ITERATIONS, warm_start: bool = True,
                 pads: Sequence[int] | None = None, round_stall: int = DEFAULT_ROUND_STALL,
                 reveal: str = DEFAULT_REVEAL, resume_posteriors: bool = True) -> None:
        if len(keys) != len(msgs):
            raise ValueError(f"keys: {len(keys)} frames but {len(msgs)} syndrome messages")
        if not all(m.blind for m in msgs):
            raise ValueError("msgs: blind decoding needs blind syndrome messages (reveal_step > 0)")
        if not (isinstance(round_iterations, int) and round_iterations >= 1):
            raise ValueError(f"round_iterations: must be a positive integer, got {round_iterations!r}")
        if not (isinstance(round_stall, int) and round_stall >= 0):
            raise ValueError(f"round_stall: must be a non-negative integer, got {round_stall!r}")
        self.round_stall = round_stall
        if reveal not in REVEAL_MODES:
            raise ValueError(f"reveal: must be one of {', '.join(REVEAL_MODES)}, got {reveal!r}")
        self.reveal = reveal
        # per frame: reliability reveals only for frames without punctured symbols (plan_blind gives those in
        # reliability mode), order reveals for the others
        self.modes = ["reliability" if reveal == "reliability" and not m.punctured else "order" for m in msgs]
        self.requests: dict[int, np.ndarray | None] = {}   # reliability mode: frame -> positions (None: in order)
        self._llr: dict[int, tuple[np.ndarray, int]] = {}   # frame -> (its LLRs, reveals applied to them)
        self.bob, self.keys, self.msgs = bob, list(keys), list(msgs)
        if pads is not None and len(pads) != len(msgs):
            raise ValueError(f"pads: {len(pads)} entries for {len(msgs)} frames")
        self.pads = list(pads) if pads is not None else [0] * len(msgs)
        unknown = [m.frame_id for m in self.msgs if m.code_fingerprint not in bob.codes]
        if unknown:
            raise ValueError(f"msg: frame {unknown[0]}: code fingerprint does not match any code held by Bob")
        # values each frame may have disclosed (reveal_limit)
        self.limits = [reveal_limit(bob.codes[m.code_fingerprint], m.punctured, mode)
                       for m, mode in zip(self.msgs, self.modes)]
        self.round_iterations = round_iterations
        self.reveals: list[list[RevealMessage]] = [[] for _ in msgs]
        self.revealed = [0] * len(msgs)
        self.results: list[LdpcResult | None] = [None] * len(msgs)
        self.states: list | None = [None] * len(msgs) if warm_start else None
        self.posts: list = [None] * len(msgs)    # frame -> a-posteriori LLRs of its last failed attempt (C kernels)
        # C sum-product: every frame's messages in place in one array (row i = frame i; the order-mode frames' rows
        # have room for the whole extension: every variable is in exactly one extension row, n more edges)
        self._store: np.ndarray | None = None
        if warm_start and bob.uses_store and msgs:
            width = max(bob.codes[m.code_fingerprint].n_edges + (bob.codes[m.code_fingerprint].n if mode == "order"
                                                                  else 0) for m, mode in zip(msgs, self.modes))
            self._store = np.zeros((len(msgs), width), dtype=np.float32)
        self.resume_posteriors = resume_posteriors
        self.pending = list(range(len(msgs)))
        self.failed: list[int] = []
        self.attempts = 0
        self.iterations = 0
        self.rounds = 0

    def exhausted(self, i: int) -> bool:
        return self.revealed[i] >= self.limits[i]

    def decode(self) -> list[int]:
        """One round: decode every pending frame; returns the frames that still fail."""
        self.rounds += 1
        for final in (False, True):
            idx = [i for i in self.pending if self.exhausted(i) == final]
            if not idx:
                continue
            cap = self.bob.max_iterations if final else min(self.round_iterations, self.bob.max_iterations)
            store = None if self._store is None else (
                self._store, idx, [self.results[i] is not None for i in idx],   # tried before: warm
                [self.posts[i] if self.resume_posteriors else None for i in idx])   # per frame of this call
            sub_states = [self.states[i] for i in idx] if self.states is not None and store is None else None
            sub_posts: list | None = [None] * len(idx) if self.reveal == "reliability" and not final else None
            res = self.bob.decode_many([self.keys[i] for i in idx], [self.msgs[i] for i in idx],
                                       [self.reveals[i] for i in idx], sub_states, max_iterations=cap,
                                       pads=[self.pads[i] for i in idx],
                                       stall=None if final else self.round_stall, posts=sub_posts, store=store)
            for j, (i, r) in enumerate(zip(idx, res)):
                self.results[i] = r
                self.attempts += 1
                self.iterations += r.iterations
                if sub_states is not None:
                    self.states[i] = sub_states[j]
                elif self.states is not None:      # the store's row (its first n_edges entries are the messages)
                    self.states[i] = None if r.converged else self._store[i]
                self.posts[i] = sub_posts[j] if sub_posts is not None else None
        # a frame whose attempt with every value revealed failed is lost: it leaves the batch
        self.failed += [i for i in self.pending if not self.results[i].converged and self.exhausted(i)]
        self.pending = [i for i in self.pending if not self.results[i].converged and not self.exhausted(i)]
        self.requests = {}
        if self.reveal == "reliability":
            for i in list(self.pending):
                if self.modes[i] == "order":
                    self.requests[i] = None         # the next values in order: nothing to name
                    continue
                pos = self._least_reliable(i)
                if pos is None:             # nothing unknown left: as lost as an exhausted frame
                    self.pending.remove(i)
                    self.failed.append(i)
                else:
                    self.requests[i] = pos
        self._llr = {i: v for i, v in self._llr.items() if i in self.requests}   # converged or lost: freed
        self.posts = [p if i in self.requests else None for i, p in enumerate(self.posts)]
        return list(self.pending)

    def _least_reliable(self, i: int) -> np.ndarray | None:
        """The (at most reveal_step) unknown symbols of frame i with the smallest a-posteriori |LLR|, ascending."""
        msg = self.msgs[i]
        code = self.bob.codes[msg.code_fingerprint]
        if i in self._llr:           # the LLRs of the last round plus the values revealed since
            llr, done = self._llr[i]
            for r in self.reveals[i][done:]:
                llr[r.positions] = _known_llr(r.values)
        else:
            _, _, llr, _, _ = self.bob._prepare(self.keys[i], msg, self.reveals[i], pad_bits=self.pads[i])
        self._llr[i] = (llr, len(self.reveals[i]))
        post = llr
        if self.posts[i] is not None:       # the kernel's own posteriors (= llr + sum of its messages)
            post = self.posts[i]
        elif self.states is not None and self.states[i] is not None:
            post = llr + np.bincount(code.edge_var, weights=self.states[i][:code.n_edges], minlength=code.n)
        rel = np.abs(post)
        rel[np.abs(llr) >= _SHORTENED_LLR] = np.inf       # shortened, padding, revealed: known
        count = min(msg.reveal_step, self.limits[i] - self.revealed[i], int(np.isfinite(rel).sum()))
        if count < 1:
            return None
        pos = np.argpartition(rel, count - 1)[:count] if count < rel.size else np.arange(rel.size)
        return np.sort(pos).astype(np.int64)

    def add_reveals(self, reveals: Sequence[RevealMessage]) -> None:
        """Alice's answers for the pending frames (any order; matched by frame id)."""
        by_id = {self.msgs[i].frame_id: i for i in self.pending}
        for r in reveals:
            i = by_id.get(r.frame_id)
            if i is None:
                raise ValueError(f"reveal: frame {r.frame_id} is not awaiting a reveal")
            if r.revealed_before != self.revealed[i] or self.revealed[i] + r.count > self.limits[i]:
                raise ValueError(f"reveal: frame {r.frame_id} values {r.revealed_before}+{r.count} do not follow "
                                 f"the {self.revealed[i]} of {self.limits[i]} revealed so far")
            if self.modes[i] == "reliability":
                if r.positions is None or not np.array_equal(r.positions, self.requests.pop(i, None)):
                    raise ValueError(f"reveal: frame {r.frame_id}: values are not at the positions asked for")
                if self.posts[i] is not None and i in self._llr:   # resume: llr changes from the channel value there
                    llr = self._llr[i][0]
                    self.posts[i][r.positions] += (_known_llr(r.values) - llr[r.positions]).astype(np.float32)
            elif r.positions is not None:
                raise ValueError(f"reveal: frame {r.frame_id}: positions for a frame revealed in order")
            self.reveals[i].append(r)
            self.revealed[i] += r.count

    @property
    def leak_bits(self) -> int:
        return sum(m.leak_bits + t for m, t in zip(self.msgs, self.revealed))

    @property
    def done(self) -> bool:
        """Every frame converged."""
        return not self.pending and not self.failed

# -------------------------------------------------------------------------------------------- decoder
def _phi(x: np.ndarray) -> np.ndarray:
    """Gallager's phi(x) = -ln tanh(x/2) = ln((e^x + 1)/(e^x - 1)); self-inverse on (0, inf)."""
    x = np.clip(x, _PHI_MIN, _PHI_MAX)
    return -np.log(np.tanh(0.5 * x))


def _edge_checks(code: LdpcCode) -> np.ndarray:
    return np.repeat(np.arange(code.m, dtype=np.int32), np.diff(code.check_ptr))


def decode_syndrome(code: LdpcCode, llr: np.ndarray, syndrome: np.ndarray,
                    max_iterations: int = DEFAULT_MAX_ITERATIONS,
                    use_numba: bool | None = None,
                    algorithm: str = DEFAULT_ALGORITHM) -> tuple[np.ndarray, bool, int]:
    """Sum-product (or min-sum) syndrome decoding. Returns (hard decision word, converged, iterations used).

    ``llr[v] = ln P(x_v=0)/P(x_v=1)`` given Bob's data; the decoded word satisfies H x = syndrome iff
    converged. ``iterations`` counts message-passing rounds (0 if the channel hard decision already fits).
    """
    syn = np.ascontiguousarray(syndrome, dtype=np.uint8)
    if _check_algorithm(algorithm) == "min-sum":
        w, ok, it = decode_syndromes(code, np.asarray(llr, dtype=np.float64)[None, :], syn[None, :], max_iterations,
                                     simd=False, algorithm="min-sum")
        return w[0], bool(ok[0]), int(it[0])
    if use_numba is None and _cldpc is not None:     # use_numba=False/True: the numpy/numba reference paths
        word = np.empty(code.n, dtype=np.uint8)
        it, ok = _cldpc.decode(code.check_ptr, code.edge_var, np.ascontiguousarray(llr, dtype=np.float64),
                               syn, int(max_iterations), word)
        return word, bool(ok), int(it)
    if use_numba is None:
        use_numba = os.environ.get("QKDFLOW_NO_NUMBA", "") == "" and _numba_available()
    if use_numba and _numba_available():
        kernel = _numba_kernel()
        word = np.empty(code.n, dtype=np.uint8)
        it, ok = kernel(code.check_ptr, code.edge_var, llr.astype(np.float64), syn, int(max_iterations), word)
        return word, bool(ok), int(it)
    return _decode_numpy(code, llr, syn, max_iterations)


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "min-sum" and _cldpc is None:
        raise ValueError("algorithm: min-sum needs the C extension qkdflow.distill._ldpc (not built or QKDFLOW_NO_CEXT=1)")
    return algorithm


def decode_syndromes(code: LdpcCode, llrs: np.ndarray, syndromes: np.ndarray,
                     max_iterations: int = DEFAULT_MAX_ITERATIONS,
                     simd: bool = True, state: np.ndarray | None = None,
                     warm: bool = False, algorithm: str = DEFAULT_ALGORITHM, stall: int = 0,
                     alpha: float = MINSUM_ALPHA, beta: float = MINSUM_BETA,
                     self_correct: bool = True,
                     post_out: np.ndarray | None = None,
                     state_rows: np.ndarray | None = None,
                     post_in: np.ndarray | None = None,
                     post_ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode F frames of one code: llrs (F, n), syndromes (F, m) -> (words (F, n), converged (F,), iterations (F,)).

    With the C extension: the 16-frame AVX-512 kernel if ``simd`` and the CPU has AVX-512F, else the scalar
    C kernel frame by frame; without it, ``decode_syndrome`` per frame (numba or numpy).
    ``state`` (C only): a float32 (F, E) array of check-to-variable messages. With ``warm`` decoding resumes
    from them (a-posteriori LLR = llr + sum of incoming messages, as at the end of a layered iteration); the
    final messages of every frame that did not converge are written back. Blind reconciliation's later rounds
    resume this way instead of restarting from the channel LLRs (the message reuse of Kiktenko et al.,
    "Symmetric blind information reconciliation", arXiv:1612.03673): a frame that just missed needs only a few
    more iterations once a few punctured values are revealed. Without the C extension ``state`` is ignored.
    ``algorithm="min-sum"``: the int16 min-sum kernels (32-frame AVX-512BW where available; ``alpha``, ``beta``
    (LLR units), ``self_correct``, ``stall`` as in the module docstring); ``state`` is then int16 (F, E).
    ``post_out`` (C sum-product only, else left untouched): a float32 (F, n) array; the row of every frame that
    did not converge receives its a-posteriori LLRs after the last iteration (blind mode's reliability requests).
    ``state_rows`` (C sum-product only): frame i's messages are ``state[state_rows[i], :E]`` of a float32 (R, S)
    array, S >= E, read and written in place (blind mode keeps every frame's messages in one array this way
    instead of packing an (F, E) copy per round).
    ``post_in`` / ``post_ok`` (streaming C kernels, with ``warm``): float32 (F, n) posteriors and bool (F,) flags; a
    flagged frame resumes from its posteriors (its last ``post_out``, corrected for values disclosed since) instead
    of llr + the sum of its saved messages, which costs a pass over the edges with random posterior accesses.
    """
    algorithm = _check_algorithm(algorithm)
    llrs = np.ascontiguousarray(llrs, dtype=np.float64)
    syns = np.ascontiguousarray(syndromes, dtype=np.uint8)
    if llrs.ndim != 2 or llrs.shape[1] != code.n or syns.shape != (llrs.shape[0], code.m):
        raise ValueError(f"llrs/syndromes: expected shapes (F, {code.n}) and (F, {code.m}), "
                         f"got {llrs.shape} and {syns.shape}")
    n_frames = llrs.shape[0]
    words = np.empty((n_frames, code.n), dtype=np.uint8)
    ok = np.zeros(n_frames, dtype=np.uint8)
    iters = np.zeros(n_frames, dtype=np.int64)
    if n_frames == 0:
        return words, ok.astype(bool), iters
    if algorithm == "min-sum":
        if not (0.0 < alpha < 1.0 and 0.0 <= beta <= 255.0 and int(stall) >= 0):
            raise ValueError(f"min-sum: need 0 < alpha < 1, 0 <= beta <= 255, stall >= 0; got {alpha}, {beta}, {stall}")
        args = (code.check_ptr, code.edge_var, llrs, syns, int(max_iterations), words, iters, ok, bool(simd),
                int(round(alpha * 32768)), int(round(beta * _cldpc.MINSUM_LLR_SCALE)), int(stall), bool(self_correct))
        if state is not None:
            if state.dtype != np.int16 or state.shape != (n_frames, code.n_edges) or not state.flags.c_contiguous:
                raise ValueError(f"state: expected a C-contiguous int16 array of shape ({n_frames}, {code.n_edges})")
            args += (state, bool(warm))
        _cldpc.decode_many_ms(*args)
        return words, ok.astype(bool), iters
    if _cldpc is not None:
        if post_out is not None and (post_out.dtype != np.float32 or post_out.shape != (n_frames, code.n)
                                     or not post_out.flags.c_contiguous):
            raise ValueError(f"post_out: expected a C-contiguous float32 array of shape ({n_frames}, {code.n})")
        pin = pok = None
        if post_in is not None or post_ok is not None:
            pin = np.ascontiguousarray(post_in, dtype=np.float32)
            pok = np.ascontiguousarray(post_ok, dtype=np.uint8)
            if pin.shape != (n_frames, code.n) or pok.shape != (n_frames,):
                raise ValueError(f"post_in/post_ok: expected shapes ({n_frames}, {code.n}) and ({n_frames},)")
        rows, stride = None, 0
        if state is not None and state_rows is not None:
            rows = np.ascontiguousarray(state_rows, dtype=np.int64)
            if (state.dtype != np.float32 or state.ndim != 2 or state.shape[1] < code.n_edges
                    or not state.flags.c_contiguous or rows.shape != (n_frames,)):
                raise ValueError(f"state: expected a C-contiguous float32 (R, >= {code.n_edges}) array and "
                                 f"{n_frames} state_rows")
            stride = state.shape[1]
        elif state is not None:
            if state.dtype != np.float32 or state.shape != (n_frames, code.n_edges) or not state.flags.c_contiguous:
                raise ValueError(f"state: expected a C-contiguous float32 array of shape ({n_frames}, {code.n_edges})")
        _cldpc.decode_many(code.check_ptr, code.edge_var, llrs, syns, int(max_iterations), words, iters, ok,
                           bool(simd), state, bool(warm and state is not None), 0, int(stall), post_out, rows, stride,
                           pin, pok)
        return words, ok.astype(bool), iters
    for i in range(n_frames):
        words[i], ok[i], iters[i] = decode_syndrome(code, llrs[i], syns[i], max_iterations)
    return words, ok.astype(bool), iters


_NUMBA_KERNEL = None
_NUMBA_OK: bool | None = None

_cldpc = None
if os.environ.get("QKDFLOW_NO_CEXT", "0") in ("", "0"):
    try:
        from qkdflow.distill import _ldpc as _cldpc
    except ImportError:  # extension not built (no compiler): numba / numpy paths
        _cldpc = None
DECODER = "c" if _cldpc is not None else (
    "numba" if os.environ.get("QKDFLOW_NO_NUMBA", "") == "" and importlib.util.find_spec("numba") else "numpy")


def _numba_available() -> bool:
    global _NUMBA_OK
    if _NUMBA_OK is None:
        try:
            _numba_kernel()
            _NUMBA_OK = True
        except Exception:  # noqa: BLE001 - numba missing or broken: use the numpy path
            _NUMBA_OK = False
    return _NUMBA_OK


_PHI_FRAC_BITS = 23 - 8          # float32 mantissa bits below the 8 used as table index


def _phi_table() -> tuple[np.ndarray, int, float, float]:
    """phi at every float32 whose low 15 mantissa bits are zero, on [2^-20, 64] (+1 guard entry)."""
    x_min, x_max = 2.0 ** -20, 64.0
    lo = int(np.array(x_min, np.float32).view(np.int32))
    hi = int(np.array(x_max, np.float32).view(np.int32))
    bits = np.arange(lo, hi + (2 << _PHI_FRAC_BITS), 1 << _PHI_FRAC_BITS, dtype=np.int64)
    x = bits.astype(np.int32).view(np.float32).astype(np.float64)
    with np.errstate(divide="ignore"):
        tab = -np.log(np.tanh(0.5 * x))
    return tab, lo, x_min, x_max


def _numba_kernel():
    """Layered (check-serial) sum-product kernel, compiled on first use; optional (numba not required).

    Same phi-form sum-product check rule as ``_decode_numpy``; phi is read from a table indexed by the
    float32 bit pattern of its argument (exponent + top mantissa bits, i.e. a log-spaced grid with
    2^-8 relative spacing on [2^-20, 64]) and linearly interpolated: absolute error < 3e-6, relative
    error < 2e-6 for x <= 1 (rising to 5e-4 at x = 20, where phi < 1e-8; checked in the tests). Arguments are clamped to that range, which caps a check message at
    phi(2^-20) = 14.6 (the numpy path caps at 28.3); sums stay in float64. Checks are processed
    one after another with the a-posteriori LLRs updated immediately (layered / "shuffled" BP, Zhang &
    Fossorier, IEEE Comm. Lett. 9(6) 2005 for the variable-serial dual; Hocevar, SiPS 2004). This schedule
    converges in about half the iterations of flooding; a converged frame satisfies the same m checks.
    """
    global _NUMBA_KERNEL
    if _NUMBA_KERNEL is not None:
        return _NUMBA_KERNEL
    import numba  # noqa: PLC0415

    tab, base, x_min, x_max = _phi_table()

    @numba.njit(cache=False, nogil=True, inline="always")
    def phi_t(bits):  # pragma: no cover - compiled
        u = bits - base
        i = u >> _PHI_FRAC_BITS
        fr = (u & ((1 << _PHI_FRAC_BITS) - 1)) * (1.0 / (1 << _PHI_FRAC_BITS))
        return tab[i] + fr * (tab[i + 1] - tab[i])

    @numba.njit(cache=False, nogil=True)
    def kernel(check_ptr, edge_var, llr, syn, max_iter, word):  # pragma: no cover - compiled
        m = check_ptr.size - 1
        n_edges = edge_var.size
        post = llr.copy()
        c2v = np.zeros(n_edges, dtype=np.float64)
        dmax = 0
        for c in range(m):
            dmax = max(dmax, check_ptr[c + 1] - check_ptr[c])
        tmp = np.empty(dmax, dtype=np.float64)
        phs = np.empty(dmax, dtype=np.float64)
        xf = np.empty(dmax, dtype=np.float32)
        xi = xf.view(np.int32)
        it = 0
        while True:
            ok = True
            for c in range(m):
                par = syn[c]
                for e in range(check_ptr[c], check_ptr[c + 1]):
                    if post[edge_var[e]] < 0.0:
                        par ^= 1
                if par != 0:
                    ok = False
                    break
            if ok or it >= max_iter:
                break
            it += 1
            for c in range(m):
                a = check_ptr[c]
                d = check_ptr[c + 1] - a
                par = syn[c]
                for k in range(d):
                    t = post[edge_var[a + k]] - c2v[a + k]
                    tmp[k] = t
                    if t < 0.0:
                        par ^= 1
                    x = abs(t)
                    xf[k] = x_min if x < x_min else (x_max if x > x_max else x)
                total = 0.0
                for k in range(d):
                    ph = phi_t(xi[k])
                    phs[k] = ph
                    total += ph
                for k in range(d):
                    y = total - phs[k]
                    xf[k] = x_min if y < x_min else (x_max if y > x_max else y)
                for k in range(d):
                    val = phi_t(xi[k])
                    neg = par ^ (1 if tmp[k] < 0.0 else 0)
                    msg = -val if neg else val
                    c2v[a + k] = msg
                    post[edge_var[a + k]] = tmp[k] + msg
        for v in range(post.size):
            word[v] = 1 if post[v] < 0.0 else 0
        return it, ok

    _NUMBA_KERNEL = kernel
    return kernel


def _decode_numpy(code: LdpcCode, llr: np.ndarray, syn: np.ndarray,
                  max_iterations: int) -> tuple[np.ndarray, bool, int]:
    ptr = code.check_ptr
    starts = ptr[:-1]
    ev = code.edge_var
    ce = _edge_checks(code)
    n = code.n
    syn_i = syn.astype(np.int64)
    c2v = np.zeros(ev.size, dtype=np.float64)
    post = llr.astype(np.float64, copy=True)
    it = 0
    while True:
        hard = (post < 0).astype(np.uint8)
        par = np.add.reduceat(hard[ev], starts, dtype=np.int64) & 1
        if np.array_equal(par, syn_i):
            return hard, True, it
        if it >= max_iterations:
            return hard, False, it
        it += 1
        v2c = post[ev] - c2v
        neg = v2c < 0
        a = _phi(np.abs(v2c))
        total = np.add.reduceat(a, starts)
        sign_par = (np.add.reduceat(neg, starts, dtype=np.int64) + syn_i) & 1
        flip = sign_par[ce].astype(bool) ^ neg
        c2v = _phi(total[ce] - a)
        np.negative(c2v, out=c2v, where=flip)
        post = llr + np.bincount(ev, weights=c2v, minlength=n)


# ------------------------------------------------------------------------------------------ convenience
@dataclass
class ReconcileResult:
    """In-process reconciliation of a long key split into frames."""

    corrected: np.ndarray              # Bob's corrected bits of all converged frames, concatenated
    frames: list[LdpcResult] = field(default_factory=list)
    frame_bits: int = 0
    leak_bits: int = 0                 # sum over all frames sent (failed frames leaked too)
    all_converged: bool = False
    unreconciled_tail_bits: int = 0    # key bits after the last full frame (not reconciled)


def reconcile(alice_key: np.ndarray, bob_key: np.ndarray, qber_estimate: float, n: int, seed: int,
              efficiency: float = DEFAULT_EFFICIENCY, delta: float = DEFAULT_DELTA,
              max_iterations: int = DEFAULT_MAX_ITERATIONS) -> ReconcileResult:
    """Reconcile ``bob_key`` to ``alice_key`` frame by frame through serialised messages.

    Frames of n - round(delta n) bits; a tail shorter than a frame is not reconciled and is reported in
    ``unreconciled_tail_bits``. Frames that fail to converge are reported (``converged=False``) and
    contribute no bits to ``corrected``.
    """
    a = _as_bits(alice_key, "alice_key")
    b = _as_bits(bob_key, "bob_key")
    if a.size != b.size:
        raise ValueError(f"bob_key: length {b.size} differs from alice_key length {a.size}")
    codes = load_or_build_codes(n, seed, family=DEFAULT_CODE_FAMILY)
    alice = LdpcAlice(codes, seed=seed, efficiency=efficiency, delta=delta)
    bob = LdpcBob(codes, seed=seed, max_iterations=max_iterations)
    fb = alice.frame_bits
    n_frames = a.size // fb
    out: list[np.ndarray] = []
    res = ReconcileResult(corrected=np.zeros(0, np.uint8), frame_bits=fb,
                          unreconciled_tail_bits=a.size - n_frames * fb)
    msgs = [SyndromeMessage.from_bytes(alice.encode(a[i * fb:(i + 1) * fb], qber_estimate, frame_id=i).to_bytes())
            for i in range(n_frames)]
    for r in bob.decode_many([b[i * fb:(i + 1) * fb] for i in range(n_frames)], msgs):
        res.frames.append(r)
        res.leak_bits += r.leak_bits
        if r.converged:
            out.append(r.corrected)
    res.corrected = np.concatenate(out) if out else np.zeros(0, np.uint8)
    res.all_converged = all(r.converged for r in res.frames)
    return res


@dataclass
class BlindReconcileResult(ReconcileResult):
    """``reconcile_blind``: ReconcileResult plus the blind protocol's round and decoder counts."""

    rounds: int = 0                    # decoding rounds (= messages Alice -> Bob: syndromes + reveal rounds)
    attempts: int = 0                  # frame decoding attempts, all rounds
    iterations: int = 0                # BP iterations, all attempts
    revealed_bits: int = 0


def reconcile_blind(alice_key: np.ndarray, bob_key: np.ndarray, qber_estimate: float, n: int, seed: int,
                    delta: float = DEFAULT_DELTA, max_iterations: int = DEFAULT_MAX_ITERATIONS,
                    blind_start: float = DEFAULT_BLIND_START, blind_step: float = DEFAULT_BLIND_STEP,
                    blind_max: float = DEFAULT_BLIND_MAX, round_iterations: int = DEFAULT_ROUND_ITERATIONS,
                    codes: Sequence[LdpcCode] | None = None, warm_start: bool = True,
                    reveal: str = DEFAULT_REVEAL) -> BlindReconcileResult:
    """Blind reconciliation (Martinez-Mateo et al. 2012) of a long key, frames batched, every message
    serialised: syndromes, then per round the reveals of the frames that failed (at the positions Bob asks for
    with ``reveal="reliability"``, see ``BlindDecoder``), until all converge or a failing frame has nothing
    left to reveal. ``leak_bits`` = sum of m - p0 + revealed over all frames."""
    a = _as_bits(alice_key, "alice_key")
    b = _as_bits(bob_key, "bob_key")
    if a.size != b.size:
        raise ValueError(f"bob_key: length {b.size} differs from alice_key length {a.size}")
    codes = load_or_build_codes(n, seed, family=DEFAULT_CODE_FAMILY) if codes is None else list(codes)
    alice = LdpcAlice(codes, seed=seed, delta=delta, blind_start=blind_start, blind_step=blind_step,
                      blind_max=blind_max, blind_reveal=reveal)
    bob = LdpcBob(codes, seed=seed, max_iterations=max_iterations)
    fb = alice.frame_bits
    n_frames = a.size // fb
    res = BlindReconcileResult(corrected=np.zeros(0, np.uint8), frame_bits=fb,
                               unreconciled_tail_bits=a.size - n_frames * fb)
    sent = [alice.encode_blind(a[i * fb:(i + 1) * fb], qber_estimate, frame_id=i) for i in range(n_frames)]
    a_frames = [f for _, f in sent]
    msgs = [SyndromeMessage.from_bytes(m.to_bytes()) for m, _ in sent]
    dec = BlindDecoder(bob, [b[i * fb:(i + 1) * fb] for i in range(n_frames)], msgs, round_iterations,
                       warm_start=warm_start, reveal=reveal)
    failing = dec.decode()
    while failing:
        asked = [dec.requests.get(i) for i in failing]      # Bob's positions travel as bytes too
        got = [a_frames[i].answer(None if a is None else decode_positions(encode_positions(a)))
               for i, a in zip(failing, asked)]
        dec.add_reveals([RevealMessage.from_bytes(r.to_bytes()) for r in got])
        failing = dec.decode()
    res.frames = list(dec.results)              # type: ignore[arg-type]
    res.leak_bits = dec.leak_bits
    assert res.leak_bits == sum(f.leak_bits for f in a_frames)   # both ends count the same disclosure
    res.all_converged = dec.done
    res.corrected = np.concatenate([r.corrected for r in dec.results if r.converged]) if any(
        r.converged for r in dec.results) else np.zeros(0, np.uint8)
    res.rounds, res.attempts, res.iterations = dec.rounds, dec.attempts, dec.iterations
    res.revealed_bits = sum(dec.revealed)
    return res
