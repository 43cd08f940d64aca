"""Null sink: consume frames, counting items and slots; optionally slowly (backpressure tests)."""
from __future__ import annotations

import time

from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param


class NullSink(Block):
    """Consume and count frames (optionally sleeping per frame to model a slow consumer)."""

    category = "runtime"
    params = (Param("delay_s", float, 0.0, unit="s", doc="sleep per frame (a slow consumer)", low=0.0),)
    inputs = (Stream("in"),)

    def work(self, ins):
        f = ins["in"]
        self.count("items", len(f.data))
        self.count("bytes", f.data.nbytes)
        if self.delay_s:
            time.sleep(self.delay_s)
        return None
