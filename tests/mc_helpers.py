"""Test helper blocks for the Monte-Carlo agreement tests (the lead will turn LinkCounter into link_monitor).

LinkCounter joins Alice's preparation stream (AAU) with Bob's clicks (DU) per slot, recomputing Alice's choices for
the clicked slots only with ``qkdflow.prng.prep_choices`` (cost ∝ clicks), and accumulates per intensity class:
clicks (any detector), matched-basis clicks, errors in matched bases (single wrong click = 1, double click = 1/2,
i.e. the squashing map's expected error), double clicks and wrong-only clicks in matched bases.
"""
from __future__ import annotations

import numpy as np

from qkdflow import prng
from qkdflow.runtime.block import Block, Stream
from qkdflow.streams import CLICK_DTYPE, PREP_DTYPE


class LinkCounter(Block):
    """Per-class gain/QBER counts from prep (AAU) and clicks (DU)."""

    category = "test"
    inputs = (Stream("prep", PREP_DTYPE), Stream("clicks", CLICK_DTYPE))

    def start(self) -> None:
        self.slots = 0
        self.clicks = np.zeros(3, np.int64)
        self.matched = np.zeros(3, np.int64)
        self.errors = np.zeros(3, np.float64)
        self.doubles = np.zeros(3, np.int64)
        self.wrong_only = np.zeros(3, np.int64)

    def work(self, ins):
        prep, clk = ins["prep"], ins["clicks"]
        self.slots += prep.slots
        c = clk.data
        if c.size == 0:
            return None
        cls, basis, bit = prng.frame_choices(prep, c["slot"])
        matched = basis == c["basis"]
        bob = (c["mask"] >> (2 * c["basis"])) & 3
        right = (bob >> bit) & 1
        wrong = (bob >> (1 - bit)) & 1
        err = np.where(right & wrong, 0.5, wrong.astype(float))
        self.clicks += np.bincount(cls, minlength=3)
        self.matched += np.bincount(cls[matched], minlength=3)
        self.errors += np.bincount(cls[matched], weights=err[matched], minlength=3)
        self.doubles += np.bincount(cls[matched & (right & wrong).astype(bool)], minlength=3)
        self.wrong_only += np.bincount(cls[matched & (wrong & ~right).astype(bool)], minlength=3)
        return None

    def report(self) -> dict:
        return {"slots_seen": int(self.slots), "class_clicks": self.clicks.tolist(),
                "class_matched": self.matched.tolist(), "class_errors": self.errors.tolist(),
                "class_doubles": self.doubles.tolist(), "class_wrong_only": self.wrong_only.tolist()}
