"""Fibre cut: transmittance 0 over a slot window (optionally repeated) for everything passing this point.

Windows: [cut_start_slot + k x repeat_every_slots, ... + cut_slots) for k = 0 .. repeats - 1 (``repeats`` 1: one
cut). Inside a window nothing that reaches this block goes on: explicit photon events are dropped, and lazy fields
(``qkdflow.photons``: Alice's pulses, Raman noise generated upstream) are thinned with T = 0 there. Light added
*downstream* of the block (e.g. the demux's isolation leakage, counted from the channel plan) is not cut: put the
block where the break is (between fibre and demux for a cut span).

Exactness and cost. A lazy field covers its whole frame, so:
  * frame outside every window: passed on unchanged (O(1));
  * frame inside a window: explicit events dropped, every field's pending t set to 0 (O(1); the fields stay so
    later blocks still see Alice's descriptor, e.g. the detector's basis bias);
  * frame straddling a window edge: the fields are drawn here (``photons.materialise`` with transmittance 1 —
    exact by the Poisson thinning theorem, cost ∝ photons at this point in this frame, never ∝ slots) and the
    events inside the window dropped. Noise fields are per *gate* (flux x gate width), so this needs the detector's
    gate width: ``gate_width_ns``, or the flowgraph's detector (as the closed form reads it). Counter-propagating
    Raman fields are drawn with the pump factor they have here, so a straddling cut must sit after the last fibre
    span. Frames whose edges fall on the window edges (preparation ``slots_per_frame`` dividing them) never pay this.
Counters: slots_cut, photons_blocked (explicit photons dropped, plus the expected photon number of zeroed lazy
fields; noise fields counted only when the gate width is known), cuts_started, cuts_ended. A log line when a cut
starts and when the fibre is restored.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons
from qkdflow.physics.detector import detector_from_dict
from qkdflow.physics.from_graph import closed_form_params
from qkdflow.runtime.block import Block, BlockError, Frame, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE


class FibreCut(Block):
    """Fibre cut: nothing passes on the slots of a (repeated) window — explicit photons and lazy fields alike."""

    category = "optics"
    params = (
        Param("cut_start_slot", int, 0, unit="slots", doc="first slot of the (first) cut", low=0),
        Param("cut_slots", int, 0, unit="slots", doc="length of each cut (0: no cut)", low=0),
        Param("repeats", int, 1, doc="number of cuts", low=1),
        Param("repeat_every_slots", int, 0, unit="slots", doc="period of repeated cuts (>= cut_slots)", low=0),
        Param("gate_width_ns", float, None, unit="ns", doc="detector gate width for drawing noise fields in frames "
              "straddling a cut edge (default: the flowgraph's detector)", low=0.0, low_open=True),
        Param("seed", int, 17, doc="RNG seed of the draw in straddling frames", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def validate(self) -> list[str]:
        if self.repeats > 1 and self.repeat_every_slots < max(self.cut_slots, 1):
            return [f"repeat_every_slots: must be >= cut_slots ({self.cut_slots}) when repeats > 1, "
                    f"got {self.repeat_every_slots}"]
        return []

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._gw: float | None = self.gate_width_ns
        self._gw_looked = self.gate_width_ns is not None
        self._blocked_in_cut = 0.0
        for k in ("slots_cut", "photons_blocked", "cuts_started", "cuts_ended"):
            self.count(k, 0)

    # -- windows ----------------------------------------------------------------------------------
    def windows(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(k, a, b): cut k's full window [a, b) for every cut overlapping [start, stop)."""
        if self.cut_slots <= 0 or stop <= start:
            return []
        s0, n, per = self.cut_start_slot, self.cut_slots, self.repeat_every_slots
        if self.repeats == 1 or per <= 0:
            ks = [0]
        else:
            lo = max(0, -(-(start - s0 - n + 1) // per))
            hi = min(self.repeats - 1, (stop - 1 - s0) // per)
            ks = range(lo, hi + 1)
        out = []
        for k in ks:
            a = s0 + k * (per if self.repeats > 1 else 0)
            if a < stop and a + n > start:
                out.append((k, a, a + n))
        return out

    def _gate_width(self) -> float | None:
        """The detector's gate width: the parameter, else the flowgraph's (single) detector, as the closed form."""
        if not self._gw_looked:
            self._gw_looked = True
            try:
                cf = closed_form_params(self.graph) if self.graph is not None else {}
                if "detector" in cf:
                    self._gw = float(detector_from_dict(cf["detector"]).gate_width_ns)
            except ValueError:
                self._gw = None
        return self._gw

    def _expected_lazy(self, f: Frame, slots: int) -> float:
        """Expected photons of f's lazy fields over ``slots`` of its slots (noise fields need the gate width)."""
        gw = self._gate_width()
        total = 0.0
        for fld in photons.fields_of(f):
            if fld["kind"] == "source":
                lam = photons.field_mean_per_slot(fld, 1.0)
                p = np.asarray(fld["prep"].get("probabilities", [1 / 3] * 3), dtype=float)
                total += float(np.dot(p, lam)) * slots
            elif gw is not None:
                total += float(photons.field_mean_per_slot(fld, gw)[0]) * slots
        return total

    # -- work -------------------------------------------------------------------------------------
    def work(self, ins):
        f = ins["in"]
        wins = self.windows(f.start, f.stop)
        if not wins:
            return {"out": f}
        for k, a, b in wins:
            if f.start <= a < f.stop:
                self.count("cuts_started")
                self._blocked_in_cut = 0.0
                self.log(f"fibre cut {k + 1}/{self.repeats} at slot {a} ({self.cut_slots} slots, until slot {b})")
        clipped = [(max(a, f.start), min(b, f.stop)) for _, a, b in wins]
        n_cut = sum(b - a for a, b in clipped)
        self.count("slots_cut", n_cut)
        ev = f.data
        if n_cut == f.slots:  # the whole frame is inside a cut: O(1)
            blocked = float(ev["n"].sum()) + self._expected_lazy(f, f.slots)
            out = photons.photon_frame(f, ev[:0], [dict(fld, t=0.0) for fld in photons.fields_of(f)])
        else:
            fields = photons.fields_of(f)
            if any(fld["kind"] == "noise" for fld in fields) and self._gate_width() is None:
                raise BlockError(f"frame [{f.start}, {f.stop}) straddles a cut edge and carries noise fields: give "
                                 "gate_width_ns (no single detector in the flowgraph), or make the preparation's "
                                 "slots_per_frame divide the cut edges")
            drawn = photons.materialise(f, self._rng, 1.0, self._gw or 1.0).data if fields else ev
            edges = np.asarray([x for ab in clipped for x in ab], dtype=np.int64)
            inside = (np.searchsorted(edges, drawn["slot"], side="right") % 2) == 1
            blocked = float(drawn["n"][inside].sum())
            out = photons.photon_frame(f, drawn[~inside], [dict(fld, t=0.0) for fld in fields])
        self.count("photons_blocked", blocked)
        self._blocked_in_cut += blocked
        for k, a, b in wins:
            if f.start < b <= f.stop:
                self.count("cuts_ended")
                self.log(f"fibre restored at slot {b} after cut {k + 1}/{self.repeats}: {b - a} slots, "
                         f"{self._blocked_in_cut:.4g} photons blocked")
        return {"out": out}

    def report(self) -> dict:
        return {"cut_start_slot": self.cut_start_slot, "cut_slots": self.cut_slots, "repeats": self.repeats,
                "repeat_every_slots": self.repeat_every_slots}
