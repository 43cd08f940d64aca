"""Persistent, position-addressed Wegman–Carter key material: one-time pads are never reused, across restarts too.

Why. A one-time-padded Wegman–Carter tag (Wegman & Carter, JCSS 22, 265 (1981); AIT QKD R10 ``qkd-auth``) is
secure only if every pad value is used once. A node that restarts must therefore know which pad bits it already
used, and the two ends must agree on which bits pad which tag without trusting anything the network says.

Model. Each node keeps an *authentication state* (SQLite, WAL, ``synchronous=FULL``) holding an ordered list of
**entries**: the pre-shared key file (entry ``psk:<sha256 prefix>``, always first) and the reserved head of every
key block committed since (entry id = the key block's UUID). Each entry's bits are split like
``qkdflow.distill.auth.KeyPool.add``: first half pads AAU->DU tags (``alice->bob``), second half DU->AAU tags.
The PSK entry's first 2 x 61 bits are the two directions' polynomial-hash keys (reused, as Wegman–Carter
allows: only the pads must be fresh). A tag carries its pad's *position*: the entry's 8-byte key (a hash of its
id) and the bit offset. So:

* The sender draws positions in order from entries it may *send* with, and persists a lease (the end of a chunk
  of positions) **before** using any of it; after a restart it continues from the lease, never behind it.
* An entry may be sent with only once the peer is known to hold it: the AAU appends a block's entry at its commit,
  which follows the DU's commit (send allowed at once); the DU appends at its commit but sends with it only after
  the AAU's "done" (``authorize``). So the receiver always holds the entry a tag names.
* The receiver accepts a position only beyond the last one it accepted on that edge (per-edge marks, persisted
  every ``MARK_EVERY`` tags and at close): no replay within a session. A replay of an old session's message can
  land only in the window since the last persisted mark; it then carries a key-block id or sequence number the
  new session does not expect, so it aborts or stops that run -- it cannot shape a key.

Never delete a node's state file while keeping its pre-shared key: the node would restart its pads from the
file's start. A state made with another pre-shared key is refused at open.
"""
from __future__ import annotations

import bisect
import hashlib
import os
import sqlite3
import threading
from dataclasses import dataclass

import numpy as np

from .auth import ALICE_TO_BOB, BOB_TO_ALICE, KeyPoolError, KeyPoolExhausted
from .verify import FIELD_BITS, P61

__all__ = ["AuthState", "Position", "LEASE_BITS", "MARK_EVERY", "entry_key"]

#: Pad positions reserved (persisted) per lease: one SQLite write per this many bits of pads (~67 tags).
LEASE_BITS = 4096
#: Receiver marks are persisted every this many accepted tags (and at close).
MARK_EVERY = 64
_DIRS = (ALICE_TO_BOB, BOB_TO_ALICE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    ord     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT UNIQUE NOT NULL,
    a2b     BLOB NOT NULL,
    b2a     BLOB NOT NULL,
    n_a2b   INTEGER NOT NULL,
    n_b2a   INTEGER NOT NULL,
    send_ok INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, ord INTEGER NOT NULL, off INTEGER NOT NULL);
"""


def entry_key(entry_id: str) -> bytes:
    """The 8-byte name of an entry on the wire."""
    return hashlib.sha256(entry_id.encode()).digest()[:8]


@dataclass(frozen=True, order=True)
class Position:
    """A pad position: entry ordinal (local, stable) and bit offset inside the entry's direction half."""
    ord: int
    off: int


class _Entry:
    __slots__ = ("ord", "id", "key", "bits", "send_ok")

    def __init__(self, ord_: int, id_: str, bits: dict[str, np.ndarray], send_ok: bool) -> None:
        self.ord, self.id, self.key, self.bits, self.send_ok = ord_, id_, entry_key(id_), bits, send_ok


def _pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits).tobytes()


def _unpack(blob: bytes, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n)


def _field_value(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(np.concatenate([np.zeros(3, np.uint8), bits])).tobytes(), "big")


class AuthState:
    """One node's authentication key material (see the module docstring). Thread-safe."""

    def __init__(self, path: str, psk: bytes, psk_name: str = "pre-shared key") -> None:
        self.path = path
        self._lock = threading.RLock()
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")  # one node process owns its state
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.OperationalError as e:
            self._db.close()
            why = "in use by another process" if "locked" in str(e) else str(e)
            raise KeyPoolError(f"authentication state {path!r}: {why}") from None
        self.psk_id = "psk:" + hashlib.sha256(psk).hexdigest()[:32]
        bits = np.unpackbits(np.frombuffer(psk, dtype=np.uint8))
        need = 2 * FIELD_BITS + 2 * 2 * FIELD_BITS
        if bits.size < need:
            raise KeyPoolError(f"{psk_name} holds {bits.size} bits; at least {need} are needed")
        first = self._db.execute("SELECT id FROM entries ORDER BY ord LIMIT 1").fetchone()
        if first is None:
            self._insert(self.psk_id, bits[2 * FIELD_BITS:], True)
        elif first[0] != self.psk_id:
            self._db.close()
            raise KeyPoolError(f"authentication state {path!r} was made with another pre-shared key; "
                               "give each pre-shared key its own state file (never reuse one with a new key)")
        # hash keys: 61 bits per direction from the PSK's head, rejection-free (a value of p is mapped to 0;
        # bias 2^-61, far below the tag's own eps)
        self.hash_keys = {d: _field_value(bits[k * FIELD_BITS:(k + 1) * FIELD_BITS]) % P61
                          for k, d in enumerate(_DIRS)}
        self.entries: list[_Entry] = []  # in ord order (appended in insertion order)
        self._ords: list[int] = []
        self.by_key: dict[bytes, _Entry] = {}
        for ord_, id_, a2b, b2a, na, nb, ok in self._db.execute(
                "SELECT ord, id, a2b, b2a, n_a2b, n_b2a, send_ok FROM entries ORDER BY ord"):
            self._add(_Entry(ord_, id_, {ALICE_TO_BOB: _unpack(a2b, na), BOB_TO_ALICE: _unpack(b2a, nb)}, bool(ok)))
        self.marks: dict[str, Position] = {n: Position(o, f) for n, o, f in
                                           self._db.execute("SELECT name, ord, off FROM marks")}
        self._used: dict[str, Position] = {}  # send: used up to (this session)
        self._unsaved: dict[str, int] = {}
        self.closed = False

    # ---- entries -------------------------------------------------------------------------------------
    def _add(self, e: _Entry) -> None:
        self.entries.append(e)
        self._ords.append(e.ord)
        self.by_key[e.key] = e

    def _insert(self, entry_id: str, bits: np.ndarray, send_ok: bool) -> _Entry:
        half = bits.size // 2
        parts = {ALICE_TO_BOB: bits[:half], BOB_TO_ALICE: bits[half:]}
        cur = self._db.execute(
            "INSERT INTO entries (id, a2b, b2a, n_a2b, n_b2a, send_ok) VALUES (?, ?, ?, ?, ?, ?)",
            (entry_id, _pack(parts[ALICE_TO_BOB]), _pack(parts[BOB_TO_ALICE]), int(parts[ALICE_TO_BOB].size),
             int(parts[BOB_TO_ALICE].size), int(send_ok)))
        return _Entry(int(cur.lastrowid), entry_id, parts, send_ok)

    def add(self, bits: np.ndarray, entry_id: str | None = None, send_ok: bool = True) -> None:
        """Append new key material (durably) as entry ``entry_id`` (default: a hash of the bits)."""
        bits = np.asarray(bits, dtype=np.uint8)
        if entry_id is None:
            entry_id = "bits:" + hashlib.sha256(np.packbits(bits).tobytes() + bits.size.to_bytes(8, "big")).hexdigest()[:32]
        with self._lock:
            if entry_id in {e.id for e in self.entries}:
                return  # idempotent: a block replayed after a restart adds nothing twice
            self._add(self._insert(entry_id, bits, send_ok))

    def authorize(self, entry_id: str) -> None:
        """The peer holds ``entry_id`` now: this end may send with it."""
        with self._lock:
            for e in self.entries:
                if e.id == entry_id and not e.send_ok:
                    self._db.execute("UPDATE entries SET send_ok = 1 WHERE ord = ?", (e.ord,))
                    e.send_ok = True

    def available(self, direction: str) -> int:
        """Pad bits this end may still send with in ``direction``."""
        with self._lock:
            pos = self._send_start(direction)
            return sum(max(0, e.bits[direction].size - (pos.off if e.ord == pos.ord else 0))
                       for e in self.entries if e.send_ok and e.ord >= pos.ord)

    # ---- sending -------------------------------------------------------------------------------------
    def _send_start(self, direction: str) -> Position:
        return self._used.get(direction) or self.marks.get("send:" + direction, Position(0, 0))

    def take_pad(self, direction: str) -> tuple[bytes, int, int]:
        """Next unused pad of ``direction``: (entry key, bit offset, pad value in Z_p). Raises KeyPoolExhausted."""
        with self._lock:
            pos = self._send_start(direction)
            for e in self.entries[bisect.bisect_left(self._ords, pos.ord):]:
                if not e.send_ok:
                    continue
                off = pos.off if e.ord == pos.ord else 0
                bits = e.bits[direction]
                value, end = _draw(bits, off)
                if value is None:
                    continue
                self._persist_lease(direction, Position(e.ord, end))
                self._used[direction] = Position(e.ord, end)
                return e.key, off, value
            raise KeyPoolExhausted(f"authentication key exhausted for {direction}: every pad this end may use "
                                   "is spent; new key blocks replenish it")

    def _persist_lease(self, direction: str, used_to: Position) -> None:
        name = "send:" + direction
        lease = self.marks.get(name)
        if lease is not None and used_to <= lease:
            return
        new = Position(used_to.ord, used_to.off + LEASE_BITS)  # may point past the entry's end: harmless
        self._db.execute("INSERT OR REPLACE INTO marks (name, ord, off) VALUES (?, ?, ?)", (name, new.ord, new.off))
        self.marks[name] = new

    # ---- receiving -----------------------------------------------------------------------------------
    def pad_at(self, direction: str, key: bytes, off: int, edge: str) -> tuple[int, Position]:
        """The pad a received tag names, if that position is new on ``edge``; raises LookupError otherwise."""
        with self._lock:
            e = self.by_key.get(key)
            if e is None:
                raise LookupError("the tag names key material this end does not hold")
            value, end = _draw(e.bits[direction], off)
            if value is None:
                raise LookupError(f"pad offset {off} lies outside the named key material")
            mark = self.marks.get("recv:" + edge)
            if mark is not None and Position(e.ord, off) < mark:
                raise LookupError(f"pad position {off} of that key was already used on this edge (replay)")
            return value, Position(e.ord, end)

    def accept(self, edge: str, end: Position) -> None:
        """Record that a tag verified; its pad is spent on ``edge``."""
        with self._lock:
            name = "recv:" + edge
            self.marks[name] = end
            self._unsaved[name] = self._unsaved.get(name, 0) + 1
            if self._unsaved[name] >= MARK_EVERY:
                self._save_mark(name)

    def _save_mark(self, name: str) -> None:
        m = self.marks[name]
        self._db.execute("INSERT OR REPLACE INTO marks (name, ord, off) VALUES (?, ?, ?)", (name, m.ord, m.off))
        self._unsaved[name] = 0

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            for name, n in list(self._unsaved.items()):
                if n:
                    self._save_mark(name)
            self._db.close()
            self.closed = True


def _draw(bits: np.ndarray, off: int) -> tuple[int | None, int]:
    """A pad value uniform in Z_p from ``bits`` at ``off``: 61-bit draws, the value p rejected and redrawn."""
    while off + FIELD_BITS <= bits.size:
        v = _field_value(bits[off:off + FIELD_BITS])
        off += FIELD_BITS
        if v != P61:
            return v, off
    return None, off
