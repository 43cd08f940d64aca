"""Preparation (AAU): Alice's per-slot intensity class, basis and bit — counter-based, or a recorded file.

Efficient decoy-state BB84 (Lo, Chau, Ardehali, J. Cryptology 18, 133 (2005) for the biased basis choice; decoy
classes as Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005)): per slot, class k in {signal, decoy, vacuum} with probability
p_k, basis Z with probability ``basis_bias`` (else X), bit uniform. The choices come from the counter-based
generator ``qkdflow.prng`` keyed by ``seed``, so a frame carries only the descriptor (``meta["prep"]``) and an empty
data array: O(1) per frame; ``qkdflow.prng.prep_choices(meta["prep"], slots)`` recomputes any slot's choices
(the laser, eavesdroppers, and the AAU's sifting block use it). With ``record_file`` (a 1-D .npy of PREP_DTYPE, row
i = slot i, e.g. a real transmitter's log) frames carry the dense records and the descriptor names the file.
``dense: true`` also materialises the counter-based choices into the frame (debugging, slow).

Ports: out (PREP_DTYPE; empty unless dense/record_file). Frames of ``slots_per_frame`` slots; ``frames`` of them,
or ``total_slots`` (the last frame may be shorter).
"""
from __future__ import annotations

import os

import numpy as np

from qkdflow import prng
from qkdflow.runtime.block import DONE, Block, Frame, Stream
from qkdflow.runtime.params import Param, probabilities_check
from qkdflow.streams import INTENSITY_NAMES, PREP_DTYPE


def _intensities_check(v: dict) -> str | None:
    unknown = set(v) - set(INTENSITY_NAMES)
    if unknown:
        return f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: signal, decoy, vacuum"
    missing = [k for k in INTENSITY_NAMES if k not in v]
    if missing:
        return f"{missing[0]}: required (mean photon number per pulse)"
    for k, x in v.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0 or x != x:
            return f"{k}: mean photon number must be a number >= 0, got {x!r}"
    if not v["signal"] > v["decoy"] > v["vacuum"]:
        return f"need signal > decoy > vacuum, got {v['signal']}, {v['decoy']}, {v['vacuum']}"
    return None


class Preparation(Block):
    """Alice's choices per slot (intensity class, basis, bit) from a counter-based generator or a file."""

    category = "optics"
    params = (
        Param("intensities", dict, {"signal": 0.5, "decoy": 0.1, "vacuum": 0.0}, unit="photons/pulse",
              doc="mean photon number per class at the laser output (signal > decoy > vacuum)",
              check=_intensities_check),
        Param("probabilities", dict, {"signal": 0.8, "decoy": 0.15, "vacuum": 0.05},
              doc="probability of each intensity class (sum 1)",
              check=probabilities_check(INTENSITY_NAMES)),
        Param("basis_bias", float, 0.5, doc="P(Z basis)", low=0.0, high=1.0, low_open=True, high_open=True),
        Param("seed", int, 1, doc="counter-based generator seed (Alice's choices)", low=0),
        Param("slots_per_frame", int, 1 << 20, unit="slots", doc="slots per frame", low=1),
        Param("frames", int, 16, doc="number of frames (ignored when total_slots is given)", low=0),
        Param("total_slots", int, None, unit="slots", doc="total slots to emit (overrides frames)", low=0),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="pulse rate (from clock.rate_hz)", low=0.0, low_open=True),
        Param("record_file", str, None, doc="recorded .npy of PREP_DTYPE instead of the generator"),
        Param("dense", bool, False, doc="also put the generated choices in the frame data (debug)"),
    )
    outputs = (Stream("out", PREP_DTYPE, doc="Alice's choices (descriptor in meta['prep'])"),)

    def validate(self) -> list[str]:
        errs = []
        if self.probabilities.get("signal", 0) <= 0:
            errs.append("probabilities: signal probability must be > 0")
        if self.record_file is not None:
            if not os.path.isfile(self.record_file):
                errs.append(f"record_file: no such file {self.record_file!r}")
            else:
                try:
                    arr = prng.load_npy(self.record_file)
                    if arr.dtype != PREP_DTYPE or arr.ndim != 1:
                        errs.append(f"record_file: must be a 1-D array of PREP_DTYPE, got {arr.dtype} {arr.shape}")
                    elif arr.size and (int(arr["intensity"].max()) > 2 or int(arr["basis"].max()) > 1
                                       or int(arr["bit"].max()) > 1):
                        errs.append("record_file: intensity must be 0..2, basis and bit 0..1")
                except (OSError, ValueError) as e:
                    errs.append(f"record_file: cannot read: {e}")
        return errs

    def descriptor(self) -> dict:
        if self.record_file is not None:
            return {"kind": "file", "path": os.path.abspath(self.record_file),
                    "probabilities": [float(self.probabilities[k]) for k in INTENSITY_NAMES],
                    "basis_bias": self.basis_bias}
        return prng.prep_descriptor(self.seed, [self.probabilities[k] for k in INTENSITY_NAMES], self.basis_bias)

    def start(self) -> None:
        self._desc = self.descriptor()
        self._mu = [float(self.intensities[k]) for k in INTENSITY_NAMES]
        self._pos = 0
        if self.record_file is not None:
            self._rec = prng.load_npy(self.record_file)
            self._total = self._rec.shape[0] if self.total_slots is None else self.total_slots
            if self._total > self._rec.shape[0]:
                raise ValueError(f"total_slots: {self._total} exceeds the {self._rec.shape[0]} recorded slots")
        else:
            self._total = self.total_slots if self.total_slots is not None else self.frames * self.slots_per_frame

    def work(self, ins):
        if self._pos >= self._total:
            return DONE
        start = self._pos
        stop = min(start + self.slots_per_frame, self._total)
        self._pos = stop
        if self.record_file is not None:
            data = np.array(self._rec[start:stop])
        elif self.dense:
            i, b, x = prng.prep_choices(self._desc, np.arange(start, stop))
            data = np.empty(stop - start, dtype=PREP_DTYPE)
            data["intensity"], data["basis"], data["bit"] = i, b, x
        else:
            data = np.zeros(0, dtype=PREP_DTYPE)
        self.count("slots", stop - start)
        return {"out": Frame(start, stop, data, meta={"prep": self._desc, "intensities": self._mu,
                                                      "rate_hz": self.rate_hz})}
