"""Slot source: frames of a plain stream, for pass-through graphs, tests and benchmarks.

Emits ``frames`` frames of ``slots_per_frame`` pulse slots each; every item is the slot index
modulo 2**31 as ``int32`` (``dtype: int32``), a byte (``uint8``) or a float (``float32``).
No physics: this is the runtime's signal generator, like GNU Radio's ``vector_source``.
"""
from __future__ import annotations

import numpy as np

from qkdflow.runtime.block import DONE, Block, Frame, Stream
from qkdflow.runtime.params import Param


class SlotSource(Block):
    """Frames of slot-indexed items (int32/uint8/float32), a fixed number of them."""

    category = "runtime"
    params = (
        Param("frames", int, 10, doc="number of frames to emit", low=0),
        Param("slots_per_frame", int, 1024, unit="slots", doc="pulse slots covered by each frame", low=1),
        Param("dtype", str, "int32", doc="item type", choices=("int32", "uint8", "float32")),
        Param("pattern", str, "ramp", doc="ramp (slot index) or zeros (one reused buffer: a free source)",
              choices=("ramp", "zeros")),
    )
    outputs = (Stream("out", None, doc="one item per slot"),)

    def start(self) -> None:
        self.sent = 0
        # one pre-built payload: the source must not be the bottleneck of a runtime benchmark
        self._base = np.arange(self.slots_per_frame, dtype=np.int64)
        self._zeros = np.zeros(self.slots_per_frame, dtype=self.dtype)

    def work(self, ins):
        if self.sent >= self.frames:
            return DONE
        start = self.sent * self.slots_per_frame
        if self.pattern == "zeros":
            data = self._zeros  # frames are immutable once sent, so one buffer serves them all
        else:
            data = ((self._base + start) % (1 << 31)).astype(self.dtype)
        self.sent += 1
        return {"out": Frame(start, start + self.slots_per_frame, data)}
