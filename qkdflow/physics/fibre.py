"""Fibre attenuation: default SSMF (ITU-T G.652.D) attenuation curve and transmittance.

Default curve ``ssmf_attenuation_db_per_km(wavelength_nm)``, anchored on cabled G.652.D datasheet values:
    1310 nm 0.33 dB/km   (G.652.D cable <= 0.35 dB/km; 0.33 is the project's O-band value, physics.md Sec. 3)
    1383 nm 0.31 dB/km   (low-water-peak G.652.D datasheet maximum <= 0.31 dB/km)
    1550 nm 0.20 dB/km   (G.652.D datasheet <= 0.20 dB/km, physics.md Sec. 3.4 "Fibre")
    1625 nm 0.23 dB/km   (G.652.D datasheet <= 0.23 dB/km)
    1260 nm 0.386 dB/km  (the 1310 nm value extrapolated with the Rayleigh-scattering law alpha ∝ lambda^-4)
Between anchors the curve is a power law (linear in log alpha vs log lambda): exactly the Rayleigh lambda^-4 shape
where Rayleigh scattering dominates and a smooth interpolation elsewhere; no OH peak (low-water-peak fibre).
Valid range 1260-1625 nm (O to L band; all CWDM G.694.2 channels 1271-1611 nm). Wavelengths outside raise
ValueError. These are datasheet values, not a fit: a real link should pass its measured loss as a number.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["ATTENUATION_ANCHORS", "WAVELENGTH_RANGE_NM", "ssmf_attenuation_db_per_km", "alpha_per_km",
           "transmittance", "db_to_transmittance"]

# (wavelength_nm, loss_db_per_km); see module docstring for sources.
ATTENUATION_ANCHORS: tuple[tuple[float, float], ...] = (
    (1260.0, 0.33 * (1310.0 / 1260.0) ** 4),
    (1310.0, 0.33),
    (1383.0, 0.31),
    (1550.0, 0.20),
    (1625.0, 0.23),
)
WAVELENGTH_RANGE_NM: tuple[float, float] = (ATTENUATION_ANCHORS[0][0], ATTENUATION_ANCHORS[-1][0])
_LOG_WL = np.log([a[0] for a in ATTENUATION_ANCHORS])
_LOG_LOSS = np.log([a[1] for a in ATTENUATION_ANCHORS])


def ssmf_attenuation_db_per_km(wavelength_nm: ArrayLike, field: str = "wavelength_nm") -> np.ndarray | float:
    """Default G.652.D attenuation (dB/km) at ``wavelength_nm``; ValueError naming ``field`` outside 1260-1625 nm."""
    wl = np.asarray(wavelength_nm, dtype=float)
    lo, hi = WAVELENGTH_RANGE_NM
    ok = np.isfinite(wl) & (wl >= lo) & (wl <= hi)
    if not np.all(ok):
        raise ValueError(f"{field}: outside the attenuation model range {lo:g}-{hi:g} nm, "
                         f"got {wl.ravel()[~ok.ravel()][0]:g}")
    out = np.exp(np.interp(np.log(wl), _LOG_WL, _LOG_LOSS))
    return float(out) if out.ndim == 0 else out


def alpha_per_km(loss_db_per_km: ArrayLike) -> np.ndarray:
    """Power attenuation coefficient alpha (1/km, natural units) from dB/km: alpha = loss ln(10)/10."""
    return np.asarray(loss_db_per_km, dtype=float) * (np.log(10.0) / 10.0)


def transmittance(length_km: ArrayLike, loss_db_per_km: ArrayLike) -> np.ndarray:
    """Fibre power transmittance T_f = 10^(-loss_db_per_km * length_km / 10)."""
    return 10.0 ** (-np.asarray(loss_db_per_km, dtype=float) * np.asarray(length_km, dtype=float) / 10.0)


def db_to_transmittance(loss_db: ArrayLike) -> np.ndarray:
    """Insertion loss in dB -> power transmittance 10^(-dB/10)."""
    return 10.0 ** (-np.asarray(loss_db, dtype=float) / 10.0)
