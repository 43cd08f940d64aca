"""Intercept-resend eavesdropper: measures a fraction of the pulses in a random basis and resends.

Model. Each slot is intercepted with probability ``fraction`` (Eve's counter-based generator, ``seed`` stream 0).
On an intercepted slot Eve measures ALL photons present at her position (Alice's and any noise) with an ideal
two-detector BB84 receiver (efficiency 1, no dark counts) in a uniformly random basis (stream 1): a photon prepared
in her basis goes to the detector of its bit, otherwise (and unpolarised noise) to either detector with probability
1/2; a double click is squashed to a random bit. If she detects nothing she sends nothing. Otherwise she resends her
result (her basis, her bit) as ``resend: single`` (one photon) or ``resend: coherent`` (Poisson(``resend_mu``)).
Slots not intercepted pass unchanged. Everything at her position is materialised (cost ∝ photons there).

Closed form (``intercept_resend_closed_form``; derived here, matched bases a = b = Alice's basis). Let
lambda = mu_k t_E (t_E: transmittance Alice -> Eve), g = per-photon misalignment before Eve, f = after Eve,
e_p = per-pulse preparation error, and no noise photons before Eve. With A = 1 - e^{-lambda(1-g)},
B = 1 - e^{-lambda g}, P_any = 1 - e^{-lambda}:
    Eve in Alice's basis (prob. 1/2): her bit is wrong with w = (1-e_p)[(1-A)B + AB/2] + e_p[A(1-B) + AB/2],
                                       right with c = P_any - w;
    Eve in the other basis (1/2):      her bit is random (P_any/2 each).
Bob (downstream transmittance t_B including demux and his optics, efficiency eta_d, dark p_dc, noise n per gate,
misalignment f) receiving the resent state in his basis has gain G_r and error eps_r w.r.t. Eve's bit:
    coherent: G_r, eps_r = qkdflow.physics.decoy.detection_probabilities(resend_mu, t_B, eta_d, p_dc, n, f).(gain, error)
    single:   G_r = Y_1, eps_r = e_1 Y_1 from photon_number_yield(1, t_B, eta_d, p_dc, n, f);
in the other basis the gain is the same G_r (it does not depend on the basis match) and the error G_r/2. With no
resend Bob sees only background: Y0 = 1 - (1 - p_dc)^2 e^{-eta_d n}, error Y0/2. Then
    Q_I  = e^{-lambda} Y0 + P_any G_r
    EQ_I = e^{-lambda} Y0/2 + (1/2)[c eps_r + w (G_r - eps_r)] + (1/2) P_any G_r/2
    Q    = (1 - F) Q_N + F Q_I,      E Q = (1 - F) E_N Q_N + F EQ_I
with (Q_N, E_N) the no-Eve closed form over the whole link (misalignment g then f composed). In the limit of a
single-photon source, perfect channel and F = 1 this gives the textbook 25 %.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import numpy as np

from qkdflow import photons, prng
from qkdflow.physics.decoy import detection_probabilities, photon_number_yield
from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE

__all__ = ["InterceptResend", "intercept_resend_closed_form"]


def intercept_resend_closed_form(mu: float, t_eve: float, t_bob: float, efficiency: float,
                                 dark_count_per_gate: float, noise_photons_per_gate: float, fraction: float,
                                 misalignment_before: float = 0.0, misalignment_after: float = 0.0,
                                 state_prep_error: float = 0.0, resend: str = "single",
                                 resend_mu: float = 0.5) -> tuple[float, float]:
    """(gain, QBER) of one intensity class under intercept-resend (module docstring). Noise only after Eve."""
    lam = mu * t_eve
    g, f, ep = misalignment_before, misalignment_after, state_prep_error
    common = dict(efficiency=efficiency, dark_count_per_gate=dark_count_per_gate,
                  noise_photons_per_gate=noise_photons_per_gate)
    d_n = detection_probabilities(mu, t_eve * t_bob, misalignment=photons.compose_flip(g, f),
                                  state_prep_error=ep, **common)
    q_n, eq_n = float(d_n.gain), float(d_n.error)
    if resend == "single":
        y1, e1 = photon_number_yield(1, t_bob, misalignment=f, **common)
        g_r, eps_r = float(y1), float(e1 * y1)
    elif resend == "coherent":
        d_r = detection_probabilities(resend_mu, t_bob, misalignment=f, **common)
        g_r, eps_r = float(d_r.gain), float(d_r.error)
    else:
        raise ValueError(f"resend: must be 'single' or 'coherent', got {resend!r}")
    y0 = -np.expm1(2 * np.log1p(-dark_count_per_gate) - efficiency * noise_photons_per_gate)
    a = -np.expm1(-lam * (1 - g))
    b = -np.expm1(-lam * g)
    p_any = -np.expm1(-lam)
    wrong_ok, right_ok = (1 - a) * b + a * b / 2, a * (1 - b) + a * b / 2
    w = (1 - ep) * wrong_ok + ep * right_ok
    c = p_any - w
    q_i = np.exp(-lam) * y0 + p_any * g_r
    eq_i = np.exp(-lam) * y0 / 2 + 0.5 * (c * eps_r + w * (g_r - eps_r)) + 0.5 * p_any * g_r / 2
    q = (1 - fraction) * q_n + fraction * q_i
    eq = (1 - fraction) * eq_n + fraction * eq_i
    return float(q), float(eq / q)


def eve_measure(ev: np.ndarray, eve_basis_of_event: np.ndarray, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ideal BB84 measurement of grouped photon events: per event, photons reaching detector 0 and detector 1."""
    n = ev["n"].astype(np.int64)
    matched = ev["basis"] == eve_basis_of_event
    n0 = np.where(matched & (ev["bit"] == 0), n, 0)
    rand = ~matched
    n0[rand] = rng.binomial(n[rand], 0.5)
    return n0, n - n0


class InterceptResend(Block):
    """Eve intercepts a fraction of pulses, measures in a random basis, resends her result."""

    category = "eavesdropper"
    params = (
        Param("fraction", float, 1.0, doc="fraction of pulses intercepted", low=0.0, high=1.0),
        Param("resend", str, "single", doc="what Eve resends", choices=("single", "coherent")),
        Param("resend_mu", float, 0.5, unit="photons/pulse", doc="mean photon number of a coherent resend",
              low=0.0, low_open=True),
        Param("gate_width_ns", float, 1.0, unit="ns", doc="Eve's gate (noise photons she sees per slot)", low=0.0,
              low_open=True),
        Param("seed", int, 31, doc="Eve's seed", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        for k in ("intercepted", "resent", "eve_bits_sifted", "eve_bits_sifted_correct"):
            self.count(k, 0)

    def work(self, ins):
        f = ins["in"]
        desc = next((x["prep"] for x in photons.fields_of(f) if x["kind"] == "source"), f.meta.get("prep"))
        ev = photons.materialise(f, self._rng, 1.0, self.gate_width_ns).data
        if ev.size == 0 or self.fraction == 0:
            return {"out": photons.photon_frame(f, ev, [])}
        hit = prng.bernoulli(self.seed, 0, ev["slot"], self.fraction)
        keep, take = ev[~hit], ev[hit]
        if take.size == 0:
            return {"out": photons.photon_frame(f, keep, [])}
        eb = (prng.random_u64(self.seed, 1, take["slot"]) >> np.uint64(63)).astype(np.uint8)
        n0, n1 = eve_measure(take, eb, self._rng)
        slots, inv = np.unique(take["slot"], return_inverse=True)
        c0 = np.bincount(inv, weights=n0, minlength=slots.size) > 0
        c1 = np.bincount(inv, weights=n1, minlength=slots.size) > 0
        got = c0 | c1
        bit = np.where(c0 & c1, self._rng.integers(0, 2, slots.size), np.where(c1, 1, 0)).astype(np.uint8)
        basis = np.zeros(slots.size, np.uint8)
        basis[inv] = eb
        slots, bit, basis = slots[got], bit[got], basis[got]
        if self.resend == "single":
            n = np.ones(slots.size, np.int64)
        else:
            n = self._rng.poisson(self.resend_mu, slots.size)
        self.count("intercepted", int(slots.size))
        if desc is not None and slots.size:
            _, a_basis, a_bit = prng.prep_choices(desc, slots)
            same = a_basis == basis
            self.count("eve_bits_sifted", int(same.sum()))
            self.count("eve_bits_sifted_correct", int((same & (a_bit == bit)).sum()))
        sent = n > 0
        new = np.zeros(int(sent.sum()), dtype=PHOTON_DTYPE)
        new["slot"], new["n"], new["basis"], new["bit"] = slots[sent], n[sent], basis[sent], bit[sent]
        new["origin"] = photons.ORIGIN_EVE
        self.count("resent", int(new.size))
        out = np.concatenate([keep, new])
        out = out[np.argsort(out["slot"], kind="stable")]
        return {"out": photons.photon_frame(f, out, [])}
