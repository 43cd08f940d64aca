"""Wegman-Carter authentication of every classical post-processing message.

Scheme (Wegman & Carter, JCSS 22, 265 (1981); "hash then one-time pad" as in the AIT QKD R10 ``qkd-auth``
module; see also Bibak et al., EPJ QT 9, 8 (2022)).  For each direction (alice->bob, bob->alice) the two ends
share a hash key ``k = (k_1..k_t)`` (uniform in ``Z_p``, ``p = 2^61 - 1``, reused across messages) and a stream
of one-time-pad values.  The tag of message ``M`` with sequence number ``seq`` is

    tag_j = ( h_{k_j}(seq || M) + r_j )  mod p,     j = 1..t,

with ``h`` the polynomial hash of ``verify.py`` over the word encoding ``[seq, 56-bit words of M, bit length
of M]`` and ``r_j`` fresh uniform pad values in ``Z_p`` used for exactly one tag.  ``h`` is
``eps``-almost-Delta-universal with ``eps = (l + 2)/p`` for a message of ``l = ceil(8 * len(M) / 56)`` words
(the difference of two encodings minus any constant is a non-zero polynomial in ``k`` of degree <= l + 2),
so adding an independent uniform pad makes the family ``eps``-almost-strongly-universal: an adversary who
has seen any number of (message, tag) pairs forges a new (or altered, replayed-under-a-new-seq) message with
probability

    eps_tag <= ((ceil(8 * len(M) / 56) + 2) / p)^t          per attempt (``Authenticator.eps_per_tag``).

E.g. a 1 kB message with ``t = 1``: 148/2^61 = 6.4e-17.  Failed verifications do not advance the stream
(the pad stays reserved for that seq), so ``N`` forgery attempts succeed with probability <= ``N * eps_tag``.

Key consumption: ``61 t`` bits per tag from the direction's pool (a 61-bit draw equal to ``2^61 - 1`` is
rejected and redrawn so pads are exactly uniform in ``Z_p``; probability 2^-61 per draw), plus ``61 t`` bits
per direction for each hash key.  Caveat (Abidin & Larsson, arXiv:1109.5168): QKD output used as pad is only
eps_sec-close to uniform, so security of a long-lived hash key degrades with rounds; ``rekey_every`` draws a
new hash key every that many tags per direction (at the same seq on both ends).

Replay / reordering: ``seq`` is inside the authenticated data, and each end accepts exactly the next
sequence number per direction, so a replayed, dropped-then-resent or reordered message fails.
Synchronisation: each direction's pool is a FIFO bit stream; ``KeyPool.add`` splits new key material half /
half between the directions, so both ends stay in step as long as they add the same chunks in the same
order, regardless of when, relative to tagging, they add them.
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

import numpy as np

from . import verify as _verify
from .verify import (
    FIELD_BITS,
    P61,
    AuthenticationError,
    _mulmod,
    _powers,
    _sum_mod,
    bytes_to_words,
)

__all__ = [
    "AuthenticationError",
    "KeyPoolError",
    "KeyPoolExhausted",
    "KeyPool",
    "Authenticator",
    "ALICE_TO_BOB",
    "BOB_TO_ALICE",
]

ALICE_TO_BOB = "alice->bob"
BOB_TO_ALICE = "bob->alice"
_DIRECTIONS = (ALICE_TO_BOB, BOB_TO_ALICE)
_ROLES = {"alice": "alice", "aau": "alice", "bob": "bob", "du": "bob"}
_MAX_SEQ = (1 << 56) - 1


class KeyPoolError(ValueError):
    """The authentication key pool cannot be set up (missing or too short pre-shared key file)."""


class KeyPoolExhausted(RuntimeError):
    """The pool has fewer bits than a tag needs; replenish it from new QKD key (``KeyPool.add``)."""


def _to_bits(key: np.ndarray | bytes | bytearray) -> np.ndarray:
    if isinstance(key, (bytes, bytearray, memoryview)):
        return np.unpackbits(np.frombuffer(bytes(key), dtype=np.uint8))
    arr = np.asarray(key)
    if arr.ndim != 1 or arr.dtype not in (np.uint8, np.bool_):
        raise ValueError("key material must be bytes or a 1-D uint8/bool array of bits")
    if arr.dtype == np.uint8 and arr.size and int(arr.max()) > 1:
        raise ValueError("key material bit array must contain only 0/1 values")
    return arr.astype(np.uint8)


class KeyPool:
    """Authentication key material shared by the two ends, one FIFO bit stream per direction."""

    def __init__(self, key: np.ndarray | bytes = b"") -> None:
        self._bits = {d: np.zeros(0, np.uint8) for d in _DIRECTIONS}
        self._pos = {d: 0 for d in _DIRECTIONS}
        self.consumed_bits = {d: 0 for d in _DIRECTIONS}
        self.add(key)

    @classmethod
    def from_file(cls, path: str | os.PathLike, required_bits: int) -> "KeyPool":
        """Bootstrap from a pre-shared key file (raw bytes) holding at least ``required_bits`` bits."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise KeyPoolError(
                f"pre-shared key file {str(p)!r} not found; it must hold at least {required_bits} bits"
            ) from None
        except OSError as exc:
            raise KeyPoolError(f"cannot read pre-shared key file {str(p)!r}: {exc.strerror}") from None
        if 8 * len(data) < required_bits:
            raise KeyPoolError(
                f"pre-shared key file {str(p)!r} holds {8 * len(data)} bits; at least {required_bits} are needed"
            )
        return cls(data)

    def add(self, key: np.ndarray | bytes) -> None:
        """Replenish with new key material: first half to alice->bob, second half to bob->alice."""
        bits = _to_bits(key)
        half = bits.size // 2
        for d, chunk in ((ALICE_TO_BOB, bits[:half]), (BOB_TO_ALICE, bits[half:])):
            if chunk.size:
                self._bits[d] = np.concatenate([self._bits[d][self._pos[d] :], chunk])
                self._pos[d] = 0

    def available(self, direction: str) -> int:
        """Unconsumed bits for ``direction``."""
        self._check_dir(direction)
        return self._bits[direction].size - self._pos[direction]

    def take(self, n_bits: int, direction: str) -> np.ndarray:
        """Consume ``n_bits`` bits of ``direction`` (all or nothing)."""
        self._check_dir(direction)
        have = self.available(direction)
        if n_bits > have:
            raise KeyPoolExhausted(
                f"authentication key pool exhausted for {direction}: need {n_bits} bits, {have} left; "
                "replenish it from new QKD key with KeyPool.add()"
            )
        start = self._pos[direction]
        self._pos[direction] = start + n_bits
        self.consumed_bits[direction] += n_bits
        return self._bits[direction][start : start + n_bits]

    def take_field_elements(self, count: int, direction: str) -> np.ndarray:
        """``count`` values uniform in ``Z_p`` (61-bit draws; the value 2^61 - 1 is rejected and redrawn)."""
        self._check_dir(direction)
        saved = (self._pos[direction], self.consumed_bits[direction])
        out = np.empty(count, dtype=np.uint64)
        weights = np.uint64(1) << np.arange(FIELD_BITS - 1, -1, -1, dtype=np.uint64)
        i = 0
        try:
            while i < count:  # loops once except with probability ~count * 2^-61
                bits = self.take(FIELD_BITS * (count - i), direction).reshape(-1, FIELD_BITS)
                vals = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
                ok = vals[vals != np.uint64(P61)]
                out[i : i + ok.size] = ok
                i += ok.size
        except KeyPoolExhausted:
            self._pos[direction], self.consumed_bits[direction] = saved
            raise
        return out

    @staticmethod
    def _check_dir(direction: str) -> None:
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")


class _PolyKey:
    """A reused polynomial-hash key with a cache of its powers (the hash key is reused across tags)."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys
        self._pw = _powers(keys, 64)

    def hash(self, words: np.ndarray) -> list[int]:
        if _verify._poly61 is not None:      # Horner's rule in C; the cached powers below are the numpy path
            return _verify.poly_hash_words(words, self.keys)
        n = words.size
        if self._pw.shape[1] < n:
            self._pw = _powers(self.keys, max(n, 2 * self._pw.shape[1]))
        return _sum_mod(_mulmod(words[None, :], self._pw[:, n - 1 :: -1]))


class Authenticator:
    """Wegman-Carter tagger/verifier for one end (``role`` 'alice'/'aau' or 'bob'/'du').

    Both ends must be built from pools with identical content, and must add identical replenishment
    chunks in the same order.  ``evaluations`` = t (tag = 61 t bits, sent as 8 t bytes).
    """

    def __init__(
        self, pool: KeyPool, role: str, *, evaluations: int = 1, rekey_every: int | None = None
    ) -> None:
        if role not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, got {role!r}")
        if not isinstance(evaluations, int) or evaluations < 1:
            raise ValueError(f"evaluations must be a positive integer, got {evaluations!r}")
        if rekey_every is not None and (not isinstance(rekey_every, int) or rekey_every < 1):
            raise ValueError(f"rekey_every must be a positive integer or None, got {rekey_every!r}")
        self.pool = pool
        self.role = _ROLES[role]
        self.evaluations = evaluations
        self.rekey_every = rekey_every
        self.out_dir = ALICE_TO_BOB if self.role == "alice" else BOB_TO_ALICE
        self.in_dir = BOB_TO_ALICE if self.role == "alice" else ALICE_TO_BOB
        # Both ends draw the hash keys of both directions first, in direction order.
        keys = {d: pool.take_field_elements(evaluations, d) for d in _DIRECTIONS}
        self._send_key = _PolyKey(keys[self.out_dir])
        self._recv_key = _PolyKey(keys[self.in_dir])
        self.next_send_seq = 0
        self.next_recv_seq = 0
        self.failed_attempts = 0
        self._pending_pad: np.ndarray | None = None
        self._rekeyed = {d: -1 for d in _DIRECTIONS}

    @property
    def tag_bytes(self) -> int:
        return 8 * self.evaluations

    @property
    def key_bits_per_tag(self) -> int:
        """Pool bits consumed per tag (except for a 2^-61-probability redraw)."""
        return FIELD_BITS * self.evaluations

    @staticmethod
    def required_bootstrap_bits(evaluations: int = 1, tags_per_direction: int = 0) -> int:
        """Pre-shared bits for both hash keys plus ``tags_per_direction`` tags each way."""
        return 2 * FIELD_BITS * evaluations * (1 + tags_per_direction)

    def eps_per_tag(self, message_len_bytes: int) -> float:
        """Forgery probability bound per attempt for a message of this length (see module docstring)."""
        words = -(-8 * message_len_bytes // 56) + 2
        return (words / P61) ** self.evaluations

    @staticmethod
    def _words(message: bytes, seq: int) -> np.ndarray:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"seq must be an integer in [0, 2^56), got {seq!r}")
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise ValueError(f"message must be bytes, got {type(message).__name__}")
        body = bytes_to_words(bytes(message))
        words = np.empty(body.size + 1, dtype=np.uint64)
        words[0] = np.uint64(seq)
        words[1:] = body
        return words

    def _maybe_rekey(self, direction: str, seq: int) -> None:
        # Once per (direction, seq): a retry after KeyPoolExhausted must not draw a second key.
        if self.rekey_every and seq and seq % self.rekey_every == 0 and self._rekeyed[direction] != seq:
            new = _PolyKey(self.pool.take_field_elements(self.evaluations, direction))
            self._rekeyed[direction] = seq
            if direction == self.out_dir:
                self._send_key = new
            else:
                self._recv_key = new

    def _tag_values(self, key: _PolyKey, words: np.ndarray, pad: np.ndarray) -> bytes:
        h = key.hash(words)
        return b"".join(((v + int(r)) % P61).to_bytes(8, "big") for v, r in zip(h, pad))

    def tag(self, message: bytes, seq: int) -> bytes:
        """Tag an outgoing message; ``seq`` must be ``next_send_seq``.  Consumes 61 t pool bits."""
        words = self._words(message, seq)
        if seq != self.next_send_seq:
            raise ValueError(f"seq {seq} is not the next send sequence number {self.next_send_seq}")
        self._maybe_rekey(self.out_dir, seq)
        pad = self.pool.take_field_elements(self.evaluations, self.out_dir)
        out = self._tag_values(self._send_key, words, pad)
        self.next_send_seq += 1
        return out

    def verify(self, message: bytes, seq: int, tag: bytes) -> None:
        """Check an incoming message; raises ``AuthenticationError`` unless it is authentic and in order."""
        words = self._words(message, seq)
        if seq != self.next_recv_seq:
            self.failed_attempts += 1
            raise AuthenticationError(
                f"{self.in_dir} message seq {seq} rejected: expected {self.next_recv_seq} (replay or reorder)"
            )
        if self._pending_pad is None:
            self._maybe_rekey(self.in_dir, seq)
            self._pending_pad = self.pool.take_field_elements(self.evaluations, self.in_dir)
        expected = self._tag_values(self._recv_key, words, self._pending_pad)
        if not hmac.compare_digest(expected, bytes(tag)):
            self.failed_attempts += 1
            raise AuthenticationError(f"{self.in_dir} message seq {seq}: tag mismatch")
        self._pending_pad = None
        self.next_recv_seq += 1
