"""ZeroMQ sink speaking GNU Radio's gr-zeromq stream format (push_sink / pub_sink).

Wire format (gr-zeromq ``base_impl.cc``, ``tag_headers.cc``; GNU Radio 3.10, see
``qkdflow.gr.wire``): each frame's items go out as one message of raw little-endian items; with
``pass_tags`` a 19-byte header (magic 0x5FF0, version 1, offset, ntags) and PMT-encoded tags come
first. Like GNU Radio, the sink binds by default. Item type mapping (GNU Radio name -> numpy):
complex -> complex64, float -> float32, int -> int32, short -> int16, byte -> uint8; ``vlen`` > 1
makes each item a vector. Tag offsets become GNU Radio item offsets counted from the first item
this sink sent (GR's ``nitems_read``).
"""
from __future__ import annotations

from qkdflow.gr.sockets import GrStreamSender
from qkdflow.gr.wire import GR_ITEM_TYPES, Tag as GrTag, gr_item_dtype
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param


class ZmqSink(Block):
    """Send a stream to GNU Radio (gr-zeromq PUSH/PUB wire format)."""

    category = "interop"
    params = (
        Param("address", str, doc="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555"),
        Param("pattern", str, "push", doc="push (PUSH/PULL) or pub (PUB/SUB)", choices=("push", "pub")),
        Param("item_type", str, "float", doc="GNU Radio item type", choices=tuple(GR_ITEM_TYPES)),
        Param("vlen", int, 1, doc="items per vector", low=1),
        Param("pass_tags", bool, False, doc="send the 19-byte tag header with PMT tags"),
        Param("key", str, "", doc="PUB/SUB topic frame (pub only)"),
        Param("bind", bool, True, doc="bind (GNU Radio's default for sinks) or connect"),
        Param("hwm", int, -1, doc="high-water mark in messages (-1: ZeroMQ default)", low=-1),
        Param("wait_for_subscriber_s", float, 5.0, unit="s", doc="pub: wait this long for a subscriber", low=0.0),
    )
    inputs = (Stream("in", doc="items of item_type × vlen"),)

    def validate(self) -> list[str]:
        if self.key and self.pattern != "pub":
            return ["key: only the pub pattern carries a key"]
        return []

    def start(self) -> None:
        self.dtype = gr_item_dtype(self.item_type, self.vlen)
        self.sender = GrStreamSender(self.address, self.dtype, pattern=self.pattern, pass_tags=self.pass_tags,
                                     key=self.key, bind=self.bind, hwm=self.hwm)
        if self.pattern == "pub" and not self.sender.wait_for_subscriber(int(self.wait_for_subscriber_s * 1000)):
            self.log(f"no subscriber on {self.address} after {self.wait_for_subscriber_s:g} s; PUB drops until one joins")

    def work(self, ins):
        f = ins["in"]
        items = f.data
        if self.vlen > 1:
            if items.ndim != 1 or items.size % self.vlen:
                raise BlockError(f"frame of {items.size} items is not a whole number of vectors of {self.vlen}")
            items = items.reshape(-1, self.vlen)
        base = self.dtype.base if self.vlen > 1 else self.dtype
        if items.dtype != base:
            raise BlockError(f"input items are {items.dtype}, but item_type {self.item_type} needs {base}")
        tags = []
        if self.pass_tags:
            n0 = self.sender.nitems_sent
            for t in f.tags:
                rel = t.offset - f.start
                if not 0 <= rel < len(items):
                    raise BlockError(f"tag {t.key!r} at slot {t.offset} lies outside the frame's items")
                tags.append(GrTag(n0 + rel, t.key, t.value, t.srcid or False))
        self.sender.send(items, tags)
        self.count("items", len(items))
        return None

    def stop(self) -> None:
        self.sender.close()
