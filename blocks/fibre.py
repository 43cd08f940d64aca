"""Fibre span: attenuation, spontaneous Raman noise from every classical channel, misalignment.

Attenuation (closed form ``qkdflow.physics.fibre``): T_f = 10^(-loss_db_per_km x length_km / 10) at the quantum
wavelength; ``loss_db_per_km: ssmf`` takes the G.652.D curve at the plan's quantum wavelength (1550.12 nm without a
wdm_mux). Photons are thinned binomially (lazy fields: pending t multiplied; Poisson thinning is exact).
Misalignment: each photon independently ends in the orthogonal state with probability ``misalignment`` (closed form:
per-photon e_mis; several spans compose as f(1-g) + (1-f)g).
Raman (``qkdflow.physics.raman``; Eraerds et al., NJP 12, 063027 (2010) forms generalised to alpha_c != alpha_q):
for each classical channel of the plan in ``meta["wdm"]``, with rho its cross-section into the quantum channel and
dlambda the demux pass band,
  * co-propagating (launched at the AAU): forward SpRS at this span's output,
    P_f = P_c rho dlambda (e^{-alpha_q L} - e^{-alpha_c L}) / (alpha_c - alpha_q), where P_c = launch x (classical
    transmittance of the spans before, ``meta["co_pump_t"]``);
  * counter-propagating (launched at the DU): backward SpRS of this span, P_b = P_c rho dlambda
    (1 - e^{-(alpha_c + alpha_q) L}) / (alpha_c + alpha_q), where P_c is the power entering the span's DU end =
    launch x the classical transmittance of all spans downstream. That product is not known here, so the field
    carries a ``pump`` factor that every later span multiplies by its own classical transmittance e^{-alpha_c L}.
Summing spans this way equals the single-span integrals of the closed form exactly (the integrals are additive over
sub-intervals). Each contribution becomes an unpolarised Poisson noise field (photons/ns = P lambda_q / (h c)),
thinned by everything downstream (demux, Bob's optics, efficiency) like the closed form's noise budget.
Ports: in (PHOTON_DTYPE), out (PHOTON_DTYPE).
"""
from __future__ import annotations

import math

import numpy as np

from qkdflow import photons
from qkdflow.physics.fibre import alpha_per_km, ssmf_attenuation_db_per_km
from qkdflow.physics.raman import raman_backward_power_w, raman_cross_section, raman_forward_power_w
from qkdflow.physics.wdm import plan_from_dict
from qkdflow.runtime.block import Block, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import PHOTON_DTYPE

from blocks.wdm_demux import photon_flux_per_ns


def _loss_check(v) -> str | None:
    if isinstance(v, str):
        return None if v == "ssmf" else f"must be a number (dB/km) or 'ssmf', got {v!r}"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
        return f"must be a number >= 0 dB/km or 'ssmf', got {v!r}"
    return None


class Fibre(Block):
    """Fibre span: loss, per-photon misalignment, forward/backward Raman noise from the WDM plan's channels."""

    category = "optics"
    params = (
        Param("length_km", float, 20.0, unit="km", doc="span length", low=0.0),
        Param("loss_db_per_km", "any", "ssmf", unit="dB/km", doc="attenuation at the quantum wavelength, or 'ssmf'",
              check=_loss_check),
        Param("misalignment", float, 0.0, doc="per-photon flip probability of this span", low=0.0, high=1.0),
        Param("raman_model", str, "literature", doc="Raman cross-section model", choices=("literature", "spectral")),
        Param("temperature_k", float, 300.0, unit="K", doc="fibre temperature (anti-Stokes Raman)", low=0.0,
              low_open=True),
        Param("raman_beta_per_km_nm", float, 3e-9, unit="1/(km nm)", doc="literature Raman calibration", low=0.0),
        Param("seed", int, 15, doc="RNG seed for thinning/flipping explicit photons", low=0),
    )
    inputs = (Stream("in", PHOTON_DTYPE),)
    outputs = (Stream("out", PHOTON_DTYPE),)

    def start(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._cfg = object()

    def _setup(self, cfg: dict | None) -> None:
        """Per plan: quantum transmittance, per-channel classical transmittance and Raman fluxes of this span."""
        self._cfg = cfg
        plan = plan_from_dict(cfg) if cfg is not None else None
        lam_q = plan.quantum_wavelength_nm if plan else 1550.12
        loss = self.loss_db_per_km
        if isinstance(loss, str):
            loss = float(ssmf_attenuation_db_per_km(lam_q, field="wdm.quantum_wavelength_nm"))
        self.loss_q = float(loss)
        a_q = float(alpha_per_km(loss))
        L = self.length_km
        self._tq = math.exp(-a_q * L)
        self._channels = []  # (name, direction, classical span transmittance, flux_per_ns per W of pump)
        for ch in (plan.classical_channels if plan else ()):
            loss_c = ch.loss_db_per_km if ch.loss_db_per_km is not None else ssmf_attenuation_db_per_km(
                ch.wavelength_nm)
            a_c = float(alpha_per_km(loss_c))
            rho = float(raman_cross_section(lam_q, ch.wavelength_nm, self.temperature_k, self.raman_model,
                                            self.raman_beta_per_km_nm))
            form = raman_forward_power_w if ch.direction == "co" else raman_backward_power_w
            p_per_w = float(form(1.0, rho, plan.filter_bandwidth_nm, L, a_c, a_q))
            p_launch_w = 1e-3 * 10.0 ** (ch.launch_power_dbm / 10.0)
            self._channels.append((ch.name, ch.direction, math.exp(-a_c * L),
                                   photon_flux_per_ns(p_per_w, lam_q), p_launch_w))

    def work(self, ins):
        f = ins["in"]
        cfg = f.meta.get("wdm")
        if cfg != self._cfg:
            self._setup(cfg)
        out = f
        for name, direction, tc, _, _ in self._channels:
            if direction == "counter":
                out = photons.scale_pump(out, name, tc)
        out = photons.attenuate(out, self._tq, self._rng)
        if self.misalignment > 0:
            out = photons.misalign(out, self.misalignment, self._rng)
        co_t = dict(f.meta.get("co_pump_t", {}))
        new = []
        for name, direction, tc, flux_per_w, p_launch_w in self._channels:
            if direction == "co":
                pump = p_launch_w * co_t.get(name, 1.0)
                co_t[name] = co_t.get(name, 1.0) * tc
                new.append(photons.noise_field(flux_per_w * pump, origin=photons.ORIGIN_RAMAN,
                                               name=f"raman_fwd:{name}"))
            else:
                new.append(photons.noise_field(flux_per_w * p_launch_w, origin=photons.ORIGIN_RAMAN,
                                               name=f"raman_bwd:{name}", pump_channel=name))
        out = photons.add_fields(out, new)
        meta = {"fibre_km": float(f.meta.get("fibre_km", 0.0)) + self.length_km}
        if co_t:
            meta["co_pump_t"] = co_t
        return {"out": out.with_data(out.data, **meta)}

    def report(self) -> dict:
        return {"length_km": self.length_km}
