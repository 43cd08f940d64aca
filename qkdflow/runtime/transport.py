"""ZeroMQ edges: one PUSH/PULL socket pair per flowgraph edge.

Inside a node the pair meets at ``inproc://``; between nodes at the receiving node's ipc or
tcp endpoint (receiver binds, sender connects, so nodes may start in any order and ZeroMQ
reconnects by itself). High-water marks of ``queue_frames`` on both sockets bound memory: a
fast producer blocks in ``send`` until the consumer catches up — nothing is dropped.
Blocking calls wake every ``POLL_MS`` to look at the node's stop flag, so a failure elsewhere
stops the thread within a fraction of a second.
"""
from __future__ import annotations

import threading

import numpy as np
import zmq

from . import liveness, wire
from .auth import AuthFailure
from .block import Frame

POLL_MS = 50
# plain ints: pyzmq's enum flags cost microseconds per operation on the hot path
_NOBLOCK, _SNDMORE, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.SNDMORE), int(zmq.EVENTS), int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_ZERO_COPY = wire.ZERO_COPY_BYTES
RECONNECT_MS, RECONNECT_MAX_MS = 5, 25  # first retry of a refused connect, and the backoff's cap
LINGER_MS = 30000  # how long an ending node waits for its last parts to reach a slow peer


MALLOC_MMAP_THRESHOLD_BYTES = 32 << 20   # glibc's largest; buffers below it are reused from the heap
MALLOC_TRIM_THRESHOLD_BYTES = 64 << 20   # freed memory a process keeps before returning it to the kernel
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep large message buffers in the heap (glibc ``mallopt``; a no-op elsewhere). Returns whether it applied.

    ZeroMQ allocates every received message (1 MiB frames: 1 MiB each). glibc serves that size by ``mmap`` until
    a freed mapping raises its dynamic threshold, and trims freed heap memory back to the kernel, so a receiving
    node page-faulted most frames' buffers in again: 102 000 minor faults and 1.7 s of system time for 8 GiB
    over tcp, against 6 400 and 1.1 s with the thresholds fixed here (tools/bench_runtime.py). The memory kept
    is bounded by the trim threshold (64 MiB) plus the edges' bounded queues.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators behave differently
        return False
    m_trim, m_mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
    _malloc_tuned = bool(mallopt(m_mmap, MALLOC_MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(m_trim, MALLOC_TRIM_THRESHOLD_BYTES))
    return _malloc_tuned


class Stopped(Exception):
    """The node is stopping; unwind the block thread."""


class EdgeSender:
    """The producing end of one edge."""

    def __init__(self, ctx: zmq.Context, address: str, bind: bool, queue_frames: int, stop: threading.Event,
                 with_dtype: bool, label: str, auth=None, curve: tuple | None = None,
                 sndhwm: int | None = None) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        if curve is not None:  # (own public, own secret, server public): CURVE client
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        # sndhwm=0: no ZeroMQ limit, the caller bounds the edge itself (the single-thread scheduler's in-node edges)
        self.sock.setsockopt(zmq.SNDHWM, queue_frames if sndhwm is None else sndhwm)
        # Queue only on a live connection (a connect-side PUSH would otherwise queue into a pipe to a peer that is
        # not there yet), and give queued parts time to leave when the node ends: the node terms its context.
        if not address.startswith("inproc://"):  # inproc peers are bound before anyone connects
            self.sock.setsockopt(zmq.IMMEDIATE, 1)
            # a peer process still starting up: retry soon, then back off (ZeroMQ's fixed 100 ms costs up to
            # 100 ms of every run whose receiving node binds a moment after the sender first tries)
            self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
            self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        self.sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.sock.setsockopt(zmq.SNDTIMEO, POLL_MS)  # blocking sends (``send_*``) wake to look at the stop flag
        self.ended = False  # EOS built: a peer leaving after this is no loss (runtime.liveness)
        liveness.attach(ctx, self, address)
        (self.sock.bind if bind else self.sock.connect)(address)
        self.seq = 0  # parts numbered so far
        self.sent = 0  # parts handed to ZeroMQ
        self.stop = stop
        self.with_dtype = with_dtype
        self.label = label
        self.bytes = 0  # every part's bytes (headers and tags included): what this edge carried
        self.remote = not address.startswith("inproc://")  # to another node: what the network carries
        self.auth = auth  # runtime.auth.EdgeAuth on authenticated inter-node message edges
        self._dtype_cache: dict = {}

    # Parts are built (and numbered) first, then sent: blocking in a block thread (``send_*``), or
    # non-blocking by the single-thread scheduler (``*_parts`` + ``try_send``).
    def frame_parts(self, frame: Frame) -> list:
        data = frame.data
        if not isinstance(data, np.ndarray) or data.ndim != 1:
            raise TypeError(f"frame data for {self.label} must be a 1-D numpy array")
        parts = wire.encode_frame(self.seq, frame, self.with_dtype, self._dtype_cache)
        self.seq += 1
        self.bytes += len(parts[0]) + data.nbytes
        return parts

    def message_parts(self, msg: dict) -> list:
        defer = False
        if "_auth" in msg:   # the block's request for a deferred tag (runtime.auth): never on the wire itself
            defer = msg["_auth"] == "defer"
            msg = {k: v for k, v in msg.items() if k != "_auth"}
        parts = self._tagged(wire.encode_message(self.seq, msg), defer)
        self.bytes += sum(memoryview(p).nbytes for p in parts)
        return self._numbered(parts)

    def eos_parts(self) -> list:
        self.ended = True
        return self._numbered(self._tagged(wire.encode_eos(self.seq)))

    def _numbered(self, parts: list) -> list:
        self.seq += 1
        return parts

    def try_send(self, parts: list) -> bool:
        """Send without waiting; False when the queue is full (nothing sent)."""
        return self._put(parts, _NOBLOCK)

    def _put(self, parts: list, flags: int) -> bool:
        # part by part with int flags (send_multipart's enum arithmetic costs more than the send); ZeroMQ checks
        # the high-water mark on a message's first part only, so the rest cannot fail once it is accepted.
        # Zero-copy only for big buffers (pyzmq: copying is cheaper below ZERO_COPY_BYTES).
        send = self.sock.send
        last = len(parts) - 1
        try:
            send(parts[0], flags | _SNDMORE if last else flags)
        except zmq.Again:
            return False
        if last == 1:  # a data frame: header + payload
            p = parts[1]
            send(p, flags, copy=getattr(p, "nbytes", 0) < _ZERO_COPY)
        else:
            for k in range(1, last + 1):
                p = parts[k]
                send(p, flags | _SNDMORE if k < last else flags, copy=getattr(p, "nbytes", 0) < _ZERO_COPY)
        self.sent += 1
        return True

    def _send(self, parts: list) -> None:
        # a blocking send (GIL released while ZeroMQ waits for room, no zmq.Again and poll per full queue) that
        # gives up after SNDTIMEO = POLL_MS to look at the node's stop flag
        while not self._put(parts, 0):
            if self.stop.is_set():
                raise Stopped

    def send_frame(self, frame: Frame) -> None:
        self._send(self.frame_parts(frame))

    def send_message(self, msg: dict) -> None:
        self._send(self.message_parts(msg))

    def send_eos(self) -> None:
        self._send(self.eos_parts())

    def _tagged(self, parts: list, defer: bool = False) -> list:
        if self.auth is None:
            return parts
        return parts + [self.auth.tag(parts, self.seq, defer)]

    def close(self, linger_ms: int | None = None) -> None:
        if linger_ms is not None:
            self.sock.setsockopt(zmq.LINGER, linger_ms)
        self.sock.close()


class EdgeReceiver:
    """The consuming end of one edge; checks sequence numbers."""

    def __init__(self, ctx: zmq.Context, address: str, bind: bool, queue_frames: int, dtype: np.dtype | None,
                 label: str, auth=None, curve: tuple | None = None, accept_deferred: bool = False) -> None:
        self.sock = ctx.socket(zmq.PULL)
        if curve is not None:  # (own public, own secret): CURVE server; clients checked by the node's authenticator
            self.sock.curve_publickey, self.sock.curve_secretkey = curve
            self.sock.curve_server = True
        self.sock.setsockopt(zmq.RCVHWM, queue_frames)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, POLL_MS)  # a blocking ``recv`` raises zmq.Again after POLL_MS
        self.label, self.ended = label, False
        liveness.attach(ctx, self, address)
        (self.sock.bind if bind else self.sock.connect)(address)
        self.expect = 0
        self.dtype = dtype
        self.label = label
        self.ended = False
        self.auth = auth
        if auth is not None:   # deferred tags only into a block that declares which of its messages may have them
            auth.accept_deferred = accept_deferred
        self._big = False
        self._inproc = address.startswith("inproc://")  # the peer is this process's own EdgeSender
        self._trailer_cache: dict = {}

    def ready(self) -> bool:
        """Whether a part is waiting (cheaper than a receive that raises zmq.Again)."""
        return bool(self.sock.getsockopt(_EVENTS) & _POLLIN)

    def recv(self, flags: int = 0) -> tuple[int, object]:
        """Return ``(kind, Frame | dict | None)`` for the next part; raise WireError on trouble
        (and ``zmq.Again`` when nothing is there: at once with ``flags=zmq.NOBLOCK``, else after POLL_MS)."""
        # Part by part with int flags (recv_multipart's enum arithmetic costs more than the receive). The header
        # comes as a zmq.Frame: its ``more`` spares a getsockopt(RCVMORE), whose option-enum lookup costs ~1.6 µs.
        sock = self.sock
        h = sock.recv(flags, copy=False)
        head = h.bytes
        try:
            kind, seq, start, stop, trailer = wire.decode_header(head, self._trailer_cache)
        except wire.WireError as e:
            raise wire.WireError(f"edge {self.label}: {e}") from None
        if seq != self.expect:
            what = "gap" if seq > self.expect else "repeat/reorder"
            raise wire.WireError(f"edge {self.label}: sequence {what}: expected {self.expect}, got {seq}")
        if kind == wire.DATA and self.auth is None and h.more:  # the hot path: header + payload
            if self._inproc and not self._big:
                # a small payload from our own sender: copied (cheaper than a zmq.Frame below 64 KiB), and no
                # need to ask whether more parts follow: this process built the message, header + payload
                buf = sock.recv(0)
            else:  # zero-copy for big payloads (guessed from the last one on this edge); a peer's part count checked
                p = sock.recv(0, copy=False)
                if p.more:
                    raise wire.WireError(f"edge {self.label}: data frame with {2 + self._discard()} parts")
                buf = p.buffer
            self._big = len(buf) >= _ZERO_COPY
            self.expect += 1
            try:
                return kind, wire.decode_frame(start, stop, trailer, buf, self.dtype)
            except wire.WireError as e:
                raise wire.WireError(f"edge {self.label}: {e}") from None
        parts: list = [head]
        if h.more:
            copy = not self._big
            while True:
                p = sock.recv(0, copy=copy)
                parts.append(p)
                if not (sock.getsockopt(_RCVMORE) if copy else p.more):
                    break
        verified = None
        bufs = [p if isinstance(p, bytes) else p.buffer for p in parts[1:]]   # the payload parts (and tag)
        if self.auth is not None:
            if kind == wire.DATA or len(parts) < 2:
                raise wire.WireError(f"edge {self.label}: unauthenticated part on an authenticated edge")
            verified = self.auth.verify([head] + bufs[:-1], seq, bytes(bufs[-1]))
            if not verified and kind == wire.EOS:
                raise AuthFailure(f"edge {self.label}: end of stream without its authentication tag; the run stops")
            parts, bufs = parts[:-1], bufs[:-1]
        self.expect += 1
        if kind == wire.EOS:
            self.ended = True
            return kind, None
        try:
            self._big = any(len(b) >= _ZERO_COPY for b in bufs)
            if kind == wire.DATA:
                if len(parts) != 2:
                    raise wire.WireError(f"data frame with {len(parts)} parts")
                return kind, wire.decode_frame(start, stop, trailer, bufs[0], self.dtype)
            msg = wire.decode_message(trailer, bufs)
            if isinstance(msg, dict):   # whether the tag authenticated it (runtime.auth): set here, never by a peer
                if verified is False:
                    msg["_auth"] = "deferred"
                else:
                    msg.pop("_auth", None)
            return kind, msg
        except wire.WireError as e:
            raise wire.WireError(f"edge {self.label}: {e}") from None

    def _discard(self) -> int:
        """Receive and drop the rest of a malformed message; return how many parts that was."""
        n = 1
        while self.sock.recv(0, copy=False).more:
            n += 1
        return n

    def close(self) -> None:
        self.sock.close()
