"""Shared message schema and the common machinery of the key-distillation block halves (AAU = Alice, DU = Bob).

Pipeline (one block per stage module, ``blocks/<stage>_<side>.py``)::

    AAU: prep ─> sift_aau ─> reconcile_aau ─> verify_aau ─> amplify_aau ─> keystore_aau
                   │ ▲            │ ▲             │ ▲            │ ▲             │ ▲        (peer message edges,
                   ▼ │            ▼ │             ▼ │            ▼ │             ▼ │         one each way per pair)
    DU:  clicks ─> sift_du ─> estimate_du ─> reconcile_du ─> verify_du ─> amplify_du ─> keystore_du

Horizontal arrows inside a node are two edges: a ``key`` message edge carrying key blocks (and abort notices and
the final ``end``) to the next stage, and a ``sync`` stream of empty frames (the slot ranges of the prep / click
frames). The sync stream is what lets a protocol block finish: the runtime consults ``finished()`` only for blocks
with a stream input (a pure-message block ends when all its message inputs ended, so two pure-message halves
talking to each other would wait for each other forever). It also carries the simulated clock.

Roles. The DU drives every stage: it works on one key block per stage at a time (stages run as a pipeline), sends
the first message of a stage and decides completion or abort. The AAU half of a stage holds the blocks it received
from its previous stage and only answers. So the DU knows when a stage is over and the AAU never sends anything
unsolicited; that makes shutdown simple (DU stage: no block left and previous stage ended -> ``end`` to peer and
next stage; AAU stage: ``end`` from peer and previous stage -> ``end`` to next stage).

Message envelope (every peer message; wire.py mapping)::

    {"v": 2, "stage": "sift"|"ec"|"verify"|"pa"|"store", "type": str,
     "block": key-block UUID (str), "num": block number (int, 1, 2, ... in DU order), "seq": int, ...payload}

``seq`` is stage-local and per block and direction: the first message about a block in a stage has seq 0 in each
direction. A message whose (num, block) does not match the block it addresses, or whose seq is not the next one,
aborts that block at both ends (``abort`` message, log line, ``blocks_aborted``); it never yields a key. A message
about a block that the receiver already finished (not aborted) is a protocol violation that stops the run
(``BlockError``): nothing half-written remains in the key stores (see keystore_du).

Configuration check: at start the DU half of every pair sends ``hello`` with its protocol-relevant parameters
(``config_fields``), the AAU half compares them with its own and replies with its own ``hello``; the DU compares
again. Any difference stops the run with one line naming the stage, the field and both values.

In-node key messages: ``{"type": "key", "block", "num", "bits": packed uint8 (np.packbits, MSB first), "n_bits",
"info": {...}, [stage extras]}``, ``{"type": "abort", "block", "num", "stage", "reason"}`` (forwarded down the chain
so the key-store halves count every aborted block), ``{"type": "end"}``. ``info`` collects the block's public
figures (counts, QBER, leak, message counts) and ends in the key store's report.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any, ClassVar, Mapping

import numpy as np

from qkdflow.distill.entropy import binary_entropy  # noqa: F401 (also re-exported)
from qkdflow.runtime.block import Block, BlockError, Frame, Message, Stream
from qkdflow.runtime.params import Param

__all__ = ["PROTOCOL_VERSION", "ProtocolError", "ConfigMismatch", "envelope", "pack_bits", "unpack_bits",
           "encode_slots", "decode_slots", "pack_crumbs", "unpack_crumbs",
           "check_config", "KeyBlock", "Half", "DuHalf", "AauHalf", "sync_ports_in", "sync_ports_out",
           "SYNC_DTYPE", "fmt_pct"]

PROTOCOL_VERSION = 2  # 2: sifting chunks carry slot gaps and packed bases, answers packed classes and bits
SYNC_DTYPE = np.uint8
_EMPTY = np.zeros(0, dtype=SYNC_DTYPE)
MAX_EARLY_MESSAGES = 100_000
#: Fallback wait after the previous stage's ``end`` when the runtime cannot be inspected (see ``Half.finished``).
END_GRACE_S = 0.25  # AAU: peer messages buffered for blocks not yet received from the previous stage


class ProtocolError(ValueError):
    """A malformed classical message (missing field, wrong type)."""


class ConfigMismatch(ValueError):
    """The AAU and DU halves of a stage were configured differently."""


def fmt_pct(x: float) -> str:
    """``0.248`` -> ``'24.8 %'`` (log lines)."""
    return f"{100.0 * x:.3g} %"


def envelope(stage: str, type_: str, block: str = "", num: int = 0, seq: int = 0, **payload: Any) -> dict:
    """A peer message with the common header."""
    msg = {"v": PROTOCOL_VERSION, "stage": stage, "type": type_, "block": block, "num": int(num), "seq": int(seq)}
    msg.update(payload)
    return msg


def parse(msg: Mapping, stage: str) -> tuple[str, str, int, int]:
    """Validate the header of a peer message; returns (type, block, num, seq)."""
    if not isinstance(msg, Mapping):
        raise ProtocolError(f"{stage}: message must be a mapping, got {type(msg).__name__}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"{stage}: protocol version {msg.get('v')!r} (this end speaks {PROTOCOL_VERSION})")
    if msg.get("stage") != stage:
        raise ProtocolError(f"{stage}: message for stage {msg.get('stage')!r} on this stage's edge")
    t, b, n, s = msg.get("type"), msg.get("block"), msg.get("num"), msg.get("seq")
    if not isinstance(t, str) or not isinstance(b, str):
        raise ProtocolError(f"{stage}: type and block must be strings")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or isinstance(s, bool) \
            or not isinstance(s, (int, np.integer)):
        raise ProtocolError(f"{stage}: num and seq must be integers")
    return t, b, int(n), int(s)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 uint8 array -> packed bytes (MSB first), as a uint8 array for the wire."""
    return np.packbits(np.asarray(bits, dtype=np.uint8))


def _packed(packed: np.ndarray, n: int, per_byte: int, what: str) -> np.ndarray:
    """``packed`` as a 1-D byte array of exactly ceil(n / per_byte) bytes, else ProtocolError naming ``what``."""
    try:
        p = np.asarray(packed, dtype=np.uint8)
    except (TypeError, ValueError):
        raise ProtocolError(f"packed {what}: not a byte array ({type(packed).__name__})") from None
    if n < 0 or p.ndim != 1 or p.size != -(-n // per_byte):
        raise ProtocolError(f"packed {what}: {p.size} bytes cannot hold exactly {n} {what}")
    return p


def unpack_bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of ``pack_bits``; raises ProtocolError if the sizes disagree."""
    return np.unpackbits(_packed(packed, n_bits, 8, "bits"), count=n_bits)


def pack_crumbs(values: np.ndarray) -> np.ndarray:
    """Values 0..3 -> four per byte, the first in the two high bits (a uint8 array for the wire)."""
    v = np.asarray(values, dtype=np.uint8)
    pad = np.zeros(-v.size % 4, dtype=np.uint8)
    q = np.concatenate([v, pad]).reshape(-1, 4) & 3
    return (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]


def unpack_crumbs(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of ``pack_crumbs``; raises ProtocolError if the sizes disagree."""
    p = _packed(packed, n, 4, "two-bit values")
    return np.stack([p >> 6, (p >> 4) & 3, (p >> 2) & 3, p & 3], axis=1).reshape(-1)[:n]


def encode_slots(slots: np.ndarray) -> dict:
    """At least one strictly increasing slot number, for the wire: ``first``, ``n`` and the gaps to the next slot as
    their low bytes (``low``, uint8), a bitmap of the gaps that need more (``wide``, packed bits) and, for those only,
    the rest (``high`` = gap >> 8, in the narrowest unsigned type that holds it). Clicks are sparse and their gaps
    roughly geometric: at the main job's click rate (mean gap ~230 slots) a third of them pass 255, so a click's slot
    costs ~1.5 bytes instead of an int64's eight."""
    s = np.asarray(slots, dtype=np.int64)
    gaps = np.diff(s)
    wide = gaps > 0xFF
    high = gaps[wide] >> 8
    top = int(high.max()) if high.size else 0
    dt = np.uint8 if top < 1 << 8 else np.uint16 if top < 1 << 16 else np.uint32 if top < 1 << 32 else np.uint64
    return {"first": int(s[0]) if s.size else 0, "n": int(s.size), "low": (gaps & 0xFF).astype(np.uint8),
            "wide": pack_bits(wide), "high": high.astype(dt)}


def decode_slots(msg: Mapping) -> np.ndarray:
    """Inverse of ``encode_slots``; raises ProtocolError unless the slots are valid and strictly increasing."""
    try:
        first, n, low, wide, high = msg["first"], msg["n"], msg["low"], msg["wide"], msg["high"]
    except KeyError as e:
        raise ProtocolError(f"slots: missing field {e}") from None
    if isinstance(first, bool) or not isinstance(first, int) or isinstance(n, bool) or not isinstance(n, int) \
            or not all(isinstance(a, np.ndarray) and a.dtype.kind == "u" and a.ndim == 1 for a in (low, high)) \
            or low.dtype.itemsize != 1:
        raise ProtocolError("slots: first and n must be integers, low a uint8 and high an unsigned integer array")
    if n < 1 or low.size != n - 1 or not 0 <= first < 1 << 62:
        raise ProtocolError("slots: sizes disagree or first out of range")
    wi = np.flatnonzero(unpack_bits(wide, n - 1))
    if wi.size != high.size or (high.size and (not high.all() or int(high.max()) >= 1 << 54)):
        raise ProtocolError("slots: the wide gaps and their high parts disagree")
    gaps = low.astype(np.int64)
    gaps[wi] += high.astype(np.int64) << 8
    if gaps.size and not gaps.all():
        raise ProtocolError("slots: not strictly increasing")
    # the last slot must fit (Python integers: no overflow however large the gaps)
    if gaps.size and first + int(gaps.max()) * gaps.size >= 1 << 62 and first + sum(map(int, gaps)) >= 1 << 62:
        raise ProtocolError("slots: beyond 2^62")
    out = np.empty(n, dtype=np.int64)
    out[0] = first
    np.cumsum(gaps, out=out[1:])
    out[1:] += first
    return out


def check_config(stage: str, mine: Mapping, theirs: Mapping, my_side: str, their_side: str) -> None:
    """Raise ConfigMismatch naming the first differing field and both values."""
    for k in list(mine) + [k for k in theirs if k not in mine]:  # declaration order: the main field first
        a, b = mine.get(k, "<absent>"), theirs.get(k, "<absent>")
        if isinstance(a, float) or isinstance(b, float):
            same = isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)
        else:
            same = a == b
        if not same:
            raise ConfigMismatch(f"{stage}: configuration mismatch: {k} is {a!r} at the {my_side.upper()} but "
                                 f"{b!r} at the {their_side.upper()}")


class KeyBlock:
    """One key block as held by a stage half."""

    __slots__ = ("num", "id", "bits", "info", "extra", "seq_in", "seq_out", "state", "t0", "msgs", "trips")

    def __init__(self, num: int, block_id: str, bits: np.ndarray, info: dict, extra: dict | None = None) -> None:
        self.num, self.id, self.bits, self.info = num, block_id, bits, info
        self.extra = extra or {}
        self.seq_in = 0
        self.seq_out = 0
        self.state: dict = {}
        self.t0 = time.perf_counter()
        self.msgs = 0
        self.trips = 0


def sync_ports_in() -> tuple:
    return (Stream("sync", SYNC_DTYPE, doc="slot ranges from the previous stage (drives finishing; sim. clock)"),)


def sync_ports_out() -> tuple:
    return (Stream("sync", SYNC_DTYPE, optional=True, doc="slot ranges for the next stage"),)


class Half(Block):
    """Common base of every distillation half (not a block type itself)."""

    category = "post-processing"
    stage: ClassVar[str] = ""          # peer-protocol stage name ("" = no peer)
    side: ClassVar[str] = ""           # "aau" | "du"
    config_fields: ClassVar[tuple[str, ...]] = ()
    has_prev: ClassVar[bool] = True    # receives key blocks on "key"
    has_next: ClassVar[bool] = True    # emits key blocks on "key"
    # Deferred authentication (qkdflow.runtime.auth): message types this half sends without a tag of their own
    # (covered by the edge's next tagged message), and the types it accepts so from its peer. Every other type
    # must arrive tagged. A half may defer only messages whose exchange ends in tagged messages both ways before
    # anything derived from them leaves the stage (reconcile: Cascade's request/reply and blind LDPC's
    # reveal_request/reveals, closed by done/done_ok).
    deferred_types: ClassVar[frozenset] = frozenset()
    peer_deferred_types: ClassVar[frozenset] = frozenset()

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._peer_ok = not self.stage
        self._fatal: tuple[str, float] | None = None
        self._prev_ended = not self.has_prev
        self._prev_end_t = 0.0
        self._done = False
        self._slots = 0
        self._busy_s = 0.0
        self._rate_hz: float | None = None
        self._peer_in_t = self._peer_out_t = time.monotonic()  # last message from / to the peer (awaiting_peer)
        self.count("blocks_done", 0)
        self.count("blocks_aborted", 0)
        self.abort_reasons: list[str] = []
        if self.stage and self.side == "du":
            self._send_raw(envelope(self.stage, "hello", config=self.config(), **self.hello_payload()))

    def config(self) -> dict:
        return {k: getattr(self, k) for k in self.config_fields}

    def _in_sequence(self, blk, bid: str, seq: int) -> bool:
        """A peer message must name the block in this stage and carry its next stage sequence; else abort it."""
        if bid != blk.id:
            self.abort(blk, f"message for the wrong block id ({bid} instead of {blk.id})")
            return False
        if seq != blk.seq_in:
            self.abort(blk, f"message out of sequence (seq {seq}, expected {blk.seq_in})")
            return False
        blk.seq_in += 1
        blk.msgs += 1
        return True

    def _check_fatal(self) -> None:
        if self._fatal is not None and time.monotonic() >= self._fatal[1]:
            raise BlockError(self._fatal[0])

    def finished(self) -> bool:
        """Done with every key block. The runtime then sends our message end-of-stream and keeps
        reading our inputs until every peer has ended too, so no stage sends into a closed one."""
        self._check_fatal()
        return self._done

    def work(self, ins):
        self._check_fatal()
        out = self.pass_sync(ins["sync"])
        return {"sync": out} if self.port("out", "sync") is not None else None

    def pass_sync(self, f: Frame) -> Frame:
        self._slots += f.slots
        r = f.meta.get("rate_hz") if isinstance(f.meta, dict) else None
        if isinstance(r, (int, float)) and r > 0:
            self._rate_hz = float(r)
        meta = {"rate_hz": self._rate_hz} if self._rate_hz else {}
        return Frame(f.start, f.stop, _EMPTY, [], meta)

    def handle(self, port: str, msg: dict) -> None:
        t0 = time.perf_counter()
        try:
            if port == "key":
                self._on_prev(msg)
            elif port == "peer":
                self._peer_in_t = time.monotonic()
                self._check_tagged(msg)
                self._on_peer_raw(msg)
            else:
                raise BlockError(f"no handler for messages on port {port!r}")
        finally:
            self._busy_s += time.perf_counter() - t0

    def report(self) -> dict:
        return {"busy_s": round(self._busy_s, 6)}

    def _check_tagged(self, msg: Mapping) -> None:
        """A peer message the transport delivered unauthenticated (deferred tag) must be of a deferrable type:
        a genuine peer tags every other one, so this is an attack on the channel and the run stops."""
        if not isinstance(msg, Mapping) or msg.get("_auth") != "deferred":
            return
        t = msg.get("type")
        if t not in self.peer_deferred_types:
            peer = "DU" if self.side == "aau" else "AAU"
            raise BlockError(f"{self.stage}: {t!r} from the {peer} arrived without its authentication tag")

    # ---- sending -----------------------------------------------------------------------------------
    def _send_raw(self, msg: dict) -> None:
        if msg.get("type") in self.deferred_types:   # its tag deferred to the edge's next tagged message
            msg["_auth"] = "defer"
        self.emit("peer", msg)
        self._peer_out_t = time.monotonic()

    def send_peer(self, blk: KeyBlock, type_: str, **payload: Any) -> None:
        self._send_raw(envelope(self.stage, type_, blk.id, blk.num, blk.seq_out, **payload))
        blk.seq_out += 1
        blk.msgs += 1

    def forward(self, blk: KeyBlock, bits: np.ndarray, **extra: Any) -> None:
        """Hand a finished block to the next stage (in-node)."""
        info = blk.info
        info.setdefault("messages", {})[self.stage or "estimate"] = blk.msgs
        info.setdefault("round_trips", {})[self.stage or "estimate"] = blk.trips
        info.setdefault("stage_s", {})[f"{self.stage or 'estimate'}_{self.side}"] = round(
            time.perf_counter() - blk.t0, 6)
        self.count("blocks_done")
        if self.has_next:
            self.emit("key", {"type": "key", "block": blk.id, "num": blk.num, "bits": pack_bits(bits),
                              "n_bits": int(bits.size), "info": info, **extra})

    def notice_abort(self, num: int, block_id: str, reason: str, stage: str, by_peer: bool) -> None:
        """Count, log and forward an abort notice down the in-node chain."""
        self.count("blocks_aborted")
        self.abort_reasons.append(f"block {num}: {reason}")
        self.log(f"block {num} aborted: {reason}" + (f" (by the {'DU' if self.side == 'aau' else 'AAU'})"
                                                      if by_peer else ""))
        if self.has_next:
            self.emit("key", {"type": "abort", "block": block_id, "num": num, "stage": stage, "reason": reason})

    def _hello(self, msg: dict) -> None:
        cfg = msg.get("config")
        if not isinstance(cfg, Mapping):
            raise ProtocolError(f"{self.stage}: hello without config")
        other = "du" if self.side == "aau" else "aau"
        try:
            check_config(self.stage, self.config(), cfg, self.side, other)
        except ConfigMismatch as e:
            if self.side == "aau":
                # Answer first so that the DU detects the mismatch too (both nodes stop); fail a moment later, as a
                # failing node closes its sockets without linger and would drop the answer.
                self._send_raw(envelope(self.stage, "hello", config=self.config()))
                self._fatal = (str(e), time.monotonic() + 0.3)
                return
            raise BlockError(str(e)) from None
        self.on_hello(msg)
        if self.side == "aau":
            self._send_raw(envelope(self.stage, "hello", config=self.config(), **self.hello_payload()))
        self._peer_ok = True

    def on_hello(self, msg: dict) -> None:
        """Subclass hook: extra hello payload from the peer."""

    def hello_payload(self) -> dict:
        return {}

    # ---- to be provided ------------------------------------------------------------------------------
    def _on_prev(self, msg: dict) -> None:
        raise NotImplementedError

    def _on_peer_raw(self, msg: dict) -> None:
        raise NotImplementedError


class DuHalf(Half):
    """DU half: one active block per stage; drives the exchange; decides completion or abort."""

    side = "du"

    def start(self) -> None:
        super().start()
        self._queue: deque[KeyBlock] = deque()
        self._active: KeyBlock | None = None
        self._aborted: set[int] = set()
        self._finished_nums: set[int] = set()

    def awaiting_peer(self) -> tuple[float, str] | None:
        """The active block waits for the AAU: the DU drives every exchange, so the AAU owes the next message since
        the later of the DU's last message and the AAU's. The hello is not timed: an AAU may build LDPC code pools
        for minutes before it answers."""
        blk = self._active
        if blk is None or not self.stage:
            return None
        return max(self._peer_in_t, self._peer_out_t), f"{self.stage}: block {blk.num} waits for the AAU"

    # --- from the previous stage (in-node) ---
    def _on_prev(self, msg: dict) -> None:
        t = msg.get("type")
        if t == "key":
            bits = unpack_bits(msg["bits"], int(msg["n_bits"]))
            extra = {k: v for k, v in msg.items() if k not in ("type", "block", "num", "bits", "n_bits", "info")}
            self._queue.append(KeyBlock(int(msg["num"]), str(msg["block"]), bits, dict(msg["info"]), extra))
        elif t == "abort":
            self.relay_abort(msg)
        elif t == "end":
            self._prev_ended = True
            self._prev_end_t = time.monotonic()
        else:
            raise BlockError(f"unknown in-node message type {t!r}")
        self._pump()

    def relay_abort(self, msg: dict) -> None:
        """An earlier DU stage aborted a block: pass the notice on (subclasses may tell the peer)."""
        if self.has_next:
            self.emit("key", dict(msg))

    def _pump(self) -> None:
        while self._active is None and self._queue and self._peer_ok:
            blk = self._queue.popleft()
            self._active = blk
            self.begin(blk)
        if self._active is None and not self._queue and self._prev_ended and self._peer_ok and not self._done:
            self.finish_stage()

    def finish_stage(self) -> None:
        if self.stage:
            self._send_raw(envelope(self.stage, "end"))
        if self.has_next:
            self.emit("key", {"type": "end"})
        self._done = True

    # --- stage verbs for subclasses ---
    def begin(self, blk: KeyBlock) -> None:
        raise NotImplementedError

    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        raise NotImplementedError

    def complete(self, blk: KeyBlock, bits: np.ndarray, **extra: Any) -> None:
        self.forward(blk, bits, **extra)
        self._finished_nums.add(blk.num)
        self._active = None
        self._pump()

    def on_abort(self, blk: KeyBlock) -> None:
        """Subclass hook: release what this stage holds for an aborted block."""

    def abort(self, blk: KeyBlock, reason: str, tell_peer: bool = True) -> None:
        if tell_peer and self.stage:
            self.send_peer(blk, "abort", reason=reason)
        self.on_abort(blk)
        self.notice_abort(blk.num, blk.id, reason, self.stage or "estimate", by_peer=False)
        self._aborted.add(blk.num)
        self._active = None
        self._pump()

    # --- from the AAU ---
    def _on_peer_raw(self, msg: dict) -> None:
        t, bid, num, seq = parse(msg, self.stage)
        if t == "hello":
            if self._peer_ok:
                raise BlockError(f"{self.stage}: second hello from the AAU")
            self._hello(msg)
            self._pump()
            return
        if not self._peer_ok:
            raise BlockError(f"{self.stage}: {t!r} from the AAU before its hello")
        blk = self._active
        if blk is None or num != blk.num:
            if num in self._aborted:
                self.count("stale_messages")
                return
            raise BlockError(f"{self.stage}: AAU message {t!r} for block {num}, which is not in this stage "
                             f"(active: {blk.num if blk else 'none'})")
        if not self._in_sequence(blk, bid, seq):
            return
        if t == "abort":
            self.on_abort(blk)
            self.notice_abort(blk.num, blk.id, str(msg.get("reason", "")), self.stage, by_peer=True)
            self._aborted.add(blk.num)
            self._active = None
            self._pump()
            return
        blk.trips += 1
        try:
            self.on_peer(blk, t, msg)
        except ProtocolError as e:
            if self._active is blk:
                self.abort(blk, f"bad message: {e}")


class AauHalf(Half):
    """AAU half: holds blocks from its previous stage, answers the DU, forwards on the DU's word."""

    side = "aau"

    def start(self) -> None:
        super().start()
        self._held: dict[int, KeyBlock] = {}
        self._early: dict[int, list[dict]] = {}
        self._n_early = 0
        self._aborted: set[int] = set()
        self._finished_nums: set[int] = set()
        self._peer_ended = False

    def _on_prev(self, msg: dict) -> None:
        t = msg.get("type")
        if t == "key":
            num = int(msg["num"])
            if num in self._aborted:
                self.count("discarded_after_abort")
                return
            bits = unpack_bits(msg["bits"], int(msg["n_bits"]))
            extra = {k: v for k, v in msg.items() if k not in ("type", "block", "num", "bits", "n_bits", "info")}
            self._held[num] = KeyBlock(num, str(msg["block"]), bits, dict(msg["info"]), extra)
            for m in self._early.pop(num, []):
                self._n_early -= 1
                self._on_peer_raw(m)
        elif t == "abort":
            if self.has_next:
                self.emit("key", dict(msg))
        elif t == "end":
            self._prev_ended = True
            self._prev_end_t = time.monotonic()
        else:
            raise BlockError(f"unknown in-node message type {t!r}")
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._done or not (self._peer_ended and self._prev_ended):
            return
        for num, blk in sorted(self._held.items()):
            self.notice_abort(num, blk.id, "the DU ended without finishing this block", self.stage, by_peer=False)
        self._held.clear()
        if self._early:
            self.log(f"discarded {self._n_early} DU messages for blocks that never reached this stage")
        if self.has_next:
            self.emit("key", {"type": "end"})
        self._done = True

    # --- verbs ---
    def on_peer(self, blk: KeyBlock, type_: str, msg: dict) -> None:
        raise NotImplementedError

    def complete(self, blk: KeyBlock, bits: np.ndarray, **extra: Any) -> None:
        self.forward(blk, bits, **extra)
        self._held.pop(blk.num, None)
        self._finished_nums.add(blk.num)

    def abort(self, blk: KeyBlock, reason: str, tell_peer: bool = True) -> None:
        if tell_peer:
            self.send_peer(blk, "abort", reason=reason)
        self._drop(blk.num, blk.id, reason, by_peer=False)

    def on_abort(self, blk: KeyBlock) -> None:
        """Subclass hook: release what this stage holds for an aborted block."""

    def _drop(self, num: int, block_id: str, reason: str, by_peer: bool) -> None:
        blk = self._held.pop(num, None)
        if blk is not None:
            self.on_abort(blk)
        self._aborted.add(num)
        self.notice_abort(num, block_id, reason, self.stage, by_peer=by_peer)

    def _on_peer_raw(self, msg: dict) -> None:
        if self._fatal is not None:  # configuration mismatch: about to fail
            return
        t, bid, num, seq = parse(msg, self.stage)
        if t == "hello":
            if self._peer_ok:
                raise BlockError(f"{self.stage}: second hello from the DU")
            self._hello(msg)
            return
        if not self._peer_ok:
            raise BlockError(f"{self.stage}: {t!r} from the DU before its hello")
        if t == "end":
            self._peer_ended = True
            self._maybe_finish()
            return
        blk = self._held.get(num)
        if blk is None:
            if num in self._aborted:
                self.count("stale_messages")
                return
            if num in self._finished_nums:
                raise BlockError(f"{self.stage}: DU message {t!r} for block {num}, already finished here")
            if t == "abort":  # the block has not reached this stage (yet): drop it on arrival
                self._drop(num, bid, str(msg.get("reason", "")), by_peer=True)
                return
            self._n_early += 1
            if self._n_early > MAX_EARLY_MESSAGES:
                raise BlockError(f"{self.stage}: more than {MAX_EARLY_MESSAGES} DU messages for blocks that "
                                 f"never arrived from the previous stage")
            self._early.setdefault(num, []).append(msg)
            return
        if not self._in_sequence(blk, bid, seq):
            return
        if t == "abort":
            self._drop(num, bid, str(msg.get("reason", "")), by_peer=True)
            return
        try:
            self.on_peer(blk, t, msg)
        except ProtocolError as e:
            if blk.num in self._held:
                self.abort(blk, f"bad message: {e}")


def new_block_id() -> str:
    return str(uuid.uuid4())


def key_length(n_x, n_z, m_z, source: Mapping, eps_sec: float, eps_cor: float, leak_bits: float):
    """Lim et al., PRA 89, 022307 (2014), Eqs. (1)-(5) for one block's observed counts.

    ``n_x``: key-basis (our Z = Lim's X) detections per intensity class (signal, decoy, vacuum); ``n_z``,
    ``m_z``: test-basis (our X = Lim's Z) detections and errors per class; ``source``: {"intensities",
    "probabilities"} as announced by the AAU; ``leak_bits``: lambda_EC, the bits actually disclosed by error
    correction plus the verification tag. Lim's ``log2(2/eps_cor)`` term (the tag of an ideal
    ceil(log2 1/eps_cor)-bit hash) is kept as well, so the tag is charged twice: conservative by at most
    log2(2/eps_cor) bits (~41 bits at 1e-12), never optimistic. Returns ``qkdflow.physics.finite_key.FiniteKey``.
    """
    from qkdflow.physics.finite_key import lim2014_key_length
    return lim2014_key_length(np.asarray(n_x, float), np.asarray(n_z, float), np.asarray(m_z, float),
                              source["intensities"], source["probabilities"], eps_sec, eps_cor, float(leak_bits))


class BlockSizeMixin:
    """``block_bits`` / ``min_block_bits``: parameters, checks and the config both sifting halves exchange."""

    config_fields = ("block_bits", "min_block_bits")
    params = (
        Param("block_bits", int, 100_000, unit="bits", doc="sifted key-basis bits per key block", low=64),
        Param("min_block_bits", int, None, unit="bits",
              doc="smallest final partial block kept at end of stream (default block_bits / 2)", low=64),
    )

    def validate(self) -> list[str]:
        if self.min_block_bits is not None and self.min_block_bits > self.block_bits:
            return [f"min_block_bits: {self.min_block_bits} exceeds block_bits {self.block_bits}"]
        return []

    def config(self) -> dict:
        mb = self.min_block_bits if self.min_block_bits is not None else self.block_bits // 2
        return {"block_bits": self.block_bits, "min_block_bits": mb}
