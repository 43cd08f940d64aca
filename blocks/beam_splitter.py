"""Beam-splitting eavesdropper: Eve taps a fraction of every pulse's photons (a lossy channel she owns).

Model (the beam-splitting attack, e.g. Bennett et al., J. Cryptology 5, 3 (1992); Lütkenhaus, PRA 61, 052304
(2000)): a beam splitter of reflectivity ``tap_fraction`` sends each photon independently to Eve with that
probability and on to Bob otherwise. For Poisson fields (phase-randomised coherent pulses, noise) the two outputs
are independent Poissons of means mu r and mu (1 - r) (Poisson splitting), so Bob's share stays a lazy field with
t x (1 - r) and Eve's share is drawn independently and exactly; explicit events are split binomially. Eve's share
is counted (``count_tapped``; cost ∝ her photons): photons tapped, slots in which she holds >= 1 signal photon,
and >= 2 (she could then keep a copy after basis announcement). Bob sees pure loss.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons
from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE


class BeamSplitter(Block):
    """Eve taps a fraction of the photons; Bob sees the rest (pure loss)."""

    category = "eavesdropper"
    params = (
        Param("tap_fraction", float, 0.1, doc="probability a photon goes to Eve", low=0.0, high=1.0),
        Param("count_tapped", bool, True, doc="draw Eve's share to count it (cost ∝ her photons)"),
        Param("gate_width_ns", float, 1.0, unit="ns", doc="Eve's gate (noise photons per slot)", low=0.0,
              low_open=True),
        Param("seed", int, 33, doc="Eve's seed", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        for k in ("photons_tapped", "signal_slots_tapped", "signal_slots_tapped_multi"):
            self.count(k, 0)

    def work(self, ins):
        f = ins["in"]
        r = self.tap_fraction
        ev = f.data
        eve_n = self._rng.binomial(ev["n"].astype(np.int64), r) if ev.size else np.zeros(0, np.int64)
        bob = ev.copy()
        bob["n"] = ev["n"] - eve_n
        bob = bob[bob["n"] > 0]
        fields = [dict(x, t=x["t"] * (1.0 - r)) for x in photons.fields_of(f)]
        if self.count_tapped and r > 0:
            tapped = ev.copy()
            tapped["n"] = eve_n
            parts = [tapped[eve_n > 0]]
            parts += [photons.materialise_field(x, f.start, f.stop, self._rng, r, self.gate_width_ns)
                      for x in photons.fields_of(f)]
            eve = np.concatenate(parts)
            self.count("photons_tapped", int(eve["n"].sum()))
            sig = eve[eve["origin"] == photons.ORIGIN_SIGNAL]
            if sig.size:
                s, inv = np.unique(sig["slot"], return_inverse=True)
                per = np.bincount(inv, weights=sig["n"])
                self.count("signal_slots_tapped", int(s.size))
                self.count("signal_slots_tapped_multi", int((per >= 2).sum()))
        return {"out": photons.photon_frame(f, bob, fields)}
