"""Copy: pass every frame through unchanged (GNU Radio's ``blocks.copy``)."""
from __future__ import annotations

from qkdflow.runtime.block import Block, Stream


class Copy(Block):
    """Pass frames through unchanged."""

    category = "runtime"
    inputs = (Stream("in"),)
    outputs = (Stream("out"),)

    def work(self, ins):
        return {"out": ins["in"]}
