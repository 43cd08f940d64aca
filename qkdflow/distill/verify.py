"""Error verification after error correction: a polynomial universal hash over GF(p), p = 2^61 - 1.

Protocol (Lim et al., PRA 89, 022307 (2014), Sec. II "error verification"; Fung, Ma, Chau, PRA 81, 012318
(2010)): after error correction one party draws a fresh random hash key, both hash their corrected key and
compare tags over the authenticated channel; on mismatch the block is discarded.  The protocol is then
``eps_cor``-correct with ``eps_cor`` = the collision probability of the hash family, and the published tag
bits are counted in the leak ``lambda_EC`` of Lim Eq. (1).

Hash (polynomial evaluation / "PolyP", Carter & Wegman 1979; Bernstein, "The Poly1305-AES message
authentication code" (2005) for the root-counting bound).  The key bits ``b`` (length ``L``) are packed
big-endian into ``l = ceil(L / 56)`` words ``w_0..w_{l-1}`` of 56 bits (zero-padded); a final word
``w_l = L`` encodes the length.  For a key ``r`` uniform in ``Z_p``:

    h_r(b) = sum_{i=0}^{l} w_i r^(l + 1 - i)   mod p.

Two different bit strings give coefficient vectors that differ (the last word separates different
lengths, equal lengths give equal ``l``), so ``h_r(b) - h_r(b')`` is a non-zero polynomial in ``r`` of
degree <= ``l + 1`` with at most ``l + 1`` roots:

    Pr_r[h_r(b) = h_r(b')] <= (l + 1) / p,      and more generally   Pr_r[h_r(b) - h_r(b') = d] <= (l + 1)/p

(the latter, epsilon-almost-Delta-universality, is what Wegman-Carter authentication in ``auth.py`` uses).
With ``t`` independent keys the tag is ``t`` field elements and

    eps_cor <= ((l + 1) / p)^t,     tag length = 61 t bits  (= leak published).

``tag_evaluations(L, eps_cor)`` returns the smallest such ``t``.  Example: ``L = 10^6``, ``eps_cor = 1e-12``:
``l + 1 = 17859``, one evaluation gives 7.7e-15, so 61 bits are published.

Arithmetic is vectorised in numpy with exact 61-bit modular multiplication (32-bit limb split, no
floating point).
"""
from __future__ import annotations

import hmac
import math
import os
import secrets
from dataclasses import dataclass

import numpy as np

__all__ = [
    "P61",
    "WORD_BITS",
    "AuthenticationError",
    "collision_bound",
    "tag_evaluations",
    "tag_length_bits",
    "draw_hash_key",
    "poly_hash",
    "poly_hash_words",
    "bits_to_words",
    "bytes_to_words",
    "VerificationHash",
    "keys_match",
]

#: The Mersenne prime 2^61 - 1.
P61: int = (1 << 61) - 1
#: Message bits per field word (56 < 61, so every word is a field element).
WORD_BITS: int = 56
#: Bits a tag component occupies when published.
FIELD_BITS: int = 61

_P = np.uint64(P61)
_M32 = np.uint64(0xFFFFFFFF)
_M29 = np.uint64((1 << 29) - 1)


class AuthenticationError(Exception):
    """A tag did not verify (tampered, replayed, reordered or forged message)."""


def _words_for_bits(length_bits: int) -> int:
    return -(-length_bits // WORD_BITS)


def collision_bound(length_bits: int, evaluations: int = 1) -> float:
    """``((l + 1)/p)^t`` with ``l = ceil(length_bits / 56)``: the exact collision / Delta bound above."""
    if length_bits < 0:
        raise ValueError(f"length_bits must be >= 0, got {length_bits}")
    if evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    return ((_words_for_bits(length_bits) + 1) / P61) ** evaluations


def tag_evaluations(length_bits: int, eps_cor: float = 1e-12) -> int:
    """Smallest number ``t`` of independent evaluations with ``((l+1)/p)^t <= eps_cor``."""
    if not (0.0 < eps_cor < 1.0):
        raise ValueError(f"eps_cor must be in (0, 1), got {eps_cor}")
    eps1 = collision_bound(length_bits, 1)
    if eps1 >= 1.0:
        raise ValueError(f"length_bits = {length_bits} too long for the 61-bit polynomial hash")
    return max(1, math.ceil(math.log(eps_cor) / math.log(eps1) - 1e-12))


def tag_length_bits(length_bits: int, eps_cor: float = 1e-12) -> int:
    """Bits published (and counted as leak) to verify a ``length_bits`` key at ``eps_cor``."""
    return FIELD_BITS * tag_evaluations(length_bits, eps_cor)


def draw_hash_key(evaluations: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``evaluations`` keys uniform in ``Z_p`` (uint64).  Default source: the OS CSPRNG (``secrets``)."""
    if evaluations < 1:
        raise ValueError(f"evaluations must be >= 1, got {evaluations}")
    if rng is None:
        return np.array([secrets.randbelow(P61) for _ in range(evaluations)], dtype=np.uint64)
    return rng.integers(0, P61, size=evaluations, dtype=np.uint64)


# --- exact arithmetic mod 2^61 - 1 on uint64 arrays -------------------------------------------------


_poly61 = None
if os.environ.get("QKDFLOW_NO_CEXT", "0") in ("", "0"):
    try:  # optional C extension (setup.py): Horner's rule in 128-bit integers, exact; absent without a compiler
        from qkdflow.distill import _poly61
    except ImportError:  # pragma: no cover - depends on the build
        pass


def _reduce(v: np.ndarray) -> np.ndarray:
    """``v mod p`` for ``v < 2^64`` (two folds + one conditional subtraction)."""
    v = (v & _P) + (v >> np.uint64(61))
    v = (v & _P) + (v >> np.uint64(61))
    return np.where(v >= _P, v - _P, v)


def _mulmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a * b mod p`` for ``a, b < p`` (uint64 arrays, broadcasting), exact.

    ``a = a1 2^32 + a0`` (``a1 < 2^29``).  Using ``2^61 = 1``: ``2^64 = 8`` and for the middle term
    ``mid 2^32 = (mid >> 29) 2^61 + (mid & (2^29-1)) 2^32 = (mid >> 29) + (mid & (2^29-1)) 2^32``.
    Every partial sum stays below 2^63.
    """
    a0 = a & _M32
    a1 = a >> np.uint64(32)
    b0 = b & _M32
    b1 = b >> np.uint64(32)
    hh = a1 * b1  # < 2^58
    mid = a1 * b0 + a0 * b1  # < 2^62
    ll = a0 * b0  # < 2^64
    s = (hh << np.uint64(3)) + (mid >> np.uint64(29)) + ((mid & _M29) << np.uint64(32))
    s += (ll & _P) + (ll >> np.uint64(61))
    return _reduce(s)


def _powers(r: np.ndarray, count: int) -> np.ndarray:
    """Array ``[..., j] = r^(j+1) mod p`` for ``j < count``, built by doubling (log2(count) passes)."""
    r = r.reshape(-1, 1)
    out = r.copy()
    step = r.copy()  # r^(len(out))
    while out.shape[1] < count:
        take = min(out.shape[1], count - out.shape[1])
        out = np.concatenate([out, _mulmod(out[:, :take], step)], axis=1)
        step = _mulmod(step, step) if out.shape[1] < count else step
    return out[:, :count]


def _sum_mod(v: np.ndarray) -> list[int]:
    """Row sums mod p of ``v`` (values < p, rows shorter than 2^32) without uint64 overflow."""
    hi = (v >> np.uint64(32)).sum(axis=-1, dtype=np.uint64)
    lo = (v & _M32).sum(axis=-1, dtype=np.uint64)
    return [((int(h) << 32) + int(l)) % P61 for h, l in zip(np.atleast_1d(hi), np.atleast_1d(lo))]


def bits_to_words(bits: np.ndarray) -> np.ndarray:
    """Pack a 0/1 uint8 (or bool) array into 56-bit big-endian words + a final length word."""
    arr = np.asarray(bits)
    if arr.ndim != 1:
        raise ValueError(f"bits must be 1-D, got shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.bool_):
        raise ValueError(f"bits must have dtype uint8 or bool, got {arr.dtype}")
    if arr.dtype == np.uint8 and arr.size and int(arr.max()) > 1:
        raise ValueError("bits must contain only 0/1 values")
    return _bytes_to_words(np.packbits(arr), arr.size)


def bytes_to_words(data: bytes) -> np.ndarray:
    """Pack bytes into 56-bit big-endian words + a final word holding the bit length."""
    return _bytes_to_words(np.frombuffer(data, dtype=np.uint8), 8 * len(data))


def _bytes_to_words(packed: np.ndarray, length_bits: int) -> np.ndarray:
    n_words = _words_for_bits(length_bits)
    buf = np.zeros(n_words * 7, dtype=np.uint8)
    buf[: packed.size] = packed
    b = buf.reshape(n_words, 7).astype(np.uint64)
    words = np.empty(n_words + 1, dtype=np.uint64)
    w = b[:, 0]
    for j in range(1, 7):  # 7 byte columns, not per item
        w = (w << np.uint64(8)) | b[:, j]
    words[:n_words] = w
    words[n_words] = np.uint64(length_bits)
    return words


def poly_hash_words(words: np.ndarray, hash_key: np.ndarray) -> list[int]:
    """``sum_i w_i r^(len - i) mod p`` for each key ``r`` in ``hash_key`` (coefficients in ``words``)."""
    keys = np.asarray(hash_key, dtype=np.uint64).reshape(-1)
    if keys.size == 0 or bool(np.any(keys >= _P)):
        raise ValueError("hash_key must be a non-empty array of integers in [0, 2^61 - 1)")
    if _poly61 is not None:
        w = np.ascontiguousarray(words, dtype=np.uint64)
        return [_poly61.horner(0, int(r), w) for r in keys]
    pw = _powers(keys, words.size)[:, ::-1]  # r^len .. r^1
    return _sum_mod(_mulmod(words[None, :], pw))


def poly_hash(bits: np.ndarray, hash_key: np.ndarray) -> list[int]:
    """Polynomial hash of a bit string under each key of ``hash_key``; returns ``t`` ints in ``[0, p)``."""
    return poly_hash_words(bits_to_words(bits), hash_key)


def _encode_tag(values: list[int]) -> bytes:
    return b"".join(int(v).to_bytes(8, "big") for v in values)


@dataclass(frozen=True)
class VerificationHash:
    """One verification round: a fresh key drawn by one end and sent (authenticated) to the other.

    ``leak_bits`` = bits published by ``tag`` (61 per evaluation); add them to lambda_EC.
    ``eps_cor`` = the proven collision bound for this key length.
    """

    hash_key: np.ndarray
    length_bits: int

    @classmethod
    def new(
        cls, length_bits: int, eps_cor: float = 1e-12, rng: np.random.Generator | None = None
    ) -> "VerificationHash":
        t = tag_evaluations(length_bits, eps_cor)
        return cls(draw_hash_key(t, rng), int(length_bits))

    @property
    def evaluations(self) -> int:
        return int(np.asarray(self.hash_key).size)

    @property
    def leak_bits(self) -> int:
        return FIELD_BITS * self.evaluations

    @property
    def eps_cor(self) -> float:
        return collision_bound(self.length_bits, self.evaluations)

    def tag(self, bits: np.ndarray) -> bytes:
        """Tag of the corrected key (8 bytes per evaluation, each holding a 61-bit field element)."""
        if np.asarray(bits).size != self.length_bits:
            raise ValueError(f"key length {np.asarray(bits).size} != verified length {self.length_bits}")
        return _encode_tag(poly_hash(bits, self.hash_key))

    def check(self, bits: np.ndarray, peer_tag: bytes) -> bool:
        """True iff our tag equals the peer's (constant-time comparison)."""
        return keys_match(self.tag(bits), peer_tag)


def keys_match(tag_a: bytes, tag_b: bytes) -> bool:
    """Constant-time tag comparison."""
    return hmac.compare_digest(tag_a, tag_b)
