"""ZeroMQ source reading GNU Radio's gr-zeromq stream format (pull_source / sub_source).

Wire format as in ``zmq_sink`` (``qkdflow.gr.wire``). Like GNU Radio, the source connects by
default. GNU Radio never sends end-of-stream, so this source ends after ``item_count`` items
(0: no limit) or after ``idle_timeout_s`` without data once data has flowed; if nothing at all
arrives within ``first_item_timeout_s`` it stops with an error naming the address. Items become
frames of ``items_per_frame`` slots: item i of the stream is slot i.
"""
from __future__ import annotations

import time

from qkdflow.gr.sockets import STOP_COUNT, GrStreamReceiver
from qkdflow.gr.wire import GR_ITEM_TYPES, gr_item_dtype
from qkdflow.runtime.block import DONE, Block, BlockError, Frame, Stream, Tag
from qkdflow.runtime.params import Param


class ZmqSource(Block):
    """Receive a stream from GNU Radio (gr-zeromq PULL/SUB wire format)."""

    category = "interop"
    params = (
        Param("address", str, doc="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555"),
        Param("pattern", str, "pull", doc="pull (PUSH/PULL) or sub (PUB/SUB)", choices=("pull", "sub")),
        Param("item_type", str, "float", doc="GNU Radio item type", choices=tuple(GR_ITEM_TYPES)),
        Param("vlen", int, 1, doc="items per vector", low=1),
        Param("pass_tags", bool, False, doc="expect the 19-byte tag header with PMT tags"),
        Param("key", str, "", doc="PUB/SUB topic to subscribe to (sub only)"),
        Param("bind", bool, False, doc="connect (GNU Radio's default for sources) or bind"),
        Param("hwm", int, -1, doc="high-water mark in messages (-1: ZeroMQ default)", low=-1),
        Param("item_count", int, 0, doc="stop after this many items (0: no limit)", low=0),
        Param("idle_timeout_s", float, 1.0, unit="s", doc="end of stream after this long without data", low=0.0,
              low_open=True),
        Param("first_item_timeout_s", float, 30.0, unit="s", doc="error if no data at all within this time", low=0.0,
              low_open=True),
        Param("items_per_frame", int, 65536, doc="items per output frame (at most)", low=1),
    )
    outputs = (Stream("out", doc="received items (numpy dtype of item_type × vlen, flattened)"),)

    def validate(self) -> list[str]:
        if self.key and self.pattern != "sub":
            return ["key: only the sub pattern filters on a key"]
        return []

    def start(self) -> None:
        self.dtype = gr_item_dtype(self.item_type, self.vlen)
        self.rx = GrStreamReceiver(self.address, self.dtype, pattern=self.pattern, pass_tags=self.pass_tags,
                                   key=self.key, bind=self.bind, hwm=self.hwm)
        self.t_start = self.t_last = time.monotonic()
        self.received = 0

    def work(self, ins):
        if self.item_count and self.received >= self.item_count:
            return DONE
        want = self.items_per_frame
        if self.item_count:
            want = min(want, self.item_count - self.received)
        # short waits so the runtime can look at its stop flag between calls
        got = self.rx.receive(max_items=want, idle_timeout_ms=50)
        now = time.monotonic()
        n = len(got.items)
        if n == 0:
            if self.received == 0 and now - self.t_start > self.first_item_timeout_s:
                raise BlockError(f"no data from {self.address} within {self.first_item_timeout_s:g} s")
            if self.received and now - self.t_last > self.idle_timeout_s:
                self.count("ended_idle", 1)
                return DONE
            return {}
        self.t_last = now
        start = self.received
        self.received += n
        self.count("items", n)
        items = got.items.reshape(-1) if self.vlen > 1 else got.items
        tags = [Tag(t.offset, str(t.key), t.value, str(t.srcid)) for t in got.tags]
        if got.stopped == STOP_COUNT and self.item_count and self.received >= self.item_count:
            self.count("ended_count", 1)
        return {"out": Frame(start, start + n, items, tags)}

    def stop(self) -> None:
        self.rx.close()
