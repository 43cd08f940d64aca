"""Counter-based random numbers: any slot's draw can be recomputed on demand, vectorised over slots.

Construction: a keyed splitmix64 ("SplitMix", Steele, Lea, Flood, OOPSLA 2014; finaliser of Stafford's Mix13 as
in Java's SplittableRandom). For a (seed, stream) pair a 64-bit key is derived by mixing; a counter c (the pulse-slot
index) gives

    u64(seed, stream, c) = mix64(mix64(c * GOLDEN + key1) ^ key2)

i.e. two full avalanche rounds, so neighbouring slots and neighbouring streams give unrelated words (a single
splitmix round is itself a good generator; the second, differently-keyed round makes different streams unrelated
even when their Weyl sequences would overlap). Not cryptographic: Alice's choices in a real system come from a
QRNG; this is a simulation generator whose point is that the AAU's sifting block can recompute Alice's choices
for exactly the slots Bob detected, with O(1) state per frame.

Preparation descriptor (JSON-able dict, travels in frame meta)::

    {"kind": "prng", "seed": int, "probabilities": [p_signal, p_decoy, p_vacuum], "basis_bias": float}
    {"kind": "file", "path": str}        # a recorded .npy of PREP_DTYPE (dense, slot i = row i)

Streams of a descriptor's seed: 0 intensity class, 1 basis, 2 bit, 3 per-pulse state-preparation flip.

Two implementations, bit-identical (tests/test_prng.py): numpy (always; the reference) and the optional C
extension ``qkdflow._prng`` (built by setup.py; ``QKDFLOW_NO_CEXT=1`` disables it), one pass over the counters
instead of ~20 whole-array numpy temporaries per stream: ``prep_choices`` for 2e6 slots 0.28 s -> 0.02 s
(the AAU's sifting recomputes Alice's choices at every click, ~2e6 per 1e6-bit key block). ``BACKEND`` names the
one in use.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Mapping

import numpy as np

# module level, not in _recorded: block threads call _recorded concurrently, and CPython 3.11.7 can fail compiling
# a module in two threads at once ("AST constructor recursion depth mismatch", seen in a fresh venv)
from .streams import PREP_DTYPE

__all__ = ["GOLDEN", "mix64", "stream_keys", "random_u64", "uniform", "bernoulli", "prep_choices",
           "prep_descriptor", "STREAM_INTENSITY", "STREAM_BASIS", "STREAM_BIT", "STREAM_PREP_FLIP"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1
STREAM_INTENSITY, STREAM_BASIS, STREAM_BIT, STREAM_PREP_FLIP = 0, 1, 2, 3

_cprng = None
if os.environ.get("QKDFLOW_NO_CEXT", "0") in ("", "0"):
    try:  # optional C extension (setup.py); absent where it could not be compiled
        from qkdflow import _prng as _cprng
    except ImportError:  # pragma: no cover - depends on the build
        pass
BACKEND = "c" if _cprng is not None else "numpy"


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic, a new array)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x ^ (x >> np.uint64(30))
        z = z * _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _mix_int(x: int) -> int:
    return int(mix64(np.array([x & _MASK], dtype=np.uint64))[0])


@functools.lru_cache(maxsize=4096)
def stream_keys(seed: int, stream: int) -> tuple[int, int]:
    """Two 64-bit keys for (seed, stream); seeds may be any Python int (reduced mod 2**64)."""
    k1 = _mix_int(_mix_int(seed) + (stream + 1) * 0xD1B54A32D192ED03)
    k2 = _mix_int(k1 ^ 0x2545F4914F6CDD1D)
    return k1, k2


def random_u64(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """64 random bits per counter value (counter: non-negative integer array, e.g. slot indices)."""
    k1, k2 = stream_keys(int(seed), int(stream))
    c = np.asarray(counter).astype(np.uint64, copy=False)
    if _cprng is not None and c.ndim:
        c = np.ascontiguousarray(c)
        out = np.empty(c.shape, dtype=np.uint64)
        _cprng.random_u64(k1, k2, c, out)
        return out
    with np.errstate(over="ignore"):
        return mix64(mix64(c * GOLDEN + np.uint64(k1)) ^ np.uint64(k2))


def uniform(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """Uniform doubles in [0, 1) (top 53 bits)."""
    return (random_u64(seed, stream, counter) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def bernoulli(seed: int, stream: int, counter: np.ndarray, p: float) -> np.ndarray:
    """Boolean array, True with probability p (exact to 2**-53)."""
    return uniform(seed, stream, counter) < p


def prep_descriptor(seed: int, probabilities: tuple[float, float, float] | list[float], basis_bias: float) -> dict:
    """The JSON-able descriptor of a counter-based preparation (see module docstring)."""
    return {"kind": "prng", "seed": int(seed), "probabilities": [float(p) for p in probabilities],
            "basis_bias": float(basis_bias)}


_NPY_LOCK = threading.Lock()


def load_npy(path: str) -> np.ndarray:
    """``np.load(path, mmap_mode="r")`` under a process-wide lock. numpy parses a .npy header with
    ``ast.literal_eval``, and CPython 3.11.7's AST constructor is not thread-safe: two blocks starting in their
    threads and reading the same record failed with "AST constructor recursion depth mismatch"."""
    with _NPY_LOCK:
        return np.load(path, mmap_mode="r")


@functools.lru_cache(maxsize=16)
def _recorded(path: str) -> np.ndarray:
    arr = load_npy(path)
    if arr.dtype != PREP_DTYPE or arr.ndim != 1:
        raise ValueError(f"record_file: {path} must hold a 1-D array of PREP_DTYPE, got {arr.dtype} {arr.shape}")
    return arr


def prep_choices(descriptor: Mapping, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alice's (intensity class, basis, bit) for the given slot indices, each uint8 (conventions: streams.py).

    Intensity: class k where the uniform u falls in [P_{k-1}, P_k) of the cumulative probabilities; basis Z (0)
    when u < basis_bias, else X (1); bit = top bit of a third independent word.
    """
    slots = np.asarray(slots, dtype=np.int64)
    if descriptor.get("kind") == "file":
        rec = _recorded(str(descriptor["path"]))
        if slots.size and (slots.min() < 0 or slots.max() >= rec.shape[0]):
            raise ValueError(f"record_file: slot {int(slots.max())} beyond the {rec.shape[0]} recorded slots")
        r = rec[slots]
        return (np.asarray(r["intensity"], dtype=np.uint8), np.asarray(r["basis"], dtype=np.uint8),
                np.asarray(r["bit"], dtype=np.uint8))
    seed = int(descriptor["seed"])
    p = np.asarray(descriptor["probabilities"], dtype=float)
    edges = np.cumsum(p)[:-1]
    if _cprng is not None and edges.size == 2 and edges[0] <= edges[1]:    # one fused pass, same bits
        out = tuple(np.empty(slots.shape, dtype=np.uint8) for _ in range(3))
        keys = stream_keys(seed, STREAM_INTENSITY) + stream_keys(seed, STREAM_BASIS) + stream_keys(seed, STREAM_BIT)
        _cprng.prep_choices(keys, float(edges[0]), float(edges[1]), float(descriptor["basis_bias"]),
                            np.ascontiguousarray(slots), *out)
        return out
    u_int = uniform(seed, STREAM_INTENSITY, slots)
    intensity = np.searchsorted(edges, u_int, side="right").astype(np.uint8)
    basis = (uniform(seed, STREAM_BASIS, slots) >= float(descriptor["basis_bias"])).astype(np.uint8)
    bit = (random_u64(seed, STREAM_BIT, slots) >> np.uint64(63)).astype(np.uint8)
    return intensity, basis, bit


def frame_choices(frame, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Alice's (intensity, basis, bit) for ``slots`` of a preparation frame: its dense rows when it carries a
    recorded or dense record, else recomputed from the descriptor in its meta (cost ∝ len(slots))."""
    if frame.data.size:
        rows = frame.data[np.asarray(slots) - frame.start]
        return rows["intensity"], rows["basis"], rows["bit"]
    return prep_choices(frame.meta["prep"], slots)
