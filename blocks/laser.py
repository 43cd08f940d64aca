"""Laser (AAU): phase-randomised weak coherent pulses -> a lazy source field (or explicit photons).

Model (Lo, Ma, Chen, PRL 94, 230504 (2005); Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) Sec. II): a phase-randomised
coherent state of mean mu is a Poisson mixture of Fock states, P(n) = e^{-mu} mu^n / n!, independent pulse to pulse.
Per slot the class (signal/decoy/vacuum) and so mu_k come from Alice's preparation (``meta["prep"]``,
``meta["intensities"]`` of the preparation block). Output: an empty event array and one source field
(``qkdflow.photons``) with pending transmittance 1; nothing is drawn here (cost O(1) per frame) unless
``materialise: true`` (debug / eager reference path), which draws every photon now with ``seed``.
``rate_hz`` is the pulse rate (one pulse per slot).
Ports: in (PREP_DTYPE, Alice's choices), out (PHOTON_DTYPE photons).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE, PREP_DTYPE


class Laser(Block):
    """Weak coherent pulses, phase randomised: one lazy Poisson source field per frame."""

    category = "optics"
    params = (
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="pulse rate (from clock.rate_hz)", low=0.0, low_open=True),
        Param("materialise", bool, False, doc="draw every photon here (eager reference path; slow)"),
        Param("seed", int, 11, doc="RNG seed of the eager draw", low=0),
    )
    inputs = (Stream("in", PREP_DTYPE, doc="Alice's choices (descriptor in meta['prep'])"),)
    outputs = (Stream("out", PHOTON_DTYPE, doc="photons (lazy source field in meta['fields'])"),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def work(self, ins):
        f = ins["in"]
        prep, mu = f.meta.get("prep"), f.meta.get("intensities")
        if prep is None or mu is None:
            raise BlockError("input frames carry no preparation descriptor: connect a preparation block")
        field = photons.source_field(prep, mu, flip_seed=int(prep.get("seed", 0)))
        out = photons.photon_frame(f, photons.empty_events(), [field], rate_hz=self.rate_hz)
        if self.materialise:
            out = photons.materialise(out, self._rng)
        self.count("photons_emitted" if self.materialise else "photons_expected",
                   int(out.data["n"].sum()) if self.materialise else photons.expected_photons(out))
        return {"out": out}
