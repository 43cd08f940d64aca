"""Photon-number-splitting eavesdropper (Brassard, Lütkenhaus, Mor, Sanders, PRL 85, 1330 (2000)).

Model. Eve makes a quantum non-demolition measurement of the photon number N of every slot at her position (all
photons present: Alice's and noise, she cannot tell them apart). N >= 2: she splits off one photon, stores it
(its basis and bit are learnt once the basis is announced) and forwards the other N - 1 unchanged. N = 1: she blocks
the pulse with probability ``block_single_fraction`` (to keep Bob's rate at its expected value she would block
just enough singles; here the fraction is a parameter) and forwards it otherwise. N = 0: nothing.
In BLMS the attack also replaces the lossy channel by a lossless one; to model that, put this block at the AAU
output and make the fibre after it lossless (or shorten it) — this block itself adds no gain. Which photon of a
multi-photon slot is stored is uniform over the photons. Materialises everything at its position (cost ∝ photons).
Counters: multi_photon_pulses, photons_stored, stored_signal (from Alice), single_photon_pulses, singles_blocked.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons
from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE


class PnsAttack(Block):
    """Photon-number splitting: keep one photon of every multi-photon pulse, block a fraction of singles."""

    category = "eavesdropper"
    params = (
        Param("block_single_fraction", float, 0.0, doc="fraction of single-photon pulses blocked", low=0.0,
              high=1.0),
        Param("gate_width_ns", float, 1.0, unit="ns", doc="Eve's gate (noise photons per slot)", low=0.0,
              low_open=True),
        Param("seed", int, 32, doc="Eve's seed", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        for k in ("multi_photon_pulses", "photons_stored", "stored_signal", "single_photon_pulses",
                  "singles_blocked"):
            self.count(k, 0)

    def work(self, ins):
        f = ins["in"]
        ev = photons.materialise(f, self._rng, 1.0, self.gate_width_ns).data.copy()
        if ev.size == 0:
            return {"out": photons.photon_frame(f, ev, [])}
        n = ev["n"].astype(np.int64)
        slots, first, inv = np.unique(ev["slot"], return_index=True, return_inverse=True)
        total = np.bincount(inv, weights=n).astype(np.int64)
        # events are sorted by slot: the photon index r in [0, N) of the stored photon picks its event
        cum = np.cumsum(n)
        start_of_slot = cum[first] - n[first]
        r = (self._rng.random(slots.size) * total).astype(np.int64)
        multi = total >= 2
        pick = np.searchsorted(cum, start_of_slot[multi] + r[multi], side="right")
        ev["n"][pick] -= 1
        self.count("multi_photon_pulses", int(multi.sum()))
        self.count("photons_stored", int(multi.sum()))
        self.count("stored_signal", int((ev["origin"][pick] == photons.ORIGIN_SIGNAL).sum()))
        single = total == 1
        blocked = single & (self._rng.random(slots.size) < self.block_single_fraction)
        self.count("single_photon_pulses", int(single.sum()))
        self.count("singles_blocked", int(blocked.sum()))
        keep = (ev["n"] > 0) & ~blocked[inv]
        return {"out": photons.photon_frame(f, ev[keep], [])}
