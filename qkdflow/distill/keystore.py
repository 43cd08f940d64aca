"""Per-side persistent key store: two-phase commit, a 'confirmed' gate, once-only delivery, shared by processes.

Design (after the AIT QKD R10 Q3P key store and ETSI GS QKD 014 V1.1.1 key delivery; see
shared/reference/postprocessing.md Secs. 4-5):

* One sqlite3 database per side (standard library), WAL journal, ``synchronous=FULL`` so a committed
  transaction survives a process kill *and* a power loss.  Several processes open the same store at once: the
  flowgraph's key-store block writes key blocks while ``qkdflow kms`` and the fronthaul blocks deliver keys.
  Every write is one ``BEGIN IMMEDIATE`` transaction (writers serialise; a writer waits up to
  ``busy_timeout_s`` for another, then ``KeyStoreError``), readers never block (WAL).
  ``":memory:"`` gives a volatile single-connection store with the same behaviour.
* **Owner.** ``KeyStore(path, owner=True)`` is the distillation's key-store block: it holds an ``fcntl.flock``
  on ``<path>.owner`` for as long as the store is open (the kernel drops it when the process dies, also on
  SIGKILL), so a second owner is refused with one line naming the holder's pid.  Only the owner deletes, at
  open, the *pending* blocks of a protocol run that did not finish before a restart; a reader (``owner=False``,
  the default) never does, so a KMS opening the store while a flowgraph is mid-block leaves that block alone.
* Key blocks are stored by UUID with metadata (QBER, leak bits, eps_sec, eps_cor, length in bits,
  creation time, state).  Key bits are stored packed (``np.packbits``, MSB first).
* "A key block exists at both ends or at neither": ``stage`` writes a block as *pending*, ``commit`` makes it
  *committed*, ``abort`` deletes a pending one.  A committed block is **deliverable only once it is confirmed**:
  known to be committed at both ends (``commit(..., confirmed=True)`` when the caller knows the peer committed
  first, else ``confirm`` later, or ``reconcile``).  Exchange used by ``blocks/keystore_{du,aau}.py``: DU
  stages, AAU stages, DU commits (unconfirmed), AAU commits (confirmed: the DU's commit came first), AAU says
  "done", DU confirms.  A crash can leave a block committed at one end only (the other end's pending copy is
  deleted when its owner reopens the store); that copy is never confirmed, so nothing was delivered from it.
  After any restart the two ends exchange ``committed_ids()`` and call ``reconcile(peer_ids)``: it deletes the
  committed blocks the peer lacks and confirms every other committed block.
* Delivery (ETSI 014 ``enc_keys``): ``take_keys(number, size_bits)`` cuts ``number`` keys of ``size_bits``
  (multiple of 8) from confirmed blocks in commit order and marks them delivered *in the same transaction*
  that returns them, so a key is handed out at most once, also across processes and crashes (a crash after
  the commit but before the caller used the key loses that key; it is never handed out twice).  Keys never
  span blocks.  The master end sends the returned descriptors (key_id, block_id, offset, size) to the peer
  store, which records them with ``accept_peer_keys`` (confirmed blocks only; ``KeyNotConfirmed`` for a block
  committed here but not yet confirmed, a transient state); the peer application then fetches them once with
  ``get_by_ids`` (ETSI 014 ``dec_keys``).  Only one end of a link allocates (the master); a descriptor that
  overlaps bits already allocated at the receiving end is refused.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = [
    "KeyStore",
    "KeyBlockMeta",
    "KeyBlockInfo",
    "DeliveredKey",
    "KeyDescriptor",
    "KeyStoreError",
    "InsufficientKey",
    "KeyNotFound",
    "KeyNotConfirmed",
    "AlreadyDelivered",
    "StoreBusy",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    block_id         TEXT PRIMARY KEY,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'committed')),
    key              BLOB NOT NULL,
    length_bits      INTEGER NOT NULL CHECK (length_bits > 0),
    qber             REAL NOT NULL,
    leak_bits        INTEGER NOT NULL,
    eps_sec          REAL NOT NULL,
    eps_cor          REAL NOT NULL,
    created_s        REAL NOT NULL,
    committed_s      REAL,
    commit_order     INTEGER,
    next_offset_bits INTEGER NOT NULL DEFAULT 0,
    confirmed_s      REAL
);
CREATE TABLE IF NOT EXISTS keys (
    key_id       TEXT PRIMARY KEY,
    block_id     TEXT NOT NULL REFERENCES blocks(block_id) ON DELETE CASCADE,
    offset_bits  INTEGER NOT NULL,
    size_bits    INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('reserved', 'delivered')),
    delivered_s  REAL
);
CREATE INDEX IF NOT EXISTS blocks_by_order ON blocks(state, commit_order);
"""
#: deliverable = committed at this end and known committed at the peer
_DELIVERABLE = "state = 'committed' AND confirmed_s IS NOT NULL"


class KeyStoreError(Exception):
    """A key-store request cannot be served (not a malformed argument: those raise ValueError)."""


class InsufficientKey(KeyStoreError):
    """Not enough confirmed, undelivered key for the request."""


class KeyNotFound(KeyStoreError):
    """No block / key with that id."""


class KeyNotConfirmed(KeyStoreError):
    """The block is committed here but not yet known to be committed at the peer (retry shortly)."""


class AlreadyDelivered(KeyStoreError):
    """The key was already handed out once."""


class StoreBusy(KeyStoreError):
    """Another process held the store's write lock for longer than ``busy_timeout_s``."""


@dataclass(frozen=True)
class KeyBlockMeta:
    """Metadata stored with a key block."""

    qber: float
    leak_bits: int
    eps_sec: float
    eps_cor: float

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.qber) <= 1.0):
            raise ValueError(f"qber must be in [0, 1], got {self.qber}")
        if isinstance(self.leak_bits, bool) or int(self.leak_bits) != self.leak_bits or self.leak_bits < 0:
            raise ValueError(f"leak_bits must be a non-negative integer, got {self.leak_bits}")
        for name in ("eps_sec", "eps_cor"):
            v = float(getattr(self, name))
            if not (0.0 < v < 1.0):
                raise ValueError(f"{name} must be in (0, 1), got {v}")


@dataclass(frozen=True)
class KeyBlockInfo:
    block_id: str
    state: str
    length_bits: int
    qber: float
    leak_bits: int
    eps_sec: float
    eps_cor: float
    created_s: float
    committed_s: float | None
    next_offset_bits: int
    confirmed_s: float | None = None

    @property
    def deliverable(self) -> bool:
        """Committed here and known to be committed at the peer."""
        return self.state == "committed" and self.confirmed_s is not None


@dataclass(frozen=True)
class KeyDescriptor:
    """Where a delivered key lives: sent by the master end to the peer store (no key bits)."""

    key_id: str
    block_id: str
    offset_bits: int
    size_bits: int


@dataclass(frozen=True)
class DeliveredKey:
    key_id: str
    key: bytes
    block_id: str
    offset_bits: int
    size_bits: int

    @property
    def descriptor(self) -> KeyDescriptor:
        return KeyDescriptor(self.key_id, self.block_id, self.offset_bits, self.size_bits)


def _canon_uuid(value: str | uuid.UUID, field: str) -> str:
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{field} must be a UUID, got {value!r}") from None


def _pack_key(key: np.ndarray | bytes) -> tuple[bytes, int]:
    if isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
        return data, 8 * len(data)
    arr = np.asarray(key)
    if arr.ndim != 1 or arr.dtype not in (np.uint8, np.bool_):
        raise ValueError("key must be bytes or a 1-D uint8/bool array of bits")
    if arr.dtype == np.uint8 and arr.size and int(arr.max()) > 1:
        raise ValueError("key bit array must contain only 0/1 values")
    return np.packbits(arr).tobytes(), int(arr.size)


def _owner_lock(path: str) -> int:
    """Take the owner lock ``<path>.owner`` (flock, released by the kernel when the process dies); its fd."""
    lock_path = os.path.realpath(path) + ".owner"  # one lock per store file, however the path is spelt
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise KeyStoreError(f"key store {path!r} already has an owner (pid {holder}, lock {lock_path}): "
                            "one key-store block per store file") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class KeyStore:
    """Key blocks of one side of a link.  ``path`` is a file name or ``":memory:"``.

    ``owner=True``: the writer of the distillation protocol (one per store file, enforced); it deletes the
    pending blocks left by an unfinished run when it opens the store.  Readers (KMS, fronthaul blocks) use the
    default ``owner=False``.  ``busy_timeout_s``: how long a write waits for another process's write.
    """

    def __init__(self, path: str | os.PathLike = ":memory:", *, owner: bool = False,
                 busy_timeout_s: float = 10.0) -> None:
        self.path = os.fspath(path)
        self.owner = bool(owner)
        self.busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.RLock()
        self._owner_fd: int | None = None
        self.discarded_pending: int = 0
        memory = self.path == ":memory:"
        if self.owner and not memory:
            self._owner_fd = _owner_lock(self.path)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            self._release_owner()
            raise KeyStoreError(f"key store {self.path!r}: cannot open: {exc}") from None
        try:
            self._retry_locked(self._setup)
            if self.owner:
                with self._tx() as c:
                    # Pending blocks from before this owner's open can never be committed consistently (the
                    # protocol run that staged them is gone); readers never delete them (a live run may own them).
                    self.discarded_pending = c.execute("DELETE FROM blocks WHERE state = 'pending'").rowcount
        except BaseException as exc:
            self._conn.close()
            self._release_owner()
            if isinstance(exc, sqlite3.DatabaseError):
                raise KeyStoreError(f"key store {self.path!r}: {exc}") from None
            raise

    def _setup(self) -> None:
        c = self._conn
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise KeyStoreError(f"key store {self.path!r}: cannot enable WAL journal (got {mode!r})")
        c.execute("PRAGMA synchronous=FULL")
        c.execute("PRAGMA foreign_keys=ON")
        c.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        cols = {r[1] for r in c.execute("PRAGMA table_info(blocks)")}
        if "confirmed_s" not in cols:  # store written before the confirmed state: its blocks count as unconfirmed
            with self._tx():
                if "confirmed_s" not in {r[1] for r in c.execute("PRAGMA table_info(blocks)")}:
                    c.execute("ALTER TABLE blocks ADD COLUMN confirmed_s REAL")

    def _retry_locked(self, fn) -> None:
        """Run ``fn`` again while sqlite reports a lock held by another process's open (up to the busy timeout)."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if time.monotonic() >= deadline:
                    raise StoreBusy(f"key store {self.path!r} stayed locked by another process for "
                                    f"{self.busy_timeout_s:g} s") from None
                time.sleep(0.01)

    def _release_owner(self) -> None:
        if self._owner_fd is not None:
            os.close(self._owner_fd)  # closing the descriptor drops the flock
            self._owner_fd = None

    # -- plumbing ---------------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so concurrent writers queue."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreBusy(f"key store {self.path!r} is busy: another process held its write lock for "
                                    f"more than {self.busy_timeout_s:g} s") from None
                raise
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._release_owner()

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- two-phase protocol -----------------------------------------------------------------------------
    def stage(self, block_id: str | uuid.UUID, key: np.ndarray | bytes, meta: KeyBlockMeta) -> None:
        """Store a block as pending (not deliverable)."""
        bid = _canon_uuid(block_id, "block_id")
        blob, length_bits = _pack_key(key)
        if length_bits == 0:
            raise ValueError("key must not be empty")
        if not isinstance(meta, KeyBlockMeta):
            raise ValueError(f"meta must be a KeyBlockMeta, got {type(meta).__name__}")
        try:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO blocks (block_id, state, key, length_bits, qber, leak_bits, eps_sec, eps_cor,"
                    " created_s) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?)",
                    (bid, blob, length_bits, float(meta.qber), int(meta.leak_bits), float(meta.eps_sec),
                     float(meta.eps_cor), time.time()),
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"block_id {bid} already exists in key store") from None

    def commit(self, block_id: str | uuid.UUID, *, confirmed: bool = False) -> None:
        """Make a pending block committed (idempotent for an already committed block).

        ``confirmed=True`` when the caller knows the peer has committed it already (the second end to commit):
        the block is deliverable at once.  Otherwise it becomes deliverable by ``confirm`` or ``reconcile``.
        """
        bid = _canon_uuid(block_id, "block_id")
        now = time.time()
        with self._tx() as c:
            row = c.execute("SELECT state FROM blocks WHERE block_id = ?", (bid,)).fetchone()
            if row is None:
                raise KeyNotFound(f"block {bid} is not staged (never staged, aborted, or discarded at restart)")
            if row[0] != "committed":
                order = c.execute("SELECT IFNULL(MAX(commit_order), 0) + 1 FROM blocks").fetchone()[0]
                c.execute("UPDATE blocks SET state = 'committed', committed_s = ?, commit_order = ? "
                          "WHERE block_id = ?", (now, order, bid))
            if confirmed:
                c.execute("UPDATE blocks SET confirmed_s = ? WHERE block_id = ? AND confirmed_s IS NULL", (now, bid))

    def confirm(self, block_id: str | uuid.UUID) -> None:
        """The peer has committed this block too: make it deliverable (idempotent)."""
        bid = _canon_uuid(block_id, "block_id")
        with self._tx() as c:
            row = c.execute("SELECT state FROM blocks WHERE block_id = ?", (bid,)).fetchone()
            if row is None or row[0] != "committed":
                raise KeyNotFound(f"block {bid} is not committed here ({'unknown' if row is None else row[0]})")
            c.execute("UPDATE blocks SET confirmed_s = ? WHERE block_id = ? AND confirmed_s IS NULL",
                      (time.time(), bid))

    def abort(self, block_id: str | uuid.UUID) -> None:
        """Delete a pending block (no-op if it is unknown; refuses a committed block)."""
        bid = _canon_uuid(block_id, "block_id")
        with self._tx() as c:
            row = c.execute("SELECT state FROM blocks WHERE block_id = ?", (bid,)).fetchone()
            if row is not None and row[0] == "committed":
                raise KeyStoreError(f"block {bid} is committed; use reconcile() to drop committed blocks")
            c.execute("DELETE FROM blocks WHERE block_id = ? AND state = 'pending'", (bid,))

    def committed_ids(self) -> list[str]:
        """Every committed block, confirmed or not, in commit order (what the start-up hello carries)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT block_id FROM blocks WHERE state = 'committed' ORDER BY commit_order"
            ).fetchall()
        return [r[0] for r in rows]

    def confirmed_ids(self) -> list[str]:
        """The deliverable blocks, in commit order."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT block_id FROM blocks WHERE {_DELIVERABLE} ORDER BY commit_order").fetchall()
        return [r[0] for r in rows]

    def reconcile(self, peer_committed_ids: Iterable[str | uuid.UUID]) -> list[str]:
        """Start-up reconciliation: delete committed blocks the peer does not hold and confirm all others.

        Returns the deleted ids (in commit order).  A block both ends hold committed is committed at both ends,
        so it becomes deliverable; a block only this end holds was never confirmed (the protocol confirms only
        after the peer's commit), so nothing was delivered from it.
        """
        peer = {_canon_uuid(b, "peer block id") for b in peer_committed_ids}
        now = time.time()
        with self._tx() as c:
            ours = [r[0] for r in c.execute(
                "SELECT block_id FROM blocks WHERE state = 'committed' ORDER BY commit_order")]
            drop = [b for b in ours if b not in peer]
            c.executemany("DELETE FROM blocks WHERE block_id = ?", [(b,) for b in drop])
            c.execute("UPDATE blocks SET confirmed_s = ? WHERE state = 'committed' AND confirmed_s IS NULL", (now,))
        return drop

    # -- delivery ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_size(size_bits: int) -> None:
        if isinstance(size_bits, bool) or not isinstance(size_bits, (int, np.integer)):
            raise ValueError(f"size_bits must be an integer, got {size_bits!r}")
        if size_bits <= 0 or size_bits % 8:
            raise ValueError(f"size_bits must be a positive multiple of 8, got {size_bits}")

    def take_keys(self, number: int, size_bits: int) -> list[DeliveredKey]:
        """Cut ``number`` keys of ``size_bits`` bits from confirmed blocks, mark them delivered atomically.

        Raises ``InsufficientKey`` (delivering nothing) if fewer are available.
        """
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
            raise ValueError(f"number must be a positive integer, got {number!r}")
        self._check_size(size_bits)
        out: list[DeliveredKey] = []
        now = time.time()
        with self._tx() as c:
            rows = c.execute(
                f"SELECT block_id, length_bits, next_offset_bits FROM blocks WHERE {_DELIVERABLE}"
                " AND length_bits - next_offset_bits >= ? ORDER BY commit_order",
                (size_bits,),
            ).fetchall()
            plan: list[tuple[str, int, int]] = []  # (block, first offset, count)
            need = number
            for bid, length, off in rows:
                k = min((length - off) // size_bits, need)
                plan.append((bid, off, k))
                need -= k
                if need == 0:
                    break
            if need:
                raise InsufficientKey(
                    f"requested {number} keys of {size_bits} bits, only {number - need} available"
                )
            for bid, off, k in plan:
                c.execute("UPDATE blocks SET next_offset_bits = ? WHERE block_id = ?",
                          (off + k * size_bits, bid))
                blob = c.execute(
                    "SELECT substr(key, ?, ?) FROM blocks WHERE block_id = ?",
                    (off // 8 + 1, k * size_bits // 8, bid),
                ).fetchone()[0]
                step = size_bits // 8
                for i in range(k):
                    out.append(DeliveredKey(str(uuid.uuid4()), bytes(blob[i * step : (i + 1) * step]), bid,
                                            off + i * size_bits, size_bits))
            c.executemany(
                "INSERT INTO keys (key_id, block_id, offset_bits, size_bits, state, delivered_s)"
                " VALUES (?, ?, ?, ?, 'delivered', ?)",
                [(d.key_id, d.block_id, d.offset_bits, d.size_bits, now) for d in out],
            )
        return out

    def accept_peer_keys(self, descriptors: Iterable[KeyDescriptor]) -> None:
        """Record keys the master end delivered, so ``get_by_ids`` can serve them once (all or nothing).

        ``KeyNotConfirmed`` if a block is committed here but not yet confirmed (retry once it is)."""
        descs = sorted(descriptors, key=lambda d: (d.block_id, d.offset_bits))
        with self._tx() as c:
            for d in descs:
                kid = _canon_uuid(d.key_id, "key_id")
                bid = _canon_uuid(d.block_id, "block_id")
                self._check_size(d.size_bits)
                if d.offset_bits < 0 or d.offset_bits % 8:
                    raise ValueError(f"offset_bits must be a non-negative multiple of 8, got {d.offset_bits}")
                row = c.execute("SELECT state, length_bits, next_offset_bits, confirmed_s FROM blocks"
                                " WHERE block_id = ?", (bid,)).fetchone()
                if row is None or row[0] != "committed":
                    raise KeyNotFound(f"key {kid}: block {bid} is not committed in this store")
                _, length, cursor, confirmed_s = row
                if confirmed_s is None:
                    raise KeyNotConfirmed(f"key {kid}: block {bid} is committed here but not yet confirmed at "
                                          "both ends")
                if d.offset_bits < cursor:
                    raise KeyStoreError(f"key {kid}: bits [{d.offset_bits}, +{d.size_bits}) of block {bid}"
                                        f" overlap bits already allocated here (up to {cursor})")
                if d.offset_bits + d.size_bits > length:
                    raise ValueError(f"key {kid}: slice exceeds block {bid} length {length}")
                c.execute("UPDATE blocks SET next_offset_bits = ? WHERE block_id = ?",
                          (d.offset_bits + d.size_bits, bid))
                try:
                    c.execute("INSERT INTO keys (key_id, block_id, offset_bits, size_bits, state)"
                              " VALUES (?, ?, ?, ?, 'reserved')", (kid, bid, d.offset_bits, d.size_bits))
                except sqlite3.IntegrityError:
                    raise KeyStoreError(f"key_id {kid} already known") from None

    def get_by_ids(self, key_ids: Iterable[str | uuid.UUID]) -> list[DeliveredKey]:
        """Deliver keys recorded by ``accept_peer_keys`` (ETSI 014 dec_keys), each at most once."""
        ids = [_canon_uuid(k, "key_id") for k in key_ids]
        out: list[DeliveredKey] = []
        now = time.time()
        with self._tx() as c:
            for kid in ids:
                row = c.execute(
                    "SELECT k.state, k.block_id, k.offset_bits, k.size_bits,"
                    " substr(b.key, k.offset_bits / 8 + 1, k.size_bits / 8), b.confirmed_s"
                    " FROM keys k JOIN blocks b ON b.block_id = k.block_id WHERE k.key_id = ?",
                    (kid,),
                ).fetchone()
                if row is None:
                    raise KeyNotFound(f"key_id {kid} is unknown")
                state, bid, off, size, blob, confirmed_s = row
                if state == "delivered":
                    raise AlreadyDelivered(f"key_id {kid} was already delivered")
                if confirmed_s is None:  # accept_peer_keys only records keys of confirmed blocks: defence in depth
                    raise KeyNotConfirmed(f"key_id {kid}: block {bid} is not confirmed at both ends")
                c.execute("UPDATE keys SET state = 'delivered', delivered_s = ? WHERE key_id = ?", (now, kid))
                out.append(DeliveredKey(kid, bytes(blob), bid, off, size))
        return out

    def get_by_id(self, key_id: str | uuid.UUID) -> DeliveredKey:
        return self.get_by_ids([key_id])[0]

    # -- inspection -------------------------------------------------------------------------------------
    def block_info(self, block_id: str | uuid.UUID) -> KeyBlockInfo:
        bid = _canon_uuid(block_id, "block_id")
        with self._lock:
            row = self._conn.execute(
                "SELECT block_id, state, length_bits, qber, leak_bits, eps_sec, eps_cor, created_s,"
                " committed_s, next_offset_bits, confirmed_s FROM blocks WHERE block_id = ?", (bid,)).fetchone()
        if row is None:
            raise KeyNotFound(f"block {bid} not in key store")
        return KeyBlockInfo(*row)

    def available_keys(self, size_bits: int) -> int:
        """How many keys of ``size_bits`` ``take_keys`` could deliver now (ETSI 014 stored_key_count)."""
        self._check_size(size_bits)
        with self._lock:
            (n,) = self._conn.execute(
                "SELECT IFNULL(SUM((length_bits - next_offset_bits) / ?), 0) FROM blocks"
                f" WHERE {_DELIVERABLE}", (size_bits,)).fetchone()
        return int(n)

    def stats(self) -> dict[str, float | int]:
        """Counts and bit totals by state, and leak/QBER summaries of committed blocks.

        ``unallocated_bits`` counts confirmed (deliverable) blocks only; ``unconfirmed_bits`` the rest."""
        with self._lock:
            c = self._conn
            pending, committed, confirmed, committed_bits, avail_bits, unconf_bits, leak, qber = c.execute(
                "SELECT SUM(state = 'pending'), SUM(state = 'committed'),"
                f" SUM({_DELIVERABLE}),"
                " IFNULL(SUM(CASE WHEN state = 'committed' THEN length_bits END), 0),"
                f" IFNULL(SUM(CASE WHEN {_DELIVERABLE} THEN length_bits - next_offset_bits END), 0),"
                " IFNULL(SUM(CASE WHEN state = 'committed' AND confirmed_s IS NULL THEN length_bits END), 0),"
                " IFNULL(SUM(CASE WHEN state = 'committed' THEN leak_bits END), 0),"
                " AVG(CASE WHEN state = 'committed' THEN qber END) FROM blocks").fetchone()
            kstats = dict(c.execute(
                "SELECT state, IFNULL(SUM(size_bits), 0) FROM keys GROUP BY state").fetchall())
            kcount = dict(c.execute("SELECT state, COUNT(*) FROM keys GROUP BY state").fetchall())
        return {
            "pending_blocks": int(pending or 0),
            "committed_blocks": int(committed or 0),
            "confirmed_blocks": int(confirmed or 0),
            "unconfirmed_blocks": int(committed or 0) - int(confirmed or 0),
            "committed_bits": int(committed_bits),
            "unallocated_bits": int(avail_bits),
            "unconfirmed_bits": int(unconf_bits),
            "delivered_keys": int(kcount.get("delivered", 0)),
            "delivered_bits": int(kstats.get("delivered", 0)),
            "reserved_keys": int(kcount.get("reserved", 0)),
            "reserved_bits": int(kstats.get("reserved", 0)),
            "leak_bits": int(leak),
            "mean_qber": float(qber) if qber is not None else float("nan"),
            "discarded_pending_on_open": int(self.discarded_pending),
        }
