"""Passive WDM channel plan: adjacency, insertion loss, isolation leakage and the per-gate noise budget.

Grids: CWDM ITU-T G.694.2 (20 nm spacing); DWDM ITU-T G.694.1 (100 GHz, ~0.8 nm at 1550 nm). The separation of a
classical channel from the quantum channel is counted in grid spacings (wavelength for CWDM, optical frequency for
DWDM): < 0.75 spacing -> ValueError (on or within the quantum channel's slot); < 1.5 -> adjacent; else non-adjacent.

Defaults (datasheets quoted in physics.md Sec. 3.3): CWDM insertion loss 1.6 dB per pass (4-ch max), isolation
30 dB adjacent / 40 dB non-adjacent, pass band 13 nm; DWDM 100 GHz AWG 4.5 dB typ., 25 / 30 dB, -3 dB width 0.6 nm;
return loss 45 dB.

Noise at Bob's detector inputs per gate (all unpolarised; photons per gate = P lambda_q/(h c) x gate_width):
  * Raman (``qkdflow.physics.raman``): co-propagating channels (direction "co", AAU->DU, launched at the AAU) give the
    forward form, counter-propagating ones ("counter", DU->AAU, launched at the DU next to Bob) the backward form;
    the scattered light then passes the quantum port of Bob's demux (insertion_loss_db) and Bob's optics.
  * In-band leakage through finite isolation: power leaking from the demux common port into the quantum output port
    is P_common 10^(-isolation/10) (isolation referred to the common-port input), then Bob's optics.
    co: P_common = launch x fibre transmittance at the classical wavelength; counter: P_common = launch x
    10^(-return_loss_db/10) (near-end reflection back into the demux). Rayleigh backscatter of the counter-propagating
    channel is NOT modelled. Four-wave mixing is NOT modelled (negligible except for closely spaced co-propagating
    channels near the zero-dispersion wavelength, physics.md Sec. 3.4).
``launch_power_dbm`` is the classical power entering the fibre (after the mux).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.constants import c as C_LIGHT

from ._validate import as_float, check_keys, check_nonneg, check_positive
from .fibre import alpha_per_km, db_to_transmittance, ssmf_attenuation_db_per_km
from .raman import photons_per_gate, raman_backward_power_w, raman_cross_section, raman_forward_power_w

__all__ = ["ClassicalChannel", "ChannelPlan", "NoiseBudget", "plan_from_dict", "noise_budget", "GRID_DEFAULTS"]

GRID_DEFAULTS = {
    "cwdm": {"insertion_loss_db": 1.6, "adjacent_isolation_db": 30.0, "nonadjacent_isolation_db": 40.0,
             "filter_bandwidth_nm": 13.0},
    "dwdm": {"insertion_loss_db": 4.5, "adjacent_isolation_db": 25.0, "nonadjacent_isolation_db": 30.0,
             "filter_bandwidth_nm": 0.6},
}
CWDM_SPACING_NM = 20.0
DWDM_SPACING_HZ = 100e9


@dataclass(frozen=True)
class ClassicalChannel:
    name: str
    wavelength_nm: float
    launch_power_dbm: float
    direction: str  # "co" (AAU->DU, same as quantum) or "counter" (DU->AAU)
    loss_db_per_km: float | None = None  # default: SSMF curve at wavelength_nm


@dataclass(frozen=True)
class ChannelPlan:
    quantum_wavelength_nm: float = 1550.12
    classical_channels: tuple[ClassicalChannel, ...] = ()
    grid: str = "dwdm"
    insertion_loss_db: float = 0.0
    adjacent_isolation_db: float = 25.0
    nonadjacent_isolation_db: float = 30.0
    filter_bandwidth_nm: float = 0.6
    return_loss_db: float = 45.0

    def spacings(self) -> np.ndarray:
        """Separation of each classical channel from the quantum channel in grid spacings."""
        wl = np.array([ch.wavelength_nm for ch in self.classical_channels], dtype=float)
        if self.grid == "cwdm":
            return np.abs(wl - self.quantum_wavelength_nm) / CWDM_SPACING_NM
        return np.abs(C_LIGHT / (wl * 1e-9) - C_LIGHT / (self.quantum_wavelength_nm * 1e-9)) / DWDM_SPACING_HZ

    def adjacent(self) -> np.ndarray:
        return self.spacings() < 1.5

    def isolation_db(self) -> np.ndarray:
        return np.where(self.adjacent(), self.adjacent_isolation_db, self.nonadjacent_isolation_db)


_PLAN_FIELDS = {"quantum_wavelength_nm", "classical_channels", "grid", "insertion_loss_db", "adjacent_isolation_db",
                "nonadjacent_isolation_db", "filter_bandwidth_nm", "return_loss_db"}
_CH_FIELDS = {"name", "wavelength_nm", "launch_power_dbm", "direction", "loss_db_per_km"}


def plan_from_dict(cfg: dict | None, section: str = "wdm") -> ChannelPlan:
    """Validate a YAML-style WDM section into a ChannelPlan (grid defaults fill missing fields)."""
    cfg = dict(cfg or {})
    check_keys(section, cfg, _PLAN_FIELDS)
    grid = cfg.get("grid", "dwdm")
    if grid not in GRID_DEFAULTS:
        raise ValueError(f"{section}.grid: must be 'cwdm' or 'dwdm', got {grid!r}")
    vals = dict(GRID_DEFAULTS[grid])
    vals.update({k: v for k, v in cfg.items() if k not in ("classical_channels", "grid")})
    lam_q = check_positive(f"{section}.quantum_wavelength_nm", vals.get("quantum_wavelength_nm", 1550.12))
    ssmf_attenuation_db_per_km(lam_q, field=f"{section}.quantum_wavelength_nm")
    for key in ("insertion_loss_db", "adjacent_isolation_db", "nonadjacent_isolation_db", "return_loss_db"):
        if key in vals:
            vals[key] = check_nonneg(f"{section}.{key}", vals[key])
    vals["filter_bandwidth_nm"] = check_positive(f"{section}.filter_bandwidth_nm", vals["filter_bandwidth_nm"])
    channels = []
    raw = cfg.get("classical_channels", []) or []
    if not isinstance(raw, (list, tuple)):
        raise ValueError(f"{section}.classical_channels: must be a list, got {type(raw).__name__}")
    for i, ch in enumerate(raw):
        where = f"{section}.classical_channels[{i}]"
        check_keys(where, ch, _CH_FIELDS)
        for req in ("wavelength_nm", "launch_power_dbm", "direction"):
            if req not in ch:
                raise ValueError(f"{where}.{req}: required field missing")
        wl = check_positive(f"{where}.wavelength_nm", ch["wavelength_nm"])
        ssmf_attenuation_db_per_km(wl, field=f"{where}.wavelength_nm")
        if ch["direction"] not in ("co", "counter"):
            raise ValueError(f"{where}.direction: must be 'co' or 'counter', got {ch['direction']!r}")
        loss = ch.get("loss_db_per_km")
        channels.append(ClassicalChannel(name=str(ch.get("name", f"ch{i}")), wavelength_nm=wl,
                                         launch_power_dbm=as_float(f"{where}.launch_power_dbm",
                                                                   ch["launch_power_dbm"]),
                                         direction=ch["direction"],
                                         loss_db_per_km=None if loss is None else check_nonneg(
                                             f"{where}.loss_db_per_km", loss)))
    plan = ChannelPlan(quantum_wavelength_nm=lam_q, classical_channels=tuple(channels), grid=grid,
                       **{k: float(vals[k]) for k in ("insertion_loss_db", "adjacent_isolation_db",
                                                      "nonadjacent_isolation_db", "filter_bandwidth_nm",
                                                      "return_loss_db") if k in vals})
    sp = plan.spacings()
    for i, s in enumerate(sp):
        if s < 0.75:
            spacing = "20 nm" if grid == "cwdm" else "100 GHz"
            raise ValueError(f"{section}.classical_channels[{i}].wavelength_nm: within one {grid} grid spacing "
                             f"({spacing}) of the quantum channel, got {channels[i].wavelength_nm:g} nm")
    return plan


@dataclass(frozen=True)
class NoiseBudget:
    """Noise photons per gate at Bob's detector inputs (before detection efficiency), per classical channel.

    Arrays have shape (n_channels, *length_shape); totals sum over channels.
    """

    names: tuple[str, ...]
    raman_forward: np.ndarray
    raman_backward: np.ndarray
    leakage: np.ndarray
    total: np.ndarray = field(default=None)  # type: ignore[assignment]

    @property
    def raman_forward_total(self) -> np.ndarray:
        return self.raman_forward.sum(axis=0)

    @property
    def raman_backward_total(self) -> np.ndarray:
        return self.raman_backward.sum(axis=0)

    @property
    def leakage_total(self) -> np.ndarray:
        return self.leakage.sum(axis=0)


def noise_budget(plan: ChannelPlan, length_km: ArrayLike, loss_q_db_per_km: float, gate_width_ns: float,
                 bob_transmittance: float, raman_model: str = "literature", temperature_k: float = 300.0,
                 raman_beta_per_km_nm: float = 3e-9) -> NoiseBudget:
    """Per-channel Raman (forward/backward) and leakage photons per gate at the detector inputs, vectorised over L."""
    L = np.asarray(length_km, dtype=float)
    n = len(plan.classical_channels)
    shape = (n,) + L.shape
    fwd, bwd, leak = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    if n:
        lam_q = plan.quantum_wavelength_nm
        a_q = alpha_per_km(loss_q_db_per_km)
        t_demux = float(db_to_transmittance(plan.insertion_loss_db))
        iso = db_to_transmittance(plan.isolation_db())
        for i, ch in enumerate(plan.classical_channels):
            p_in_w = 1e-3 * 10.0 ** (ch.launch_power_dbm / 10.0)
            loss_c = ch.loss_db_per_km if ch.loss_db_per_km is not None else ssmf_attenuation_db_per_km(
                ch.wavelength_nm)
            a_c = alpha_per_km(loss_c)
            rho = raman_cross_section(lam_q, ch.wavelength_nm, temperature_k, raman_model, raman_beta_per_km_nm)
            if ch.direction == "co":
                p_r = raman_forward_power_w(p_in_w, rho, plan.filter_bandwidth_nm, L, a_c, a_q)
                fwd[i] = photons_per_gate(p_r * t_demux * bob_transmittance, lam_q, gate_width_ns)
                p_common = p_in_w * np.exp(-a_c * L)
            else:
                p_r = raman_backward_power_w(p_in_w, rho, plan.filter_bandwidth_nm, L, a_c, a_q)
                bwd[i] = photons_per_gate(p_r * t_demux * bob_transmittance, lam_q, gate_width_ns)
                p_common = p_in_w * db_to_transmittance(plan.return_loss_db) * np.ones_like(L)
            # Leaked light is classical-wavelength light: count photons with its own photon energy.
            leak[i] = photons_per_gate(p_common * iso[i] * bob_transmittance, ch.wavelength_nm, gate_width_ns)
    total = fwd.sum(axis=0) + bwd.sum(axis=0) + leak.sum(axis=0)
    return NoiseBudget(names=tuple(ch.name for ch in plan.classical_channels), raman_forward=fwd,
                       raman_backward=bwd, leakage=leak, total=total)
