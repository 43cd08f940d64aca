"""User blocks for the runtime tests, loaded by ``module:Class`` from flowgraph YAML."""
from __future__ import annotations

import json
import time

import numpy as np

from qkdflow.runtime.block import DONE, Block, BlockError, Frame, Message, Stream
from qkdflow.runtime.params import Param


class Crash(Block):
    """Pass frames through, then raise on frame ``after``."""

    params = (Param("after", int, 3, low=0),)
    inputs = (Stream("in"),)
    outputs = (Stream("out"),)

    def start(self):
        self.n = 0

    def work(self, ins):
        self.n += 1
        if self.n > self.after:
            raise ZeroDivisionError("deliberate failure for the test")
        return {"out": ins["in"]}


class Collect(Block):
    """Record every frame's slot range and a checksum; write them as JSON at the end."""

    params = (Param("path", str, ""), Param("delay_s", float, 0.0))
    inputs = (Stream("in"),)

    def start(self):
        self.ranges = []
        self.sum = 0

    def work(self, ins):
        f = ins["in"]
        self.ranges.append([f.start, f.stop, len(f.data)])
        self.sum += int(np.asarray(f.data, dtype=np.int64).sum())
        if f.tags:
            self.count("tags", len(f.tags))
        if self.delay_s:
            time.sleep(self.delay_s)

    def report(self):
        return {"checksum": self.sum, "n_frames": len(self.ranges)}

    def stop(self):
        if self.path:
            with open(self.path, "w") as fh:
                json.dump({"ranges": self.ranges, "sum": self.sum}, fh)


class Watermark(Block):
    """A source of big frames that records how far ahead of the sink it gets (same process)."""

    params = (Param("frames", int, 50), Param("frame_bytes", int, 1 << 20))
    outputs = (Stream("out", np.uint8),)
    produced = 0

    def start(self):
        self.n = 0
        self.payload = np.zeros(self.frame_bytes, np.uint8)

    def work(self, ins):
        if self.n >= self.frames:
            return DONE
        self.n += 1
        Watermark.produced = self.n
        return {"out": Frame((self.n - 1) * self.frame_bytes, self.n * self.frame_bytes, self.payload)}


class LagSink(Block):
    """A slow sink recording the largest lead of Watermark over what it has consumed."""

    params = (Param("delay_s", float, 0.02),)
    inputs = (Stream("in", np.uint8),)

    def start(self):
        self.consumed = 0
        self.max_lead = 0

    def work(self, ins):
        self.consumed += 1
        self.max_lead = max(self.max_lead, Watermark.produced - self.consumed)
        time.sleep(self.delay_s)

    def report(self):
        return {"max_lead": self.max_lead, "consumed": self.consumed}


class Pinger(Block):
    """Sends ``count`` pings on ``ping`` and waits for every pong: a message cycle."""

    params = (Param("count", int, 5),)
    inputs = (Stream("in"), Message("pong"))
    outputs = (Message("ping"),)

    def start(self):
        self.sent = 0
        self.got = []
        self.since = time.monotonic()

    def work(self, ins):
        idle = self.sent == len(self.got)
        self.emit("ping", {"i": self.sent, "slots": np.arange(ins["in"].start, ins["in"].stop)[:3]})
        if idle:   # owed from when it left (a send waits while the peer is not connected)
            self.since = time.monotonic()
        self.sent += 1

    def handle(self, port, msg):
        self.got.append(msg["i"])
        self.since = time.monotonic()

    def awaiting_peer(self):
        n = self.sent - len(self.got)
        return (self.since, f"pinger: {n} ping(s) unanswered") if n else None

    def finished(self):
        return len(self.got) == self.sent

    def report(self):
        return {"pongs": len(self.got)}


class Ponger(Block):
    """Answers every ping with a pong (after ``delay_s``); after ``mute_after`` pings, never again (a stuck peer)."""

    params = (Param("mute_after", int, -1), Param("delay_s", float, 0.0))
    inputs = (Message("ping"),)
    outputs = (Message("pong"),)

    def start(self):
        self.n = 0

    def handle(self, port, msg):
        if msg["slots"].dtype != np.int64:
            raise BlockError("array lost its dtype on the wire")
        self.n += 1
        if 0 <= self.mute_after < self.n:
            return
        time.sleep(self.delay_s)
        self.emit("pong", {"i": msg["i"]})

    def report(self):
        return {"pings": self.n}
