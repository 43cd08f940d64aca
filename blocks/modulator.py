"""BB84 modulator (AAU): encodes Alice's basis and bit; per-pulse state-preparation error; insertion loss.

Encodings: ``polarisation`` (Z = H/V, X = D/A) or ``time_bin`` (Z = early/late, X = the two phase states).
Both are the same abstract BB84 qubit in the model (qkdflow.physics package docstring): Alice's photons of one pulse
share the state of (basis, bit). State-preparation error ``state_prep_error`` is PER PULSE: with that probability the
whole pulse is prepared in the orthogonal state of the same basis (bit flipped), drawn from the counter-based
generator (stream 3 of ``seed``, default = the preparation seed) so it is a property of the slot. [Looseness made
exact: the closed form uses the same per-photon misalignment for both encodings; a real time-bin system has
basis-dependent errors (Z from timing, X from interferometer visibility), not modelled.]
``insertion_loss_db`` (default 0) is binomial thinning of every photon (lazy: multiplies pending t). The closed form
has no modulator loss: keep it 0 in agreement runs, or fold it into the detector's bob_transmittance.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons, prng
from qkdflow.physics.fibre import db_to_transmittance
from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE


class Modulator(Block):
    """BB84 encoding (polarisation | time_bin) with per-pulse state-preparation error."""

    category = "optics"
    params = (
        Param("encoding", str, "polarisation", doc="BB84 encoding", choices=("polarisation", "time_bin")),
        Param("state_prep_error", float, 0.0, doc="per-pulse probability of preparing the orthogonal state",
              low=0.0, high=1.0),
        Param("insertion_loss_db", float, 0.0, unit="dB", doc="modulator insertion loss", low=0.0),
        Param("seed", int, None, doc="seed of the per-pulse error draw (default: the preparation seed)", low=0),
        Param("rng_seed", int, 12, doc="RNG seed for thinning explicit photons", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.rng_seed)
        self._t = float(db_to_transmittance(self.insertion_loss_db))

    def work(self, ins):
        f = ins["in"]
        fields = []
        flip_seed = self.seed
        for fld in photons.fields_of(f):
            if fld["kind"] == "source":
                s = int(fld["prep"].get("seed", 0)) if self.seed is None else self.seed
                flip_seed = s
                fld = dict(fld, e_prep=self.state_prep_error, flip_seed=s, encoding=self.encoding)
            fields.append(fld)
        ev = f.data
        if ev.size and self.state_prep_error > 0:
            if flip_seed is None:
                flip_seed = int(f.meta.get("prep", {}).get("seed", 0))
            ev = ev.copy()
            sig = ev["origin"] == photons.ORIGIN_SIGNAL
            flip = prng.bernoulli(flip_seed, prng.STREAM_PREP_FLIP, ev["slot"][sig], self.state_prep_error)
            ev["bit"][sig] ^= flip.astype(np.uint8)
        out = photons.photon_frame(f, ev, fields, encoding=self.encoding)
        if self._t < 1.0:
            out = photons.attenuate(out, self._t, self._rng)
        return {"out": out}
