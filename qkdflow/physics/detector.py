"""Single-photon detector parameters, presets and the InGaAs operating-point curve.

Operating-point model (physics.md Sec. 4; excess bias V in units of the triggering scale V_c):
    PDE(V)   = eta_abs (1 - exp(-V))                      (triggering probability saturates with excess bias)
    p_ap(V)  = k_ap V                                     (afterpulsing ∝ avalanche charge ∝ C V_ex)
    p_dc(V)  = p_dc_ref [P_trig(V)/P_trig(V_ref)] exp((V - V_ref)/V0)
The dark-count law has two factors: a thermally/tunnel-generated carrier must trigger an avalanche with the same
P_trig(V) = PDE/eta_abs as a photo-carrier (so p_dc ∝ PDE at least), and field-assisted generation adds
exp(V/V0). Calibration (exact, two equations, two unknowns each):
  * eta_abs and k_ap from Comandar et al., J. Appl. Phys. 117, 083109 (2015), arXiv:1412.1586:
    PDE 50 % at p_ap 7 % and PDE 55 % at p_ap 10.2 %  ->  eta_abs = 0.5855, V(50 %) = 1.924, V(55 %) = 2.804,
    k_ap = 0.03637 per V_c. (The 10.2 % point was measured with a 10 ns dead time and the 7 % point dead-time free;
    the curve treats both as the per-gate afterpulse probability -- the paper's numbers, not a fit.)
  * p_dc_ref = 6e-7 per gate at PDE 10 % (Lim et al., PRA 89, 022307 (2014) Sec. IV, from Walenta et al.,
    J. Appl. Phys. 112, 063106 (2012)).
  * V0: no same-device (efficiency, dark count) pair was found in the project's references, so the default is
    V0 = inf (only the certain P_trig factor; d ln p_dc / d ln PDE -> 1 at low bias). Pass ``dark_bias_scale`` to
    switch on field-assisted growth. With V0 = inf the QBER still rises with efficiency through afterpulsing,
    which is the cited mechanism (physics.md Sec. 4, "afterpulse floor").

SNSPD preset: Marsili et al., Nat. Photon. 7, 210 (2013): WSi SNSPD, system detection efficiency 93 % at 1550 nm,
~1 count/s device dark count, no afterpulsing, 40 ns reset time. Dark count per gate = 1 /s x gate width.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq

from ._validate import check_keys, check_nonneg, check_positive, check_unit_interval

__all__ = ["DetectorParams", "IngaasCurve", "INGAAS_GATED", "ingaas_operating_point", "detector_from_dict",
           "PRESETS"]


@dataclass(frozen=True)
class DetectorParams:
    """Bob's detector pair (two identical detectors per measurement) and Bob's optics.

    efficiency: per-photon detection efficiency eta_d of each detector; dark_count_per_gate: p_dc per detector per
    gate (independent); afterpulse_probability: p_ap, the probability that a click triggers one more click of
    the same detector in a later gate; afterpulse_model: "stationary" (default: afterpulses land in later gates of
    any intensity class, see ``qkdflow.physics.link.afterpulse_rate``) or "lim2014" (Lim et al. 2014 Sec. IV:
    R_k = D_k (1 + p_ap), errors + p_ap D_k / 2, i.e. afterpulses stay in the gate's own class — used to
    reproduce that paper's numbers); dead_time_ns: not used by the closed form
    (no dead time; the Monte-Carlo agreement tests run with 0); gate_width_ns: effective gate for counting noise
    photons; bob_transmittance: Bob's optics before the detectors (excluding the WDM demux).
    """

    efficiency: float = 0.1
    dark_count_per_gate: float = 1e-6
    afterpulse_probability: float = 0.0
    afterpulse_model: str = "stationary"
    dead_time_ns: float = 0.0
    gate_width_ns: float = 1.0
    bob_transmittance: float = 1.0

    def validated(self, section: str = "detector") -> "DetectorParams":
        check_unit_interval(f"{section}.efficiency", self.efficiency)
        check_unit_interval(f"{section}.dark_count_per_gate", self.dark_count_per_gate, open_high=True)
        check_unit_interval(f"{section}.afterpulse_probability", self.afterpulse_probability, open_high=True)
        if self.afterpulse_model not in ("stationary", "lim2014"):
            raise ValueError(f"{section}.afterpulse_model: must be stationary or lim2014, got {self.afterpulse_model!r}")
        check_nonneg(f"{section}.dead_time_ns", self.dead_time_ns)
        check_positive(f"{section}.gate_width_ns", self.gate_width_ns)
        check_unit_interval(f"{section}.bob_transmittance", self.bob_transmittance)
        return self


@dataclass(frozen=True)
class IngaasCurve:
    """Bias-coupled InGaAs/InP operating-point curve (see module docstring)."""

    eta_abs: float
    k_ap_per_vc: float
    dark_ref_efficiency: float = 0.10
    dark_ref_per_gate: float = 6e-7
    dark_bias_scale: float = math.inf  # V0 in units of V_c

    def bias(self, efficiency: ArrayLike) -> np.ndarray:
        """Excess bias V/V_c giving ``efficiency`` (inverse of PDE(V))."""
        eff = np.asarray(efficiency, dtype=float)
        if np.any(eff <= 0) or np.any(eff >= self.eta_abs):
            raise ValueError(f"detector.efficiency: ingaas_gated curve needs 0 < efficiency < {self.eta_abs:.4f}, "
                             f"got {efficiency}")
        return -np.log1p(-eff / self.eta_abs)

    def operating_point(self, efficiency: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """efficiency -> (dark_count_per_gate, afterpulse_probability)."""
        v = self.bias(efficiency)
        v_ref = self.bias(self.dark_ref_efficiency)
        field = 1.0 if math.isinf(self.dark_bias_scale) else np.exp((v - v_ref) / self.dark_bias_scale)
        dark = self.dark_ref_per_gate * (np.asarray(efficiency) / self.dark_ref_efficiency) * field
        return dark, self.k_ap_per_vc * v


def _calibrate_comandar(eta1: float = 0.50, ap1: float = 0.07, eta2: float = 0.55, ap2: float = 0.102) -> IngaasCurve:
    """Solve eta_abs(1-e^{-V1}) = eta1, eta_abs(1-e^{-V2}) = eta2, V1/V2 = ap1/ap2 exactly."""
    r = ap1 / ap2
    v2 = brentq(lambda v: -np.expm1(-r * v) / -np.expm1(-v) - eta1 / eta2, 1e-9, 200.0, xtol=1e-14)
    eta_abs = eta2 / -np.expm1(-v2)
    return IngaasCurve(eta_abs=float(eta_abs), k_ap_per_vc=float(ap2 / v2))


INGAAS_GATED = _calibrate_comandar()


def ingaas_operating_point(efficiency: ArrayLike, dark_bias_scale: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """InGaAs preset: efficiency -> (dark_count_per_gate, afterpulse_probability) on the Comandar-calibrated curve."""
    return replace(INGAAS_GATED, dark_bias_scale=dark_bias_scale).operating_point(efficiency)


PRESETS = {
    # Lim 2014 / Walenta 2012 operating point on the InGaAs curve (efficiency 10 %).
    "ingaas_gated": {"efficiency": 0.10, "gate_width_ns": 1.0, "dead_time_ns": 0.0},
    # Marsili 2013 WSi SNSPD.
    "snspd": {"efficiency": 0.93, "afterpulse_probability": 0.0, "dead_time_ns": 40.0, "gate_width_ns": 1.0,
              "dark_count_rate_hz": 1.0},
}
PRESETS["snsdp"] = PRESETS["snspd"]

_FIELDS = {"preset", "efficiency", "dark_count_per_gate", "afterpulse_probability", "afterpulse_model",
           "dead_time_ns", "gate_width_ns", "bob_transmittance", "dark_bias_scale"}


def detector_from_dict(cfg: dict | None, section: str = "detector") -> DetectorParams:
    """Build DetectorParams from a YAML-style mapping; explicit fields override preset values.

    With ``preset: ingaas_gated`` dark_count_per_gate and afterpulse_probability follow the operating-point curve
    at the given efficiency unless given explicitly.
    """
    cfg = dict(cfg or {})
    check_keys(section, cfg, _FIELDS)
    preset = cfg.pop("preset", None)
    dark_bias_scale = cfg.pop("dark_bias_scale", math.inf)
    values: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"{section}.preset: unknown preset (allowed: ingaas_gated, snspd), got {preset!r}")
        base = dict(PRESETS[preset])
        rate = base.pop("dark_count_rate_hz", None)
        values.update(base)
        values.update({k: v for k, v in cfg.items()})
        gate = check_positive(f"{section}.gate_width_ns", values.get("gate_width_ns", 1.0))
        if preset == "ingaas_gated":
            dbs = (math.inf if dark_bias_scale is None or dark_bias_scale == math.inf
                   else check_positive(f"{section}.dark_bias_scale", dark_bias_scale))
            eff = check_unit_interval(f"{section}.efficiency", values["efficiency"])
            dark, ap = ingaas_operating_point(eff, dbs)
            values.setdefault("dark_count_per_gate", float(dark))
            values.setdefault("afterpulse_probability", float(ap))
        elif rate is not None:
            values.setdefault("dark_count_per_gate", rate * gate * 1e-9)
    else:
        values.update(cfg)
    det = DetectorParams(**{k: values[k] for k in values if k in DetectorParams.__dataclass_fields__})
    return det.validated(section)
