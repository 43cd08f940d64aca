"""Live tag stream source: time-tag batches over ZeroMQ (from a lab acquisition script, e.g. tools/tag_publisher.py).

Wire format, version 1 (defined here; ``tools/tag_publisher.py`` is the reference sender). One ZeroMQ multipart
message per batch: ``[topic, header, payload]``

* ``topic``: bytes (default ``b"tags"``; SUB sockets filter on it as a prefix).
* ``header``: UTF-8 JSON ``{"v": 1, "kind": "tags" | "end", "seq": n, "n": items}``; ``seq`` counts messages from 0
  (the end marker included), so a lost batch is detected, never skipped silently.
* ``payload``: ``n`` packed little-endian TAG_DTYPE records (int64 time_ps, int32 channel; 12 bytes each), times
  non-decreasing within and across batches. The end marker has an empty payload.

Patterns: ``sub`` (the sender binds an XPUB/PUB socket; this block connects and subscribes) or ``pull`` (PUSH/PULL).
End of stream: the end marker, or — only with ``idle_timeout_s`` > 0, for senders without an end marker — that long
without a batch after data has flowed. A stream that goes silent otherwise (nothing at start, or a pause with no
idle end configured) is a failure after ``stall_timeout_s``: reported, not waited on forever.
Frames: one per batch, covering tag indices ``[start, stop)`` (as ``tag_source``). Counters: tags, batches.
"""
from __future__ import annotations

import json
import time

import numpy as np
import zmq

from qkdflow.runtime.block import DONE, Block, BlockError, Frame, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import TAG_DTYPE

WIRE_VERSION = 1


def encode_batch(seq: int, tags: np.ndarray | None, topic: bytes = b"tags") -> list[bytes]:
    """Multipart message of one batch (``tags`` None: the end marker)."""
    if tags is None:
        return [topic, json.dumps({"v": WIRE_VERSION, "kind": "end", "seq": int(seq), "n": 0}).encode(), b""]
    tags = np.ascontiguousarray(tags, TAG_DTYPE)
    head = {"v": WIRE_VERSION, "kind": "tags", "seq": int(seq), "n": int(tags.size)}
    return [topic, json.dumps(head).encode(), tags.tobytes()]


def decode_batch(parts: list[bytes]) -> tuple[dict, np.ndarray | None]:
    """(header, tags) of a message; tags is None for the end marker. ValueError on a malformed message."""
    if len(parts) != 3:
        raise ValueError(f"expected 3 message parts (topic, header, payload), got {len(parts)}")
    try:
        head = json.loads(bytes(parts[1]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("header is not JSON") from None
    if not isinstance(head, dict) or head.get("v") != WIRE_VERSION or head.get("kind") not in ("tags", "end"):
        raise ValueError(f"unsupported header {head!r} (want v={WIRE_VERSION}, kind tags|end)")
    if not isinstance(head.get("seq"), int) or not isinstance(head.get("n"), int) or head["n"] < 0:
        raise ValueError(f"header needs integer seq and n >= 0, got {head!r}")
    if head["kind"] == "end":
        return head, None
    payload = bytes(parts[2])
    if len(payload) != head["n"] * TAG_DTYPE.itemsize:
        raise ValueError(f"payload of {len(payload)} bytes, header says {head['n']} tags x {TAG_DTYPE.itemsize} bytes")
    return head, np.frombuffer(payload, TAG_DTYPE).copy()


class TagStreamSource(Block):
    """Receive time-tag batches over ZeroMQ (SUB or PULL); explicit end marker, stall detection."""

    category = "detector"
    params = (
        Param("address", str, doc="ZeroMQ endpoint of the sender, e.g. tcp://127.0.0.1:5560"),
        Param("pattern", str, "sub", doc="sub (sender PUB/XPUB) or pull (sender PUSH)", choices=("sub", "pull")),
        Param("topic", str, "tags", doc="topic (first message part; SUB prefix filter)"),
        Param("bind", bool, False, doc="bind instead of connect"),
        Param("stall_timeout_s", float, 10.0, unit="s", doc="fail after this long without a batch", low=0.0,
              low_open=True),
        Param("idle_timeout_s", float, 0.0, unit="s", doc="end of stream after this long without a batch once data "
              "flowed (0: only the end marker ends the stream)", low=0.0),
        Param("hwm", int, 1000, doc="receive high-water mark in messages", low=1),
    )
    outputs = (Stream("out", TAG_DTYPE, doc="time tags; frame range = tag indices"),)

    def validate(self) -> list[str]:
        if not self.address.startswith(("tcp://", "ipc://", "inproc://")):
            return [f"address: expected tcp://, ipc:// or inproc://, got {self.address!r}"]
        if self.idle_timeout_s and self.idle_timeout_s >= self.stall_timeout_s:
            return ["idle_timeout_s: must be shorter than stall_timeout_s (else a pause is a stall)"]
        return []

    def start(self) -> None:
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB if self.pattern == "sub" else zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, self.hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.pattern == "sub":
            self._sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        (self._sock.bind if self.bind else self._sock.connect)(self.address)
        self._topic = self.topic.encode()
        self._seq = 0
        self._pos = 0
        self._last_t: int | None = None
        self._t_last_msg = time.monotonic()
        self._ended = False
        for k in ("tags", "batches"):
            self.count(k, 0)

    def work(self, ins):
        if self._ended:
            return DONE
        # short polls so the runtime sees its stop flag between calls
        if not self._sock.poll(50, zmq.POLLIN):
            silent = time.monotonic() - self._t_last_msg
            if self.idle_timeout_s and self._pos > 0 and silent > self.idle_timeout_s:
                self.count("ended_idle", 1)
                return DONE
            if silent > self.stall_timeout_s:
                what = "no tag batch at all" if self._seq == 0 else f"no tag batch after batch {self._seq - 1}"
                raise BlockError(f"{self.address}: stream stalled: {what} for {self.stall_timeout_s:g} s "
                                 f"(stall_timeout_s)")
            return {}
        parts = self._sock.recv_multipart(copy=True)
        self._t_last_msg = time.monotonic()
        if parts and parts[0] != self._topic:
            raise BlockError(f"{self.address}: message with topic {parts[0][:32]!r}, expected {self._topic!r}")
        try:
            head, tags = decode_batch(parts)
        except ValueError as e:
            raise BlockError(f"{self.address}: message {self._seq}: {e}") from None
        if head["seq"] != self._seq:
            raise BlockError(f"{self.address}: expected batch seq {self._seq}, got {head['seq']}: "
                             f"{head['seq'] - self._seq} batch(es) lost or the sender restarted")
        self._seq += 1
        if tags is None:
            self._ended = True
            self.count("ended_marker", 1)
            return DONE
        if tags.size == 0:
            return {}
        t = tags["time_ps"]
        if (self._last_t is not None and t[0] < self._last_t) or (t[1:] < t[:-1]).any():
            i = 0 if self._last_t is not None and t[0] < self._last_t else int(np.flatnonzero(t[1:] < t[:-1])[0]) + 1
            raise BlockError(f"{self.address}: batch {head['seq']}, tag {self._pos + i}: timestamp goes backwards")
        self._last_t = int(t[-1])
        start = self._pos
        self._pos += tags.size
        self.count("tags", int(tags.size))
        self.count("batches", 1)
        return {"out": Frame(start, self._pos, tags, meta={"tag_source": self.address,
                                                          "time_range_ps": [int(t[0]), int(t[-1])]})}

    def stop(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close(0)
            self._sock = None
