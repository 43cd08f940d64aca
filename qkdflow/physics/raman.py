"""Spontaneous Raman scattering (SpRS) noise from classical WDM channels into the quantum channel.

Propagation (physics.md Sec. 3.1; standard forms of Eraerds et al., NJP 12, 063027 (2010), generalised here to
different attenuation at the classical (alpha_c) and quantum (alpha_q) wavelength by integrating
dP = P_c(z) rho dlambda dz with exponential transport of both the pump and the scattered light):

    forward  (co-propagating, received at the far end z = L):
        P_f = P_in rho dlambda (exp(-alpha_q L) - exp(-alpha_c L)) / (alpha_c - alpha_q)
            -> P_in rho dlambda L exp(-alpha L)                      (alpha_c = alpha_q = alpha)
    backward (counter-propagating, received at the launch end z = 0):
        P_b = P_in rho dlambda (1 - exp(-(alpha_c + alpha_q) L)) / (alpha_c + alpha_q)
            -> P_in rho dlambda (1 - exp(-2 alpha L)) / (2 alpha) = P_out rho dlambda sinh(alpha L)/alpha

P_in is the classical power launched into the fibre (W), rho the Raman cross-section per km per nm of receiver
bandwidth, dlambda the receiver filter width (nm), alpha in 1/km (natural units).

Cross-section rho (1/(km nm)):
  * ``"spectral"`` -- physics.md Sec. 3.2: rho = 2 h nu_q C_R(|dnu|) {n_th + 1 (Stokes, lambda_q > lambda_c);
    n_th (anti-Stokes)} c/lambda_q^2 x (1 nm), n_th = 1/(exp(h|dnu|/kT) - 1). The factor 2 counts both
    polarisation modes of the (unpolarised) spontaneous emission. C_R is the polarisation-averaged SSMF Raman gain
    efficiency of GNPy (``DEFAULT_RAMAN_COEFFICIENT``, gnpy/core/parameters.py, BSD-3-Clause; D'Amico et al.,
    JLT 40, 3499 (2022), Sec. III.D): profile g0(dnu) in 1/(W m) for a 1454 nm (206.1846 THz) pump, scaled in
    proportion to the pump (= classical channel) frequency; zero beyond the tabulated 42 THz offset.
  * ``"literature"`` (default) -- Kumar, Qin, Alleaume, NJP 17, 043027 (2015), Eq. (6): beta = 3e-9 /(km nm) for
    a 1531.12 nm quantum channel under C-band classical light. It is used as the absolute calibration and the spectral
    model only supplies the ratio: rho = beta x rho_spectral(lambda_q, lambda_c, T) / rho_spectral(1531.12 nm,
    1550.12 nm, 300 K). The reference classical wavelength 1550.12 nm (ITU 193.4 THz) is this module's assumption
    about Kumar et al.'s setup [R]; physics.md notes the GNPy numbers are 1.4-3x higher than the literature anchor in
    the C band, which is why the calibrated form is the default.

Noise photons per gate at the detector input: N = P lambda_q/(h c) x gate_width x (downstream transmittance).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.constants import c as C_LIGHT, h as H_PLANCK, k as K_BOLTZMANN

__all__ = [
    "RAMAN_OFFSET_THZ",
    "RAMAN_G0_PER_W_M",
    "RAMAN_REFERENCE_PUMP_HZ",
    "LITERATURE_BETA_PER_KM_NM",
    "raman_gain_efficiency_per_w_km",
    "raman_cross_section_spectral",
    "raman_cross_section",
    "raman_forward_power_w",
    "raman_backward_power_w",
    "photons_per_gate",
]

# GNPy DEFAULT_RAMAN_COEFFICIENT: frequency offsets (THz) and g0 (1/(W m)), 1454 nm reference pump.
RAMAN_OFFSET_THZ = np.array([
    0., 0.5, 1., 1.5, 2., 2.5, 3., 3.5, 4., 4.5, 5., 5.5, 6., 6.5, 7., 7.5, 8., 8.5, 9., 9.5, 10., 10.5, 11., 11.5,
    12., 12.5, 12.75, 13., 13.25, 13.5, 14., 14.5, 14.75, 15., 15.5, 16., 16.5, 17., 17.5, 18., 18.25, 18.5, 18.75,
    19., 19.5, 20., 20.5, 21., 21.5, 22., 22.5, 23., 23.5, 24., 24.5, 25., 25.5, 26., 26.5, 27., 27.5, 28., 28.5,
    29., 29.5, 30., 30.5, 31., 31.5, 32., 32.5, 33., 33.5, 34., 34.5, 35., 35.5, 36., 36.5, 37., 37.5, 38., 38.5,
    39., 39.5, 40., 40.5, 41., 41.5, 42.])
RAMAN_G0_PER_W_M = np.array([
    0.00000000e+00, 1.12351610e-05, 3.47838074e-05, 5.79356636e-05, 8.06921680e-05, 9.79845709e-05, 1.10454361e-04,
    1.18735302e-04, 1.24736889e-04, 1.30110053e-04, 1.41001273e-04, 1.46383247e-04, 1.57011792e-04, 1.70765865e-04,
    1.88408911e-04, 2.05914127e-04, 2.24074028e-04, 2.47508283e-04, 2.77729174e-04, 3.08044243e-04, 3.34764439e-04,
    3.56481704e-04, 3.77127256e-04, 3.96269124e-04, 4.10955175e-04, 4.18718761e-04, 4.19511263e-04, 4.17025384e-04,
    4.13565369e-04, 4.07726048e-04, 3.83671291e-04, 4.08564283e-04, 3.69571936e-04, 3.14442090e-04, 2.16074535e-04,
    1.23097823e-04, 8.95457457e-05, 7.52470400e-05, 7.19806145e-05, 8.87961158e-05, 9.30812065e-05, 9.37058268e-05,
    8.45719619e-05, 6.90585286e-05, 4.50407159e-05, 3.36521245e-05, 3.02292475e-05, 2.69376939e-05, 2.60020897e-05,
    2.82958958e-05, 3.08667558e-05, 3.66024657e-05, 5.80610307e-05, 6.54797937e-05, 6.25022715e-05, 5.37806442e-05,
    3.94996621e-05, 2.68120644e-05, 2.33038554e-05, 1.79140757e-05, 1.52472424e-05, 1.32707565e-05, 1.06541760e-05,
    9.84649374e-06, 9.13999627e-06, 9.08971012e-06, 1.04227525e-05, 1.50419271e-05, 1.77838232e-05, 2.15810815e-05,
    2.03744008e-05, 1.81939341e-05, 1.31862121e-05, 9.65352116e-06, 8.62698322e-06, 9.18688016e-06, 1.01737784e-05,
    1.08017817e-05, 1.03903588e-05, 9.30040333e-06, 8.30809173e-06, 6.90650401e-06, 5.52238029e-06, 3.90648708e-06,
    2.22908227e-06, 1.55796177e-06, 9.77218716e-07, 3.23477236e-07, 1.60602454e-07, 7.97306386e-08])
RAMAN_REFERENCE_PUMP_HZ = 206184634112792.0  # 1454 nm
LITERATURE_BETA_PER_KM_NM = 3e-9
LITERATURE_REF_QUANTUM_NM = 1531.12
LITERATURE_REF_CLASSICAL_NM = 1550.12
LITERATURE_REF_TEMPERATURE_K = 300.0


def raman_gain_efficiency_per_w_km(pump_wavelength_nm: ArrayLike, offset_hz: ArrayLike) -> np.ndarray:
    """Polarisation-averaged Raman gain efficiency C_R (1/(W km)) at |offset| for a pump at pump_wavelength_nm."""
    pump_hz = C_LIGHT / (np.asarray(pump_wavelength_nm, dtype=float) * 1e-9)
    g0 = np.interp(np.abs(np.asarray(offset_hz, dtype=float)) / 1e12, RAMAN_OFFSET_THZ, RAMAN_G0_PER_W_M, right=0.0)
    return g0 * 1e3 * pump_hz / RAMAN_REFERENCE_PUMP_HZ


def raman_cross_section_spectral(quantum_wavelength_nm: ArrayLike, classical_wavelength_nm: ArrayLike,
                                 temperature_k: float = 300.0) -> np.ndarray:
    """rho (1/(km nm)) from the GNPy Raman profile with thermal (Bose-Einstein) occupation; physics.md Sec. 3.2."""
    lq = np.asarray(quantum_wavelength_nm, dtype=float) * 1e-9
    lc = np.asarray(classical_wavelength_nm, dtype=float) * 1e-9
    nu_q = C_LIGHT / lq
    dnu = C_LIGHT / lc - nu_q  # > 0: Stokes (quantum below the pump in frequency)
    if np.any(dnu == 0):
        raise ValueError("classical_channels.wavelength_nm: equals the quantum wavelength (Raman offset 0)")
    n_th = 1.0 / np.expm1(H_PLANCK * np.abs(dnu) / (K_BOLTZMANN * temperature_k))
    occupation = np.where(dnu > 0, n_th + 1.0, n_th)
    c_r = raman_gain_efficiency_per_w_km(classical_wavelength_nm, dnu)
    per_nm_hz = C_LIGHT / lq**2 * 1e-9  # Hz of optical bandwidth per nm at lambda_q
    return 2.0 * H_PLANCK * nu_q * c_r * occupation * per_nm_hz


def raman_cross_section(quantum_wavelength_nm: ArrayLike, classical_wavelength_nm: ArrayLike,
                        temperature_k: float = 300.0, model: str = "literature",
                        beta_per_km_nm: float = LITERATURE_BETA_PER_KM_NM) -> np.ndarray:
    """rho (1/(km nm)) for ``model`` "literature" (Kumar 2015 calibration x spectral ratio) or "spectral"."""
    spectral = raman_cross_section_spectral(quantum_wavelength_nm, classical_wavelength_nm, temperature_k)
    if model == "spectral":
        return spectral
    if model == "literature":
        ref = raman_cross_section_spectral(LITERATURE_REF_QUANTUM_NM, LITERATURE_REF_CLASSICAL_NM,
                                           LITERATURE_REF_TEMPERATURE_K)
        return beta_per_km_nm * spectral / ref
    raise ValueError(f"fibre.raman_model: must be 'literature' or 'spectral', got {model!r}")


def _one_minus_exp_over(x: np.ndarray) -> np.ndarray:
    """(1 - exp(-x))/x, stable near x = 0 (limit 1)."""
    x = np.asarray(x, dtype=float)
    safe = np.where(np.abs(x) < 1e-12, 1.0, x)
    return np.where(np.abs(x) < 1e-12, 1.0 - x / 2.0, -np.expm1(-safe) / safe)


def raman_forward_power_w(launch_power_w: ArrayLike, rho_per_km_nm: ArrayLike, bandwidth_nm: ArrayLike,
                          length_km: ArrayLike, alpha_c_per_km: ArrayLike, alpha_q_per_km: ArrayLike) -> np.ndarray:
    """Co-propagating SpRS power (W) at the fibre output; general alpha_c != alpha_q form (exact at equality)."""
    L = np.asarray(length_km, dtype=float)
    ac = np.asarray(alpha_c_per_km, dtype=float)
    aq = np.asarray(alpha_q_per_km, dtype=float)
    # (e^{-aq L} - e^{-ac L})/(ac - aq) = L e^{-aq L} (1 - e^{-(ac-aq)L})/((ac-aq)L)
    path = L * np.exp(-aq * L) * _one_minus_exp_over((ac - aq) * L)
    return np.asarray(launch_power_w, dtype=float) * np.asarray(rho_per_km_nm) * np.asarray(bandwidth_nm) * path


def raman_backward_power_w(launch_power_w: ArrayLike, rho_per_km_nm: ArrayLike, bandwidth_nm: ArrayLike,
                           length_km: ArrayLike, alpha_c_per_km: ArrayLike, alpha_q_per_km: ArrayLike) -> np.ndarray:
    """Counter-propagating SpRS power (W) returned to the launch end; general alpha_c != alpha_q form."""
    L = np.asarray(length_km, dtype=float)
    a = np.asarray(alpha_c_per_km, dtype=float) + np.asarray(alpha_q_per_km, dtype=float)
    path = L * _one_minus_exp_over(a * L)
    return np.asarray(launch_power_w, dtype=float) * np.asarray(rho_per_km_nm) * np.asarray(bandwidth_nm) * path


def photons_per_gate(power_w: ArrayLike, wavelength_nm: ArrayLike, gate_width_ns: ArrayLike) -> np.ndarray:
    """Mean photon number in one gate: P lambda/(h c) x gate width."""
    energy_j = H_PLANCK * C_LIGHT / (np.asarray(wavelength_nm, dtype=float) * 1e-9)
    return np.asarray(power_w, dtype=float) / energy_j * np.asarray(gate_width_ns, dtype=float) * 1e-9
