"""Closed-form link model: parameters -> gains, QBERs, decoy bounds, key rates, finite key, noise budget, PLOB.

Parameter mapping (YAML names; every field optional except where noted, defaults in ``DEFAULTS``):
  clock:          rate_hz
  preparation:    intensities {signal, decoy, vacuum}, probabilities {signal, decoy, vacuum} (sum 1 +- 1e-9),
                  basis_bias (P(Z) at Alice and at Bob), state_prep_error (per pulse)
  fibre:          length_km, loss_db_per_km (number at the quantum wavelength, or "ssmf" = fibre.py curve),
                  misalignment (per photon), raman_model ("literature" | "spectral"), temperature_k,
                  raman_beta_per_km_nm (literature calibration, default 3e-9)
  wdm:            (absent: bare fibre at 1550.12 nm, no WDM loss; present: missing fields take the grid's
                  datasheet defaults, see wdm.GRID_DEFAULTS) quantum_wavelength_nm, classical_channels [{name, wavelength_nm, launch_power_dbm, direction,
                  loss_db_per_km?}], grid, insertion_loss_db (per mux or demux pass), adjacent_isolation_db,
                  nonadjacent_isolation_db, filter_bandwidth_nm, return_loss_db
  detector:       preset?, efficiency, dark_count_per_gate, afterpulse_probability, dead_time_ns, gate_width_ns,
                  bob_transmittance, dark_bias_scale?
  postprocessing: ec_efficiency, eps_sec, eps_cor, n_x | acquisition_time_s (finite key; else only asymptotic)

Channel transmittance to the detector inputs: T = T_f x T_mux x T_demux x bob_transmittance with
T_f = 10^(-loss L/10) and T_mux = T_demux = 10^(-insertion_loss_db/10). eta = T x efficiency.

Key rates (per emitted pulse, all intensity classes counted in the denominator):
  asymptotic (GLLP + vacuum/weak decoy, MQZL Eqs. 34/37 on the exact expected gains; key from signal pulses of
  both bases, each basis with its own phase-error estimate -- symmetric here):
      R = p_signal (q_Z^2 + q_X^2) { Q1^L [1 - H2(e1^U)] - f Q_mu H2(E_mu) },  q_Z = basis_bias, q_X = 1 - q_Z
  (q_Z = 1/2 gives MQZL's q = 1/2; q_Z -> 1 gives efficient BB84, Lo-Chau-Ardehali 2005). ``infinite_decoy`` uses the
  exact Y1, e1 of the model instead of the bounds. Finite key: Lim 2014 (finite_key.py) with the key from the Z basis
  only (all intensities), N pulses from n_pulses, acquisition_time_s x rate_hz, or n_x (sifted key-basis block).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq

from ._validate import as_float, check_keys, check_nonneg, check_positive, check_unit_interval
from .bounds import plob_bound
from .decoy import Detection, binary_entropy, detection_probabilities, gllp_key_rate, photon_number_yield, \
    vacuum_weak_bounds
from .detector import DetectorParams, detector_from_dict
from .fibre import db_to_transmittance, ssmf_attenuation_db_per_km, transmittance
from .finite_key import FiniteKey, expected_counts, lim2014_key_length
from .wdm import ChannelPlan, NoiseBudget, noise_budget, plan_from_dict

__all__ = ["DEFAULTS", "LinkParams", "LinkResult", "LinkModel", "parse_params", "evaluate", "max_distance_km",
           "finite_key", "finite_key_for", "optimise_finite_key"]

CLASSES = ("signal", "decoy", "vacuum")

DEFAULTS: dict[str, dict[str, Any]] = {
    "clock": {"rate_hz": 1.0e9},
    "preparation": {"intensities": {"signal": 0.5, "decoy": 0.1, "vacuum": 0.0},
                    "probabilities": {"signal": 0.8, "decoy": 0.15, "vacuum": 0.05},
                    "basis_bias": 0.5, "state_prep_error": 0.0},
    "fibre": {"length_km": 20.0, "loss_db_per_km": "ssmf", "misalignment": 0.01, "raman_model": "literature",
              "temperature_k": 300.0, "raman_beta_per_km_nm": 3e-9},
    "wdm": {"quantum_wavelength_nm": 1550.12, "classical_channels": [], "grid": "dwdm", "insertion_loss_db": 0.0},
    "detector": {"efficiency": 0.1, "dark_count_per_gate": 1e-6, "afterpulse_probability": 0.0,
                 "dead_time_ns": 0.0, "gate_width_ns": 1.0, "bob_transmittance": 1.0},
    "postprocessing": {"ec_efficiency": 1.16, "eps_sec": 1e-10, "eps_cor": 1e-15, "n_x": None,
                       "acquisition_time_s": None},
}
_SECTION_FIELDS = {
    "clock": {"rate_hz"},
    "preparation": {"intensities", "probabilities", "basis_bias", "state_prep_error"},
    "fibre": {"length_km", "loss_db_per_km", "misalignment", "raman_model", "temperature_k",
              "raman_beta_per_km_nm"},
    "postprocessing": {"ec_efficiency", "eps_sec", "eps_cor", "n_x", "acquisition_time_s"},
}


@dataclass(frozen=True)
class LinkParams:
    """Validated parameters (see module docstring for meanings)."""

    rate_hz: float
    intensities: np.ndarray      # (signal, decoy, vacuum) mean photon numbers
    probabilities: np.ndarray    # (signal, decoy, vacuum)
    basis_bias: float
    state_prep_error: float
    length_km: float
    loss_db_per_km: float        # at the quantum wavelength
    misalignment: float
    raman_model: str
    temperature_k: float
    raman_beta_per_km_nm: float
    plan: ChannelPlan
    detector: DetectorParams
    ec_efficiency: float
    eps_sec: float
    eps_cor: float
    n_x: float | None
    acquisition_time_s: float | None


def _merged(params: dict | None) -> dict:
    out = copy.deepcopy(DEFAULTS)
    for sec, body in (params or {}).items():
        if sec not in out:
            continue  # other sections (flowgraph, nodes, blocks...) are not the physics model's business
        if not isinstance(body, dict):
            raise ValueError(f"{sec}: must be a mapping, got {type(body).__name__}")
        if sec in _SECTION_FIELDS:
            check_keys(sec, body, _SECTION_FIELDS[sec])
        if sec == "wdm" or (sec == "detector" and "preset" in body):
            # Grid / preset defaults are resolved by the section parsers: pass only what the user gave.
            out[sec] = dict(body)
        else:
            out[sec].update(body)
    return out


def _class_triplet(section: str, value: Any, *, check: str) -> np.ndarray:
    if not isinstance(value, dict):
        raise ValueError(f"preparation.{section}: must be a mapping with keys signal, decoy, vacuum, got {value!r}")
    check_keys(f"preparation.{section}", value, set(CLASSES))
    missing = [k for k in CLASSES if k not in value]
    if missing:
        raise ValueError(f"preparation.{section}.{missing[0]}: required field missing")
    if check == "unit":
        return np.array([check_unit_interval(f"preparation.{section}.{k}", value[k]) for k in CLASSES])
    return np.array([check_nonneg(f"preparation.{section}.{k}", value[k]) for k in CLASSES])


def parse_params(params: dict | None) -> LinkParams:
    """Merge ``params`` over DEFAULTS and validate; raises ValueError("section.field: reason, got value")."""
    m = _merged(params)
    prep, fib, pp = m["preparation"], m["fibre"], m["postprocessing"]
    mu = _class_triplet("intensities", prep["intensities"], check="nonneg")
    p = _class_triplet("probabilities", prep["probabilities"], check="unit")
    if abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"preparation.probabilities: must sum to 1 (tolerance 1e-9), got {p.sum():.12g}")
    if not (mu[0] > mu[1] > mu[2]):
        raise ValueError(f"preparation.intensities: need signal > decoy > vacuum, got {mu.tolist()}")
    if p[0] <= 0:
        raise ValueError("preparation.probabilities.signal: must be > 0, got 0")
    plan = plan_from_dict(m["wdm"])
    loss = fib["loss_db_per_km"]
    if isinstance(loss, str):
        if loss != "ssmf":
            raise ValueError(f"fibre.loss_db_per_km: must be a number or 'ssmf', got {loss!r}")
        loss = float(ssmf_attenuation_db_per_km(plan.quantum_wavelength_nm, field="wdm.quantum_wavelength_nm"))
    else:
        loss = check_nonneg("fibre.loss_db_per_km", loss)
    if fib["raman_model"] not in ("literature", "spectral"):
        raise ValueError(f"fibre.raman_model: must be 'literature' or 'spectral', got {fib['raman_model']!r}")
    n_x = pp.get("n_x")
    t_acq = pp.get("acquisition_time_s")
    return LinkParams(
        rate_hz=check_positive("clock.rate_hz", m["clock"]["rate_hz"]),
        intensities=mu, probabilities=p,
        basis_bias=check_unit_interval("preparation.basis_bias", prep["basis_bias"]),
        state_prep_error=check_unit_interval("preparation.state_prep_error", prep["state_prep_error"]),
        length_km=check_nonneg("fibre.length_km", fib["length_km"]),
        loss_db_per_km=loss,
        misalignment=check_unit_interval("fibre.misalignment", fib["misalignment"]),
        raman_model=fib["raman_model"],
        temperature_k=check_positive("fibre.temperature_k", fib["temperature_k"]),
        raman_beta_per_km_nm=check_nonneg("fibre.raman_beta_per_km_nm", fib["raman_beta_per_km_nm"]),
        plan=plan,
        detector=detector_from_dict(m["detector"]),
        ec_efficiency=check_nonneg("postprocessing.ec_efficiency", pp["ec_efficiency"]),
        eps_sec=check_unit_interval("postprocessing.eps_sec", pp["eps_sec"]),
        eps_cor=check_unit_interval("postprocessing.eps_cor", pp["eps_cor"]),
        n_x=None if n_x is None else check_positive("postprocessing.n_x", n_x),
        acquisition_time_s=None if t_acq is None else check_positive("postprocessing.acquisition_time_s", t_acq),
    )


@dataclass(frozen=True)
class LinkResult:
    """Everything the closed form knows at each length (arrays shaped like length_km; per-class dicts)."""

    length_km: np.ndarray
    channel_transmittance: np.ndarray        # T up to the detector inputs
    eta: np.ndarray                          # T x efficiency
    noise: NoiseBudget                       # photons per gate at the detector inputs, per classical channel
    noise_photons_per_gate: np.ndarray       # total of the above
    dark_count_per_gate: float
    background_yield: np.ndarray             # Y0 = 1 - (1-p_dc)^2 exp(-eta_d n_noise) (no afterpulses)
    detection: dict[str, Detection]          # per intensity class (matched bases)
    gain: dict[str, np.ndarray]
    qber: dict[str, np.ndarray]
    y1_true: np.ndarray
    e1_true: np.ndarray
    y1_lower: np.ndarray
    e1_upper: np.ndarray
    key_rate_raw: np.ndarray                 # asymptotic GLLP + vacuum/weak decoy, per pulse, unclipped
    key_rate_per_pulse: np.ndarray           # clipped at 0
    key_rate_bps: np.ndarray
    key_rate_infinite_decoy_raw: np.ndarray
    key_rate_infinite_decoy_per_pulse: np.ndarray
    plob_per_pulse: np.ndarray               # PLOB at eta (detector inefficiency counted as loss)
    n_pulses: np.ndarray | None
    finite: FiniteKey | None
    finite_key_rate_per_pulse: np.ndarray | None
    finite_key_rate_bps: np.ndarray | None


class LinkModel:
    """Closed-form physical-layer model of one quantum channel; vectorised over length_km."""

    def __init__(self, params: dict | LinkParams | None = None):
        self.params = params if isinstance(params, LinkParams) else parse_params(params)

    def channel_transmittance(self, length_km: ArrayLike) -> np.ndarray:
        p = self.params
        il = db_to_transmittance(p.plan.insertion_loss_db)
        return transmittance(length_km, p.loss_db_per_km) * il * il * p.detector.bob_transmittance

    def noise(self, length_km: ArrayLike) -> NoiseBudget:
        p = self.params
        return noise_budget(p.plan, length_km, p.loss_db_per_km, p.detector.gate_width_ns,
                            p.detector.bob_transmittance, p.raman_model, p.temperature_k, p.raman_beta_per_km_nm)

    def evaluate(self, length_km: ArrayLike | None = None, n_pulses: ArrayLike | None = None) -> LinkResult:
        p = self.params
        det = p.detector
        L = np.asarray(p.length_km if length_km is None else length_km, dtype=float)
        if np.any(~np.isfinite(L)) or np.any(L < 0):
            bad = L[~(L >= 0)].ravel()[0] if np.any(~(L >= 0)) else L.ravel()[0]
            raise ValueError(f"fibre.length_km: must be >= 0, got {bad:g}")
        T = self.channel_transmittance(L)
        nb = self.noise(L)
        n_noise = nb.total
        common = _detection_args(p, T, n_noise)
        dets = {k: detection_probabilities(mu_k, **common) for k, mu_k in zip(CLASSES, p.intensities)}
        gain = {k: d.gain for k, d in dets.items()}
        qber = {k: d.qber for k, d in dets.items()}
        y0 = 1.0 - (1.0 - common["dark_count_per_gate"]) ** 2 * np.exp(-det.efficiency * n_noise)
        y1_true, e1_true = photon_number_yield(1, **common)
        mu, nu, mv = p.intensities
        y1_l, e1_u = vacuum_weak_bounds(mu, nu, gain["signal"], gain["decoy"], dets["decoy"].error,
                                        gain["vacuum"], mu_vac=mv)
        sift = p.probabilities[0] * (p.basis_bias**2 + (1 - p.basis_bias) ** 2)
        raw = gllp_key_rate(mu, gain["signal"], qber["signal"], y1_l, e1_u, p.ec_efficiency, sift)
        raw_inf = gllp_key_rate(mu, gain["signal"], qber["signal"], y1_true, e1_true, p.ec_efficiency, sift)
        eta = T * det.efficiency
        finite = fk_rate = fk_bps = None
        n_arr = None
        gains3 = np.stack([gain[k] for k in CLASSES])
        errs3 = np.stack([dets[k].error for k in CLASSES])
        if n_pulses is None and p.acquisition_time_s is not None:
            n_pulses = p.acquisition_time_s * p.rate_hz
        if n_pulses is None and p.n_x is not None:
            n_pulses = p.n_x / (p.basis_bias**2 * np.tensordot(p.probabilities, gains3, axes=1))
        if n_pulses is not None:
            n_arr = np.broadcast_to(np.asarray(n_pulses, dtype=float), L.shape).copy()
            finite = finite_key(p, n_arr, gains3, errs3)
            fk_rate = finite.length / n_arr
            fk_bps = fk_rate * p.rate_hz
        return LinkResult(
            length_km=L, channel_transmittance=T, eta=eta, noise=nb, noise_photons_per_gate=n_noise,
            dark_count_per_gate=det.dark_count_per_gate, background_yield=y0, detection=dets, gain=gain, qber=qber,
            y1_true=y1_true, e1_true=e1_true, y1_lower=y1_l, e1_upper=e1_u, key_rate_raw=raw,
            key_rate_per_pulse=np.maximum(raw, 0.0), key_rate_bps=np.maximum(raw, 0.0) * p.rate_hz,
            key_rate_infinite_decoy_raw=raw_inf, key_rate_infinite_decoy_per_pulse=np.maximum(raw_inf, 0.0),
            plob_per_pulse=plob_bound(np.clip(eta, 0.0, 1.0)), n_pulses=n_arr, finite=finite,
            finite_key_rate_per_pulse=fk_rate, finite_key_rate_bps=fk_bps)


def finite_key(p: LinkParams, n_pulses: np.ndarray, gains3: np.ndarray, errors3: np.ndarray) -> FiniteKey:
    """Lim 2014 key length from the expected counts of the closed form (key basis Z = Lim's X)."""
    n_x, n_z, m_z, m_x = expected_counts(n_pulses, p.probabilities, p.basis_bias, gains3, errors3)
    nx_tot = n_x.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        e_x = np.where(nx_tot > 0, m_x.sum(axis=0) / nx_tot, 0.5)
    lam = p.ec_efficiency * nx_tot * binary_entropy(e_x)
    return lim2014_key_length(n_x, n_z, m_z, p.intensities, p.probabilities, p.eps_sec, p.eps_cor, lam)


def evaluate(params: dict | LinkParams | None = None, length_km: ArrayLike | None = None,
             n_pulses: ArrayLike | None = None) -> LinkResult:
    """One-shot ``LinkModel(params).evaluate(length_km, n_pulses)``."""
    return LinkModel(params).evaluate(length_km, n_pulses)


def max_distance_km(model: LinkModel | dict | LinkParams, which: str = "asymptotic", n_pulses: float | None = None,
                    max_length_km: float = 500.0, step_km: float = 0.5) -> float:
    """Largest length with a positive key rate (root of the unclipped rate), by a vectorised scan + brentq.

    which: "asymptotic" (vacuum+weak decoy bounds), "infinite_decoy", or "finite" (Lim 2014 with n_pulses or the
    postprocessing block settings). Returns 0.0 if no key at 0 km, ``max_length_km`` if still positive there.
    """
    model = model if isinstance(model, LinkModel) else LinkModel(model)

    def rate(L: ArrayLike) -> np.ndarray:
        r = model.evaluate(L, n_pulses=n_pulses)
        if which == "asymptotic":
            return r.key_rate_raw
        if which == "infinite_decoy":
            return r.key_rate_infinite_decoy_raw
        if which == "finite":
            if r.finite is None:
                raise ValueError("postprocessing: finite-key distance needs n_pulses, n_x or acquisition_time_s")
            return r.finite.length_real
        raise ValueError(f"which: must be 'asymptotic', 'infinite_decoy' or 'finite', got {which!r}")

    grid = np.arange(0.0, max_length_km + step_km / 2, step_km)
    vals = rate(grid)
    pos = np.nonzero(vals > 0)[0]
    if pos.size == 0:
        return 0.0
    last = pos[-1]
    if last == grid.size - 1:
        return float(max_length_km)
    return float(brentq(lambda x: float(rate(np.array([x]))[0]), grid[last], grid[last + 1], xtol=1e-6))


def finite_key_for(p: LinkParams, length_km: float, n_x: float, eps_sec_per_bit: float | None = None
                   ) -> tuple[float, FiniteKey, float]:
    """Lim 2014 finite key at one length for a post-processing block of n_x key-basis detections.

    Returns (rate per pulse = l_real/N, FiniteKey, N). With ``eps_sec_per_bit`` (Lim's kappa) the security
    parameter is eps_sec = kappa x l, solved by fixed-point iteration (l depends on eps_sec only logarithmically).
    """
    det = p.detector
    T = float(LinkModel(p).channel_transmittance(length_km))
    n_noise = float(noise_budget(p.plan, length_km, p.loss_db_per_km, det.gate_width_ns, det.bob_transmittance,
                                 p.raman_model, p.temperature_k, p.raman_beta_per_km_nm).total)
    d = detection_probabilities(p.intensities, **_detection_args(p, T, n_noise))
    n_pulses = n_x / (p.basis_bias**2 * float(np.dot(p.probabilities, d.gain)))
    eps = p.eps_sec if eps_sec_per_bit is None else eps_sec_per_bit * n_x
    for _ in range(1 if eps_sec_per_bit is None else 4):
        fk = finite_key(dataclasses.replace(p, eps_sec=eps), np.array(n_pulses), d.gain[:, None], d.error[:, None])
        if eps_sec_per_bit is not None:
            eps = min(eps_sec_per_bit * max(float(fk.length_real[0]), 1.0), 0.5)
    return float(fk.length_real[0]) / n_pulses, fk, n_pulses


def optimise_finite_key(params: dict | LinkParams, length_km: float, n_x: float,
                        eps_sec_per_bit: float | None = None, n_starts: int = 3, seed: int = 0
                        ) -> tuple[dict, float]:
    """Maximise the Lim 2014 rate per pulse over {basis_bias, p_signal, p_decoy, mu_signal, mu_decoy} at fixed
    vacuum intensity (Lim 2014 Sec. IV). Returns (optimal parameter dict, rate per pulse; <= 0 means no key)."""
    from .finite_key import optimise_parameters

    p = params if isinstance(params, LinkParams) else parse_params(params)
    vac = float(p.intensities[2])

    def objective(x: dict) -> float:
        q = dataclasses.replace(p, basis_bias=x["basis_bias"],
                                intensities=np.array([x["mu_signal"], x["mu_decoy"], vac]),
                                probabilities=np.array([x["p_signal"], x["p_decoy"], x["p_vacuum"]]))
        rate, fk, n_pulses = finite_key_for(q, length_km, n_x, eps_sec_per_bit)
        # Below zero, rank by the key length itself: l/N would reward inflating N to approach 0 from below.
        return rate if rate > 0 else float(fk.score[0]) * 1e-30

    start = {"basis_bias": max(p.basis_bias, 0.6), "p_signal": p.probabilities[0], "p_decoy": p.probabilities[1],
             "p_vacuum": p.probabilities[2], "mu_signal": p.intensities[0], "mu_decoy": p.intensities[1]}
    if not (start["mu_signal"] > start["mu_decoy"] + vac):
        raise ValueError("preparation.intensities: Lim 2014 needs signal > decoy + vacuum")
    return optimise_parameters(objective, start, vac, n_starts=n_starts, seed=seed)


def afterpulse_rate(p: "LinkParams", transmittance: ArrayLike, n_noise: ArrayLike) -> np.ndarray:
    """Stationary afterpulse click probability per detector per gate, a (the "stationary" model).

    Every click of a detector (photon, dark count or afterpulse) triggers, with probability p_ap, one more click of
    that detector in a later gate (the Monte-Carlo detector's model). Afterpulses therefore land in gates of every
    intensity class and basis, independent of the photons in that gate, and act like an extra dark count of
    probability a per detector per gate. With c(a) the mean click probability of one detector per gate over all
    classes and both basis-match cases (computed with dark count 1 - (1-p_dc)(1-a)), a solves a = p_ap c(a)
    (the cascade of afterpulses of afterpulses included); solved by fixed-point iteration (contraction: p_ap < 1).
    Exact for an afterpulse delay spanning many gates; dead time ignored, as elsewhere in the closed form.
    Lim et al. 2014's R_k = D_k(1 + p_ap) keeps afterpulses in their own class instead, which makes the vacuum
    decoy's gain far too small whenever afterpulsing is not negligible.
    """
    det = p.detector
    p_ap = det.afterpulse_probability
    T = np.asarray(transmittance, dtype=float)
    if p_ap == 0:
        return np.zeros_like(T)
    q = p.basis_bias
    match = q * q + (1 - q) * (1 - q)  # Bob's active basis choice has the same bias
    a = np.zeros_like(T)
    for _ in range(50):
        pdc = 1.0 - (1.0 - det.dark_count_per_gate) * (1.0 - a)
        c = np.zeros_like(T)
        for mu_k, p_k in zip(p.intensities, p.probabilities):
            for matched, w in ((True, match), (False, 1.0 - match)):
                d = detection_probabilities(mu_k, T, det.efficiency, pdc, n_noise, p.misalignment,
                                            p.state_prep_error, 0.0, matched=matched)
                c = c + p_k * w * (d.gain + d.double) / 2.0  # P(c) + P(w) = gain + double
        a_new = p_ap * c
        if np.all(np.abs(a_new - a) <= 1e-12 * np.maximum(a_new, 1e-300)):
            return a_new
        a = a_new
    return a


def _detection_args(p: "LinkParams", T: ArrayLike, n_noise: ArrayLike) -> dict:
    """Keyword arguments of ``detection_probabilities`` for this link, afterpulse model applied."""
    det = p.detector
    args = dict(transmittance=T, efficiency=det.efficiency, dark_count_per_gate=det.dark_count_per_gate,
                noise_photons_per_gate=n_noise, misalignment=p.misalignment, state_prep_error=p.state_prep_error,
                afterpulse_probability=det.afterpulse_probability)
    if det.afterpulse_model == "stationary" and det.afterpulse_probability > 0:
        a = afterpulse_rate(p, T, n_noise)
        args["dark_count_per_gate"] = 1.0 - (1.0 - det.dark_count_per_gate) * (1.0 - a)
        args["afterpulse_probability"] = 0.0
    return args
