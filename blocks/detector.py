"""Single-photon detectors (DU): active basis choice, two detectors, dark counts, afterpulsing, dead time, jitter.

Model (the closed form's, ``qkdflow.physics`` package docstring, plus the slot-level effects it leaves out):
  * Bob's optics ``bob_transmittance`` and detection ``efficiency`` eta_d are binomial thinning of every photon,
    applied together when the lazy fields are drawn (``qkdflow.photons.materialise`` with t x bob_t x eta_d: exact,
    since both detectors have the same eta_d and each photon reaches exactly one).
  * Basis: Z with probability ``basis_bias`` per slot (default: the preparation's), from Bob's counter-based
    generator (``seed``, stream 16), so every photon of a slot meets the same choice. A photon prepared in Bob's basis
    goes to the detector of its bit; otherwise, and for unpolarised noise photons, to either detector with
    probability 1/2 independently.
  * Dark counts: independent Bernoulli(``dark_count_per_gate``) per detector per gate, drawn sparsely by geometric
    gaps over the 2 x slots (gate, detector) pairs.
  * A detector clicks in a gate if it detected >= 1 photon or had a dark count; the event keeps both mask bits for a
    double click (bit 2*basis + value; squashing happens in sifting).
  * Afterpulsing (slot-level; the closed form has only Lim 2014's approximation Q(1 + p_ap), so agreement runs
    use 0): every click (photon, dark or afterpulse) of a detector triggers, with probability
    ``afterpulse_probability``, one more click of the same detector after a delay X ~ Exponential(mean
    ``afterpulse_time_ns``), in gate slot + max(1, ceil(X / period)) (detrapping of a single trap level; Itzler et
    al., J. Mod. Opt. 58, 174 (2011) report ns-to-us lifetimes: the default 10 ns is a device parameter, set yours).
    Cascades are followed; afterpulses past the frame end carry over to the next frame.
  * Dead time (non-paralysable, physics.md Sec. 4): a click suppresses later clicks of that detector in gates less
    than ``dead_time_ns`` after it; a suppressed click neither extends the dead time nor afterpulses. Resolved
    vectorised over the sparse clicks by a fixed-point iteration (each click depends only on earlier ones, so the
    iteration settles in at most the longest chain of clicks within one dead time; cost ∝ clicks).
  * Jitter: time_ps = slot x period + Normal(0, ``jitter_ps``), rounded to ps (one draw per click event).
Presets (``qkdflow.physics.detector``): ``ingaas_gated`` (dark count and afterpulse probability follow the
Comandar-calibrated operating point at the given efficiency unless given), ``snspd`` (Marsili 2013; 40 ns dead time).
Counters: clicks, double_clicks, photon_clicks, dark_clicks, afterpulses (detector-level clicks by first cause),
suppressed_dead_time.
Ports: in (PHOTON_DTYPE), out (CLICK_DTYPE, sparse).
"""
from __future__ import annotations

import math

import numpy as np

from qkdflow import photons, prng
from qkdflow.physics.detector import DetectorParams, detector_from_dict
from qkdflow.runtime.block import Block, Frame, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import CLICK_DTYPE, PHOTON_DTYPE

BOB_BASIS_STREAM = 16
_NEG = -(1 << 62)
PHOTON, DARK, AFTER = 0, 1, 2


def bob_basis(seed: int, basis_bias: float, slots: np.ndarray) -> np.ndarray:
    """Bob's basis per slot (0 = Z with probability basis_bias), recomputable from the seed."""
    return (prng.uniform(seed, BOB_BASIS_STREAM, slots) >= basis_bias).astype(np.uint8)


def _prev_kept(slot: np.ndarray, det: np.ndarray, kept: np.ndarray, last: list[int]) -> np.ndarray:
    """For events sorted by (det, slot): slot of the last kept event of the same detector before each one."""
    ks = np.where(kept, slot, _NEG)
    prev = np.empty_like(slot)
    for d in (0, 1):
        lo, hi = np.searchsorted(det, d), np.searchsorted(det, d, side="right")
        if hi <= lo:
            continue
        run = np.maximum.accumulate(ks[lo:hi])
        prev[lo] = last[d]
        prev[lo + 1:hi] = np.maximum(run[:-1], last[d])
    return prev


class Detector(Block):
    """Two single-photon detectors with active basis choice (gated, one gate per slot)."""

    category = "detector"
    params = (
        Param("preset", str, None, doc="detector preset", choices=("ingaas_gated", "snspd")),
        Param("efficiency", float, None, doc="detection efficiency eta_d per detector (default 0.1 or preset)",
              low=0.0, high=1.0),
        Param("dark_count_per_gate", float, None, doc="dark count probability per detector per gate",
              low=0.0, high=1.0, high_open=True),
        Param("afterpulse_probability", float, None, doc="P(a click triggers an afterpulse)", low=0.0, high=1.0,
              high_open=True),
        Param("afterpulse_time_ns", float, 10.0, unit="ns", doc="mean afterpulse delay (trap lifetime)", low=0.0,
              low_open=True),
        Param("dead_time_ns", float, None, unit="ns", doc="non-paralysable dead time per detector", low=0.0),
        Param("jitter_ps", float, 0.0, unit="ps", doc="timing jitter (Gaussian sigma)", low=0.0),
        Param("gate_width_ns", float, None, unit="ns", doc="effective gate width (noise photons per gate)",
              low=0.0, low_open=True),
        Param("bob_transmittance", float, None, doc="Bob's optics before the detectors", low=0.0, high=1.0),
        Param("basis_bias", float, None, doc="P(Z) of Bob's basis choice (default: the preparation's)",
              low=0.0, high=1.0, low_open=True, high_open=True),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="gate rate (from clock.rate_hz)", low=0.0, low_open=True),
        Param("seed", int, 21, doc="Bob's seed (basis choice, photon split, dark counts)", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE, doc="photons"),)
    outputs = (Stream("out", CLICK_DTYPE, doc="clicks (sparse)"),)

    _DET_FIELDS = ("preset", "efficiency", "dark_count_per_gate", "afterpulse_probability", "dead_time_ns",
                   "gate_width_ns", "bob_transmittance")

    def detector_dict(self) -> dict:
        """The detector section as the closed form takes it (only fields given)."""
        return {k: getattr(self, k) for k in self._DET_FIELDS if getattr(self, k) is not None}

    def resolved(self) -> DetectorParams:
        return detector_from_dict(self.detector_dict())

    def validate(self) -> list[str]:
        try:
            self.resolved()
        except ValueError as e:
            msg = str(e)
            return [msg[len("detector."):] if msg.startswith("detector.") else msg]
        return []

    def start(self) -> None:
        self.p = self.resolved()
        self._rng = np.random.default_rng(self.seed)
        self._period_ns = 1e9 / self.rate_hz
        self._period_ps = 1e12 / self.rate_hz
        # smallest gap (in gates) between two kept clicks of one detector; 1 = only one click per gate
        self._min_gap = max(1, math.ceil(self.p.dead_time_ns / self._period_ns - 1e-9))
        self._last = [_NEG, _NEG]
        self._pending_slot = np.zeros(0, dtype=np.int64)
        self._pending_det = np.zeros(0, dtype=np.int8)
        for k in ("clicks", "double_clicks", "photon_clicks", "dark_clicks", "afterpulses", "suppressed_dead_time"):
            self.count(k, 0)

    # -- pieces -----------------------------------------------------------------------------------
    def _photon_hits(self, f: Frame, bias: float) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        ev = photons.materialise(f, self._rng, p.bob_transmittance * p.efficiency, p.gate_width_ns).data
        if ev.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int8)
        n = ev["n"].astype(np.int64)
        b = bob_basis(self.seed, bias, ev["slot"])
        matched = ev["basis"] == b
        n0 = np.where(matched, np.where(ev["bit"] == 0, n, 0), 0)
        rand = ~matched
        n0[rand] = self._rng.binomial(n[rand], 0.5)
        n1 = n - n0
        slot = np.concatenate([ev["slot"][n0 > 0], ev["slot"][n1 > 0]])
        det = np.concatenate([np.zeros(int((n0 > 0).sum()), np.int8), np.ones(int((n1 > 0).sum()), np.int8)])
        return slot, det

    def _afterpulse_children(self, slot: np.ndarray, det: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Potential afterpulse per event: mask of events that trigger one, and its slot."""
        trig = self._rng.random(slot.size) < self.p.afterpulse_probability
        x_ns = self._rng.exponential(self.afterpulse_time_ns, int(trig.sum()))
        delay = np.maximum(1, np.ceil(x_ns / self._period_ns)).astype(np.int64)
        return trig, slot[trig] + delay

    def work(self, ins):
        f = ins["in"]
        bias = self.basis_bias if self.basis_bias is not None else float(
            f.meta.get("prep", {}).get("basis_bias", 0.5) if isinstance(f.meta.get("prep"), dict) else 0.5)
        for fld in photons.fields_of(f):
            if self.basis_bias is None and fld["kind"] == "source":
                bias = float(fld["prep"].get("basis_bias", 0.5))
        ps, pd = self._photon_hits(f, bias)
        idx = photons.geometric_slots(0, 2 * f.slots, self.p.dark_count_per_gate, self._rng)
        ds, dd = f.start + idx // 2, (idx % 2).astype(np.int8)
        inframe = self._pending_slot < f.stop
        qs, qd = self._pending_slot[inframe], self._pending_det[inframe]
        self._pending_slot, self._pending_det = self._pending_slot[~inframe], self._pending_det[~inframe]
        slot = np.concatenate([ps, ds, qs])
        det = np.concatenate([pd, dd, qd])
        cause = np.concatenate([np.full(ps.size, PHOTON, np.int8), np.full(ds.size, DARK, np.int8),
                                np.full(qs.size, AFTER, np.int8)])
        parent = np.full(slot.size, -1, dtype=np.int64)
        out_slot, out_det, out_parent = [], [], []
        if self.p.afterpulse_probability > 0 and slot.size:
            gen_lo, gen_hi = 0, slot.size
            while gen_hi > gen_lo:
                trig, cs = self._afterpulse_children(slot[gen_lo:gen_hi], det[gen_lo:gen_hi])
                par = np.arange(gen_lo, gen_hi)[trig]
                cd = det[gen_lo:gen_hi][trig]
                late = cs >= f.stop
                out_slot.append(cs[late]), out_det.append(cd[late]), out_parent.append(par[late])
                slot = np.concatenate([slot, cs[~late]])
                det = np.concatenate([det, cd[~late]])
                cause = np.concatenate([cause, np.full(int((~late).sum()), AFTER, np.int8)])
                parent = np.concatenate([parent, par[~late]])
                gen_lo, gen_hi = gen_hi, slot.size
        # sort by (det, slot, cause): same-gate duplicates merge into the first (photon before dark before after)
        order = np.lexsort((cause, slot, det))
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        slot, det, cause, parent = slot[order], det[order], cause[order], parent[order]
        parent = np.where(parent >= 0, inv[np.maximum(parent, 0)], -1)
        primary = parent < 0
        kept = np.ones(slot.size, dtype=bool)
        for _ in range(slot.size + 1):
            active = primary | kept[np.maximum(parent, 0)]
            prev = _prev_kept(slot, det, kept, self._last)
            new = active & (slot - prev >= self._min_gap)
            if np.array_equal(new, kept):
                break
            kept = new
        active = primary | kept[np.maximum(parent, 0)]
        prev = _prev_kept(slot, det, kept, self._last)
        self.count("suppressed_dead_time", int((active & ~kept & (slot > prev)).sum()))
        for d in (0, 1):
            sel = kept & (det == d)
            if sel.any():
                self._last[d] = int(slot[sel].max())
        if out_slot:
            ls, ld, lp = np.concatenate(out_slot), np.concatenate(out_det), np.concatenate(out_parent)
            ok = kept[inv[lp]] if lp.size else np.zeros(0, bool)
            self._pending_slot = np.concatenate([self._pending_slot, ls[ok]])
            self._pending_det = np.concatenate([self._pending_det, ld[ok]])
        ks, kd, kc = slot[kept], det[kept], cause[kept]
        self.count("photon_clicks", int((kc == PHOTON).sum()))
        self.count("dark_clicks", int((kc == DARK).sum()))
        self.count("afterpulses", int((kc == AFTER).sum()))
        # one click event per slot: OR of the detector bits in Bob's basis of that slot
        uslot, first = np.unique(ks, return_inverse=True)
        clicks = np.zeros(uslot.size, dtype=CLICK_DTYPE)
        if uslot.size:
            b = bob_basis(self.seed, bias, uslot)
            bits = np.zeros(uslot.size, dtype=np.uint8)
            np.bitwise_or.at(bits, first, (1 << kd.astype(np.uint8)).astype(np.uint8))
            clicks["slot"] = uslot
            clicks["basis"] = b
            clicks["mask"] = bits << (2 * b)
            t = uslot.astype(np.float64) * self._period_ps
            if self.jitter_ps > 0:
                t = t + self._rng.normal(0.0, self.jitter_ps, uslot.size)
            clicks["time_ps"] = np.rint(t).astype(np.int64)
            self.count("double_clicks", int((bits == 3).sum()))
        self.count("clicks", int(uslot.size))
        return {"out": Frame(f.start, f.stop, clicks, list(f.tags), {"rate_hz": self.rate_hz})}

    def report(self) -> dict:
        p = self.p
        return {"efficiency": p.efficiency, "dark_count_per_gate": p.dark_count_per_gate,
                "afterpulse_probability": p.afterpulse_probability, "dead_time_ns": p.dead_time_ns}
