"""pyzmq sockets opened the way GNU Radio's gr-zeromq stream blocks open them.

Source: ``gr-zeromq/lib/base_impl.cc`` and ``{pub,push,rep}_sink_impl.cc`` /
``{sub,pull,req}_source_impl.cc`` (GNU Radio 3.10.5.1; digest in
/work/shared/reference/gnuradio.md 1.1-1.4, 1.7). Conventions kept:

* sinks (PUSH/PUB/REP) ``bind`` and sources (PULL/SUB/REQ) ``connect`` by default; both are
  configurable, as with the ``bind`` argument of GR >= 3.10.6;
* ``LINGER`` 1000 ms (stream blocks); ``hwm=-1`` leaves ZeroMQ's default high-water mark (1000),
  otherwise sinks set ``SNDHWM`` and sources ``RCVHWM``;
* PUB sets ``XPUB_NODROP = not drop_on_hwm`` (GR drops at the HWM by default);
* SUB subscribes to ``key``, which ZeroMQ matches as a *prefix* of the first frame; with a key
  the sender sends ``[key, message]``;
* each socket gets its own context unless one is passed (GR: one ``context_t(1)`` per block).

No end of stream. GNU Radio sources never signal end of stream, so
:meth:`GrStreamReceiver.receive` stops either when it has ``max_items`` items or when no
message arrived for ``idle_timeout_ms``, and says which (``STOP_COUNT`` / ``STOP_IDLE``).

Slow joiner. A PUB socket drops every message sent before a subscriber's subscription has
reached it, and ``connect`` is asynchronous, so the first messages after start-up are silently
lost. :class:`GrStreamSender` therefore opens its "pub" socket as XPUB (wire-identical to PUB for
SUB peers), and :meth:`GrStreamSender.wait_for_subscriber` blocks until a subscription covering
its key has arrived (XPUB delivers ``b"\\x01" + topic``). Without ``XPUB_VERBOSE`` ZeroMQ passes
on only the first subscription per topic, so this detects "at least one subscriber", not how many.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, NamedTuple

import numpy as np
import zmq

from qkdflow.gr.wire import (
    Tag, _key_bytes, _wire_dtype, decode_stream, encode_stream, frame_message, unframe_message,
)

__all__ = [
    "STOP_COUNT", "STOP_IDLE", "DEFAULT_LINGER_MS", "open_gr_socket", "Received",
    "GrStreamSender", "GrStreamReceiver",
]

STOP_COUNT = "count"  #: receive() returned because it had max_items items
STOP_IDLE = "idle"    #: receive() returned because no message arrived for idle_timeout_ms
DEFAULT_LINGER_MS = 1000  # gr-zeromq stream blocks (LINGER_DEFAULT in base_impl.cc)

# kind -> (zmq socket type, is_sink)
_KINDS = {
    "push": (zmq.PUSH, True), "pub": (zmq.PUB, True), "xpub": (zmq.XPUB, True), "rep": (zmq.REP, True),
    "pull": (zmq.PULL, False), "sub": (zmq.SUB, False), "req": (zmq.REQ, False),
}
_TRANSPORTS = ("tcp", "ipc", "inproc", "pgm", "epgm", "vmci", "ws", "wss", "udp")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: {value!r} must be an integer >= {minimum}")
    return int(value)


def open_gr_socket(
    kind: str,
    address: str,
    *,
    bind: bool | None = None,
    hwm: int = -1,
    linger_ms: int = DEFAULT_LINGER_MS,
    key: str | bytes = b"",
    drop_on_hwm: bool = True,
    context: zmq.Context | None = None,
) -> zmq.Socket:
    """Open a socket of ``kind`` (push/pub/xpub/rep sinks, pull/sub/req sources) like gr-zeromq.

    ``bind=None`` picks GR's default (sinks bind, sources connect). ``hwm=-1`` keeps ZeroMQ's
    default. ``key`` is the SUB subscription prefix (ignored by other kinds). With
    ``context=None`` a fresh context is created for this socket (as GR does per block); the
    caller then closes the socket and terminates ``sock.context`` (the stream classes do this).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {sorted(_KINDS)}")
    if not isinstance(address, str) or "://" not in address or address.split("://", 1)[0] not in _TRANSPORTS:
        raise ValueError(f"address: {address!r} is not a ZeroMQ endpoint like tcp://host:port or ipc:///path")
    hwm = _check_int("hwm", hwm, -1)
    linger_ms = _check_int("linger_ms", linger_ms, -1)
    zmq_type, is_sink = _KINDS[kind]
    do_bind = is_sink if bind is None else bool(bind)
    own_ctx = context is None
    ctx = zmq.Context() if own_ctx else context
    sock = ctx.socket(zmq_type)
    try:
        sock.setsockopt(zmq.LINGER, linger_ms)
        if hwm >= 0:
            sock.setsockopt(zmq.SNDHWM if is_sink else zmq.RCVHWM, hwm)
        if zmq_type in (zmq.PUB, zmq.XPUB):
            sock.setsockopt(zmq.XPUB_NODROP, 0 if drop_on_hwm else 1)
        if zmq_type == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, _key_bytes(key))
        if do_bind:
            sock.bind(address)
        else:
            sock.connect(address)
    except BaseException:
        sock.close(0)
        if own_ctx:
            ctx.term()
        raise
    return sock


def _endpoint(sock: zmq.Socket, address: str) -> str:
    # After bind, LAST_ENDPOINT resolves wildcards such as tcp://127.0.0.1:* to the real port.
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if last else address


class Received(NamedTuple):
    """Result of :meth:`GrStreamReceiver.receive`: items, tags with receiver offsets, why it stopped."""

    items: np.ndarray
    tags: list[Tag]
    stopped: str


class GrStreamSender:
    """A gr-zeromq ``push_sink`` / ``pub_sink`` equivalent: one message per :meth:`send` call.

    Tags (with ``pass_tags``) carry absolute offsets in this sender's item count, the first
    item ever sent being 0 (GR's ``nitems_read``).
    """

    def __init__(
        self,
        address: str,
        dtype: Any,
        *,
        pattern: str = "push",
        pass_tags: bool = False,
        key: str | bytes = b"",
        bind: bool = True,
        hwm: int = -1,
        linger_ms: int = DEFAULT_LINGER_MS,
        drop_on_hwm: bool = True,
        send_timeout_ms: int | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if pattern not in ("push", "pub"):
            raise ValueError(f"pattern: {pattern!r} is not 'push' or 'pub'")
        self._key = _key_bytes(key)
        if self._key and pattern != "pub":
            raise ValueError("key: only the 'pub' pattern carries a key frame")
        if send_timeout_ms is not None:
            send_timeout_ms = _check_int("send_timeout_ms", send_timeout_ms, 0)
        _wire_dtype(dtype)  # validates
        self.dtype = np.dtype(dtype)
        self.pattern, self.pass_tags, self.send_timeout_ms = pattern, bool(pass_tags), send_timeout_ms
        self._own_ctx = context is None
        # "pub" is XPUB so wait_for_subscriber() can see subscriptions; SUB peers cannot tell.
        self._sock = open_gr_socket("xpub" if pattern == "pub" else "push", address, bind=bind, hwm=hwm,
                                    linger_ms=linger_ms, drop_on_hwm=drop_on_hwm, context=context)
        self.endpoint = _endpoint(self._sock, address)
        self._nitems_sent = 0
        self._subscriptions: set[bytes] = set()

    @property
    def nitems_sent(self) -> int:
        """Items sent so far; the absolute offset the next :meth:`send` starts at."""
        return self._nitems_sent

    def send(self, items: np.ndarray, tags: Iterable[Tag] = ()) -> int:
        """Send ``items`` (shape ``(n,)`` or ``(n, vlen)`` of this sender's dtype) as one message.

        Returns n. With ``send_timeout_ms`` set, raises ``TimeoutError`` if the message could not
        be queued in time (nothing is sent and the offset does not advance).
        """
        arr = np.asarray(items)
        base = self.dtype.base if self.dtype.subdtype is not None else self.dtype
        if arr.ndim < 1 or arr.dtype.newbyteorder("=") != base.newbyteorder("=") or arr.shape[1:] != self.dtype.shape:
            raise ValueError(f"items: dtype {arr.dtype} shape {arr.shape} does not match sender dtype {self.dtype}")
        tags = list(tags)
        if tags and not self.pass_tags:
            raise ValueError("tags: this sender has pass_tags=False, so tags cannot be sent")
        msg = encode_stream(arr, self._nitems_sent if self.pass_tags else None, tags)
        frames = frame_message(msg, self._key)
        if self.send_timeout_ms is None:
            self._sock.send_multipart(frames, copy=False)
        else:
            if not self._sock.poll(self.send_timeout_ms, zmq.POLLOUT):
                raise TimeoutError(f"send: socket not writable within {self.send_timeout_ms} ms")
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                raise TimeoutError(f"send: socket not writable within {self.send_timeout_ms} ms") from None
        self._nitems_sent += arr.shape[0]
        return arr.shape[0]

    def wait_for_subscriber(self, timeout_ms: int, topic: str | bytes | None = None) -> bool:
        """("pub" only) Wait up to ``timeout_ms`` until some SUB peer's subscription is a prefix of
        ``topic`` (default: our key), i.e. until messages on that topic would be delivered.
        Returns whether one is. Without a key, pass the payload prefix that matters as ``topic``."""
        if self.pattern != "pub":
            raise ValueError("wait_for_subscriber: only the 'pub' pattern has subscribers")
        timeout_ms = _check_int("timeout_ms", timeout_ms, 0)
        want = self._key if topic is None else _key_bytes(topic)
        end = time.monotonic() + timeout_ms / 1000.0
        while True:
            while self._sock.poll(0, zmq.POLLIN):
                ev = self._sock.recv()
                if ev[:1] == b"\x01":
                    self._subscriptions.add(ev[1:])
                elif ev[:1] == b"\x00":
                    self._subscriptions.discard(ev[1:])
            if any(want.startswith(s) for s in self._subscriptions):
                return True
            left_ms = int((end - time.monotonic()) * 1000)
            if left_ms <= 0:
                return False
            self._sock.poll(left_ms, zmq.POLLIN)

    def close(self) -> None:
        """Close the socket (lingering up to ``linger_ms`` for queued messages)."""
        if not self._sock.closed:
            ctx = self._sock.context
            self._sock.close()
            if self._own_ctx:
                ctx.term()

    def __enter__(self) -> "GrStreamSender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrStreamReceiver:
    """A gr-zeromq ``pull_source`` / ``sub_source`` equivalent.

    Returned tags carry offsets in this receiver's item count (GR's ``nitems_written``
    rebasing), so they index the concatenation of everything :meth:`receive` has returned.
    Items of a message beyond ``max_items`` are kept for the next call, never dropped.
    Single-frame messages reaching a keyed SUB are dropped, as GR does, and counted in
    ``dropped_messages``.
    """

    def __init__(
        self,
        address: str,
        dtype: Any,
        *,
        pattern: str = "pull",
        pass_tags: bool = False,
        key: str | bytes = b"",
        bind: bool = False,
        hwm: int = -1,
        linger_ms: int = DEFAULT_LINGER_MS,
        context: zmq.Context | None = None,
    ) -> None:
        if pattern not in ("pull", "sub"):
            raise ValueError(f"pattern: {pattern!r} is not 'pull' or 'sub'")
        self._key = _key_bytes(key)
        if self._key and pattern != "sub":
            raise ValueError("key: only the 'sub' pattern filters on a key")
        _, self._native = _wire_dtype(dtype)
        self.dtype = np.dtype(dtype)
        self.pattern, self.pass_tags = pattern, bool(pass_tags)
        self._own_ctx = context is None
        self._sock = open_gr_socket(pattern, address, bind=bind, hwm=hwm, linger_ms=linger_ms,
                                    key=self._key, context=context)
        self.endpoint = _endpoint(self._sock, address)
        self._nitems_received = 0
        self._nitems_decoded = 0  # received + pending: stream index of the next message's 1st item
        self._pending: tuple[np.ndarray, list[Tag]] | None = None
        self.dropped_messages = 0

    @property
    def nitems_received(self) -> int:
        """Items returned by :meth:`receive` so far."""
        return self._nitems_received

    def receive(self, max_items: int | None = None, idle_timeout_ms: int = 100) -> Received:
        """Collect items until ``max_items`` are in hand (``STOP_COUNT``) or no message has
        arrived for ``idle_timeout_ms`` (``STOP_IDLE``). ``max_items=None`` means no limit."""
        if max_items is not None:
            max_items = _check_int("max_items", max_items, 0)
        idle_timeout_ms = _check_int("idle_timeout_ms", idle_timeout_ms, 0)
        chunks: list[np.ndarray] = []
        tags: list[Tag] = []
        n = 0
        stopped = STOP_COUNT
        while max_items is None or n < max_items:
            if self._pending is not None:
                items, msg_tags = self._pending
                self._pending = None
            else:
                try:  # poll (a syscall) only when nothing is queued yet
                    frames = self._sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    if not self._sock.poll(idle_timeout_ms, zmq.POLLIN):
                        stopped = STOP_IDLE
                        break
                    frames = self._sock.recv_multipart(copy=False)
                msg = unframe_message([f.buffer for f in frames], self._key)
                if msg is None:
                    self.dropped_messages += 1
                    continue
                items, offset, raw_tags = decode_stream(msg, self.dtype, self.pass_tags)
                msg_tags = [] if offset is None else [
                    Tag(self._nitems_decoded + (t.offset - offset), t.key, t.value, t.srcid) for t in raw_tags]
                self._nitems_decoded += items.shape[0]
            take = items.shape[0] if max_items is None else min(items.shape[0], max_items - n)
            boundary = self._nitems_received + n + take  # receiver offset just past what we keep
            if take < items.shape[0]:
                self._pending = (items[take:], [t for t in msg_tags if t.offset >= boundary])
                msg_tags = [t for t in msg_tags if t.offset < boundary]
            chunks.append(items[:take])
            tags.extend(msg_tags)
            n += take
        out = np.concatenate(chunks) if chunks else np.empty((0,) + self.dtype.shape, dtype=self._native.base)
        if out.dtype != self._native.base:
            out = out.astype(self._native.base)
        self._nitems_received += n
        return Received(out, tags, stopped)

    def close(self) -> None:
        """Close the socket; undelivered and pending items are discarded."""
        if not self._sock.closed:
            ctx = self._sock.context
            self._sock.close()
            if self._own_ctx:
                ctx.term()

    def __enter__(self) -> "GrStreamReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
