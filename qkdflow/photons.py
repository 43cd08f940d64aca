"""The photon stream: sparse explicit events plus lazy Poisson fields (cost ∝ photons, never ∝ slots).

A photons frame is ``Frame.data`` (explicit ``PHOTON_DTYPE`` events, sorted by slot) plus ``Frame.meta["fields"]``,
a list of photon *fields* not yet drawn, each a JSON-able dict with a pending transmittance ``t``:

* source field (``kind: "source"``): Alice's phase-randomised weak coherent pulses. Keys: ``prep`` (preparation
  descriptor, see ``qkdflow.prng``), ``mu`` [signal, decoy, vacuum] mean photon numbers at the laser, ``t``,
  ``e_prep`` (per-pulse state-preparation error: the whole pulse is prepared with the bit flipped), ``flip_seed``
  (counter-based seed of that per-pulse flip), ``flip`` (per-photon misalignment flip probability accumulated so
  far), ``origin``, ``encoding``.
* noise field (``kind: "noise"``): unpolarised Poisson noise, ``flux_per_ns`` photons per ns at the point it was
  added (the detector turns it into photons per gate with its gate width), ``t``, ``pump`` (a factor for
  counter-propagating Raman: every later fibre span multiplies it by that span's transmittance at the classical
  wavelength of ``pump_channel``, because the pump power entering an upstream span is what is left after the
  downstream spans), ``origin``, ``name``.

Why this is exact. The photon number of a phase-randomised coherent pulse is Poisson(mu) and independent pulse to
pulse; binomial thinning of Poisson(mu) with transmittance t is Poisson(mu t) (Poisson thinning theorem), and thinning
twice by t1, t2 is thinning by t1 t2. A per-photon flip with probability f followed by one with g is a flip with
f(1-g) + (1-f)g. So a lossy block may multiply ``t`` (and compose ``flip``) instead of drawing photons, and the
explicit draw can wait until a block needs photons (an eavesdropper, or the detector with t x efficiency). Explicit
events are thinned binomially, n ~ Binomial(n, T), and dropped at n = 0.

Materialising a field over slots [start, stop) (``materialise``): with lambda_k = mu_k t the per-slot mean of class
k, p_k = 1 - exp(-lambda_k) and p_max = max_k p_k, candidate slots are drawn as a Bernoulli(p_max) process by
geometric gaps (cost ∝ candidates); each candidate's class comes from the counter-based generator and it is kept
with probability p_k / p_max (so a slot of class k is non-empty with probability exactly p_k); its photon number
is zero-truncated Poisson(lambda_k), drawn exactly as 1 + Poisson(lambda (1 - T1)) where T1 is the first arrival of
a rate-lambda Poisson process on [0, 1] conditioned on at least one arrival (inverse CDF of a truncated
exponential). Photons of a pulse share Alice's basis and bit (flipped for the whole pulse with e_prep); each photon
then flips independently with ``flip``, giving up to two events per slot (unflipped, flipped).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from . import prng
from .runtime.block import Frame
from .streams import PHOTON_DTYPE

__all__ = ["UNPOLARISED", "ORIGIN_SIGNAL", "ORIGIN_RAMAN", "ORIGIN_LEAKAGE", "ORIGIN_EVE", "source_field",
           "noise_field", "empty_events", "fields_of", "photon_frame", "thin_events", "flip_events",
           "attenuate", "misalign", "add_fields", "scale_pump", "geometric_slots", "zero_truncated_poisson",
           "materialise_field", "materialise", "expected_photons", "compose_flip"]

#: ``basis`` value of an unpolarised (noise) photon: it goes to either detector of any basis with probability 1/2.
UNPOLARISED = 255
ORIGIN_SIGNAL, ORIGIN_RAMAN, ORIGIN_LEAKAGE, ORIGIN_EVE = 0, 1, 2, 3


def compose_flip(f: float, g: float) -> float:
    """Two independent per-photon flips with probabilities f then g: one flip with f(1-g) + (1-f)g."""
    return f * (1.0 - g) + (1.0 - f) * g


def source_field(prep: dict, mu: Iterable[float], *, t: float = 1.0, e_prep: float = 0.0, flip_seed: int = 0,
                 flip: float = 0.0, origin: int = ORIGIN_SIGNAL, encoding: str = "polarisation") -> dict:
    """A lazy field of Alice's pulses (see module docstring)."""
    return {"kind": "source", "prep": prep, "mu": [float(m) for m in mu], "t": float(t), "e_prep": float(e_prep),
            "flip_seed": int(flip_seed), "flip": float(flip), "origin": int(origin), "encoding": encoding}


def noise_field(flux_per_ns: float, *, origin: int, name: str, t: float = 1.0, pump_channel: str | None = None,
                pump: float = 1.0) -> dict:
    """A lazy field of unpolarised Poisson noise: ``flux_per_ns`` photons/ns at the point it is added."""
    return {"kind": "noise", "flux_per_ns": float(flux_per_ns), "t": float(t), "origin": int(origin),
            "name": name, "pump_channel": pump_channel, "pump": float(pump)}


def empty_events() -> np.ndarray:
    return np.zeros(0, dtype=PHOTON_DTYPE)


def fields_of(frame: Frame) -> list[dict]:
    return list(frame.meta.get("fields", []))


def photon_frame(like: Frame, events: np.ndarray, fields: list[dict], **meta) -> Frame:
    """A photons frame over ``like``'s slots, keeping its tags and meta (``fields`` replaced)."""
    m = dict(like.meta)
    m.update(meta)
    m["fields"] = fields
    return Frame(like.start, like.stop, events, list(like.tags), m)


# ---- explicit events ----------------------------------------------------------------------------
def _sorted(ev: np.ndarray) -> np.ndarray:
    if ev.size > 1 and np.any(np.diff(ev["slot"]) < 0):
        ev = ev[np.argsort(ev["slot"], kind="stable")]
    return ev


def thin_events(events: np.ndarray, transmittance: float, rng: np.random.Generator) -> np.ndarray:
    """Each photon survives independently with probability ``transmittance``; empty events dropped."""
    if events.size == 0 or transmittance >= 1.0:
        return events
    n = rng.binomial(events["n"].astype(np.int64), transmittance)
    keep = n > 0
    out = events[keep].copy()
    out["n"] = n[keep]
    return out


def flip_events(events: np.ndarray, p_flip: float, rng: np.random.Generator) -> np.ndarray:
    """Each polarised photon independently ends in the orthogonal state (bit ^ 1) with probability ``p_flip``."""
    if events.size == 0 or p_flip <= 0.0:
        return events
    pol = events["basis"] != UNPOLARISED
    k = np.zeros(events.size, dtype=np.int64)
    k[pol] = rng.binomial(events["n"][pol].astype(np.int64), p_flip)
    stay = events.copy()
    stay["n"] = events["n"] - k
    moved = events[k > 0].copy()
    moved["n"] = k[k > 0]
    moved["bit"] ^= 1
    out = np.concatenate([stay[stay["n"] > 0], moved])
    return _sorted(out)


# ---- lazy operations ----------------------------------------------------------------------------
def attenuate(frame: Frame, transmittance: float, rng: np.random.Generator) -> Frame:
    """Loss: every field's pending t is multiplied, explicit events are thinned binomially."""
    fields = [dict(f, t=f["t"] * transmittance) for f in fields_of(frame)]
    return photon_frame(frame, thin_events(frame.data, transmittance, rng), fields)


def misalign(frame: Frame, p_flip: float, rng: np.random.Generator) -> Frame:
    """Per-photon flip (polarisation/phase misalignment) on source fields and polarised explicit events."""
    fields = [dict(f, flip=compose_flip(f["flip"], p_flip)) if f["kind"] == "source" else f
              for f in fields_of(frame)]
    return photon_frame(frame, flip_events(frame.data, p_flip, rng), fields)


def add_fields(frame: Frame, new: list[dict]) -> Frame:
    return photon_frame(frame, frame.data, fields_of(frame) + list(new))


def scale_pump(frame: Frame, channel: str, factor: float) -> Frame:
    """Multiply the pump factor of noise fields pumped by ``channel`` (counter-propagating Raman)."""
    fields = [dict(f, pump=f["pump"] * factor) if f["kind"] == "noise" and f.get("pump_channel") == channel else f
              for f in fields_of(frame)]
    return photon_frame(frame, frame.data, fields)


# ---- drawing ------------------------------------------------------------------------------------
def geometric_slots(start: int, stop: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted slots of a Bernoulli(p) process on [start, stop), by geometric gaps (cost ∝ result)."""
    n_slots = stop - start
    if n_slots <= 0 or p <= 0.0:
        return np.zeros(0, dtype=np.int64)
    if p >= 1.0:
        return np.arange(start, stop, dtype=np.int64)
    mean = n_slots * p
    chunks = []
    pos = start - 1
    while True:
        size = int(mean + 6.0 * math.sqrt(mean) + 16)
        s = pos + np.cumsum(rng.geometric(p, size=size))
        chunks.append(s)
        if s[-1] >= stop:
            break
        pos = int(s[-1])
        mean = (stop - pos) * p
    out = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return out[: np.searchsorted(out, stop)]


def zero_truncated_poisson(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact draws of N ~ Poisson(lam) conditioned on N >= 1 (lam > 0), vectorised.

    The first arrival T1 of a rate-lam Poisson process on [0, 1], given at least one arrival, has CDF
    (1 - e^{-lam t})/(1 - e^{-lam}); the remaining arrivals on (T1, 1] are Poisson(lam (1 - T1)).
    """
    lam = np.asarray(lam, dtype=float)
    u = rng.random(lam.shape)
    t1 = -np.log1p(u * np.expm1(-lam)) / lam
    return 1 + rng.poisson(lam * np.clip(1.0 - t1, 0.0, 1.0))


def _events(slot: np.ndarray, n: np.ndarray, basis: np.ndarray | int, bit: np.ndarray | int,
            origin: int) -> np.ndarray:
    ev = np.empty(slot.size, dtype=PHOTON_DTYPE)
    ev["slot"] = slot
    ev["n"] = n
    ev["basis"] = basis
    ev["bit"] = bit
    ev["origin"] = origin
    return ev


def field_mean_per_slot(field: dict, gate_width_ns: float) -> np.ndarray:
    """Per-slot mean photon number of a field now: per class [3] for a source field, [1] for a noise field."""
    if field["kind"] == "source":
        return np.asarray(field["mu"], dtype=float) * field["t"]
    return np.array([field["flux_per_ns"] * gate_width_ns * field["t"] * field.get("pump", 1.0)])


def materialise_field(field: dict, start: int, stop: int, rng: np.random.Generator, extra_t: float = 1.0,
                      gate_width_ns: float = 1.0) -> np.ndarray:
    """Explicit events of one field over [start, stop) with extra transmittance ``extra_t`` (module docstring)."""
    lam = field_mean_per_slot(field, gate_width_ns) * extra_t
    p = -np.expm1(-lam)
    p_max = float(p.max()) if p.size else 0.0
    if p_max <= 0.0:
        return empty_events()
    cand = geometric_slots(start, stop, p_max, rng)
    if field["kind"] == "noise":
        return _events(cand, zero_truncated_poisson(np.full(cand.size, lam[0]), rng), UNPOLARISED, 0,
                       field["origin"])
    cls, basis, bit = prng.prep_choices(field["prep"], cand)
    keep = rng.random(cand.size) * p_max < p[cls]
    cand, cls, basis, bit = cand[keep], cls[keep], basis[keep], bit[keep]
    n = zero_truncated_poisson(lam[cls], rng)
    if field["e_prep"] > 0.0:
        bit = bit ^ prng.bernoulli(field["flip_seed"], prng.STREAM_PREP_FLIP, cand, field["e_prep"]).astype(np.uint8)
    ev = _events(cand, n, basis, bit, field["origin"])
    return flip_events(ev, field["flip"], rng)


def materialise(frame: Frame, rng: np.random.Generator, extra_t: float = 1.0, gate_width_ns: float = 1.0) -> Frame:
    """All fields drawn and merged with the explicit events (thinned by ``extra_t``), sorted by slot; no fields left."""
    parts = [thin_events(frame.data, extra_t, rng)]
    for f in fields_of(frame):
        parts.append(materialise_field(f, frame.start, frame.stop, rng, extra_t, gate_width_ns))
    ev = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return photon_frame(frame, _sorted(ev), [])


def expected_photons(frame: Frame, gate_width_ns: float = 1.0) -> float:
    """Expected photons in the frame's fields (for counters; explicit events counted exactly by the caller)."""
    total = 0.0
    for f in fields_of(frame):
        lam = field_mean_per_slot(f, gate_width_ns)
        if f["kind"] == "source":
            total += float(np.dot(np.asarray(f["prep"].get("probabilities", [1 / 3] * 3)), lam)) * frame.slots
        else:
            total += float(lam[0]) * frame.slots
    return total
