"""Finite-key length of decoy-state BB84 -- Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), Eqs. (1)-(5).

Naming: Lim's key basis "X" is this project's key basis Z (chosen with probability ``basis_bias`` by both parties)
and Lim's test basis "Z" is our X basis. Three intensities mu1 > mu2 + mu3, mu2 > mu3 >= 0 (signal, decoy, vacuum),
chosen with probabilities p_k; all intensities contribute to the key (Lim's protocol, unlike the GLLP rate).

    l = floor[ s_X0 + s_X1 - s_X1 h(phi_X) - lambda_EC - 6 log2(21/eps_sec) - log2(2/eps_cor) ]        (1)
    s_X0 >= tau0 (mu2 n^-_{X,mu3} - mu3 n^+_{X,mu2}) / (mu2 - mu3)                                     (2)
    s_X1 >= tau1 mu1 [n^-_{X,mu2} - n^+_{X,mu3} - (mu2^2 - mu3^2)/mu1^2 (n^+_{X,mu1} - s_X0/tau0)]
            / [mu1 (mu2 - mu3) - mu2^2 + mu3^2]                                                          (3)
    v_Z1 <= tau1 (m^+_{Z,mu2} - m^-_{Z,mu3}) / (mu2 - mu3)                                               (4)
    phi_X <= v_Z1/s_Z1 + gamma(eps_sec, v_Z1/s_Z1, s_Z1, s_X1)                                           (5)
    tau_n = sum_k p_k e^{-mu_k} mu_k^n / n!,
    n^±_{X,k} = (e^{mu_k}/p_k) [n_{X,k} ± sqrt(n_X/2 ln(21/eps_sec))]   (Hoeffding, same delta for every k),
    m^±_{Z,k} = (e^{mu_k}/p_k) [m_{Z,k} ± sqrt(m_Z/2 ln(21/eps_sec))],
    gamma(a, b, c, d) = sqrt{ (c+d)(1-b) b / (c d ln 2) log2[ (c+d)/(c d (1-b) b) 21^2/a^2 ] }.
s_Z0, s_Z1 are Eqs. (2)-(3) applied to the Z (test-basis) detection counts. eps_sec = 21 eps (composition, Eq. B4).
lambda_EC = f n_X h(E_X) (Lim Sec. IV). Exactness notes: the lower bounds s_X0, s_Z0 are clipped at 0 (true counts are
non-negative, so this keeps them valid bounds); v_Z1 is clipped at >= 0 likewise; if v_Z1/s_Z1 >= 1/2 or s_Z1 <= 0
or s_X1 <= 0 the phase-error bound is taken as 1/2 (no secrecy from single photons). The value before flooring is
returned too (``length_real``) for optimisation.

Expected statistics from the closed-form link (``expected_counts``): for N pulses,
n_{X,k} = N p_k q^2 Q_k, n_{Z,k} = N p_k (1-q)^2 Q_k, m_{Z,k} = N p_k (1-q)^2 (E Q)_k, q = basis_bias.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from .decoy import binary_entropy

__all__ = ["FiniteKey", "lim2014_key_length", "expected_counts", "optimise_parameters"]


@dataclass(frozen=True)
class FiniteKey:
    """Lim 2014 result (arrays broadcast over the inputs)."""

    length: np.ndarray        # floor of Eq. (1), clipped at 0 (bits)
    length_real: np.ndarray   # Eq. (1) before flooring/clipping
    s_x0: np.ndarray
    s_x1: np.ndarray
    phase_error: np.ndarray   # phi_X upper bound
    lambda_ec: np.ndarray
    n_x: np.ndarray           # total key-basis detections
    score: np.ndarray         # length_real but with s_X1 unclipped in the linear term: a slope for optimisers


def _bounds_s0_s1(counts: np.ndarray, total: np.ndarray, mu: np.ndarray, p: np.ndarray, ln_term: float):
    delta = np.sqrt(total / 2.0 * ln_term)
    ek = np.exp(mu)[:, None] if counts.ndim > 1 else np.exp(mu)
    pk = p[:, None] if counts.ndim > 1 else p
    n_minus = ek / pk * (counts - delta)
    n_plus = ek / pk * (counts + delta)
    mu1, mu2, mu3 = mu
    tau0 = np.sum(p * np.exp(-mu))
    tau1 = np.sum(p * np.exp(-mu) * mu)
    with np.errstate(divide="ignore", invalid="ignore"):
        s0 = np.maximum(tau0 * (mu2 * n_minus[2] - mu3 * n_plus[1]) / (mu2 - mu3), 0.0)
        s1 = tau1 * mu1 * (n_minus[1] - n_plus[2] - (mu2**2 - mu3**2) / mu1**2 * (n_plus[0] - s0 / tau0)) / (
            mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
    return s0, s1, tau1


def lim2014_key_length(n_x: ArrayLike, n_z: ArrayLike, m_z: ArrayLike, intensities: ArrayLike,
                       probabilities: ArrayLike, eps_sec: float, eps_cor: float,
                       lambda_ec: ArrayLike) -> FiniteKey:
    """Key length from observed counts (Lim 2014 Eqs. 1-5).

    n_x, n_z, m_z: shape (3, ...) key-basis detections, test-basis detections and test-basis errors per intensity
    in the order (mu1 = signal, mu2 = decoy, mu3 = vacuum); intensities, probabilities: length-3.
    lambda_ec: bits leaked by error correction (e.g. f n_X h(E_X)).
    """
    mu = np.asarray(intensities, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    if mu.shape != (3,) or p.shape != (3,):
        raise ValueError("preparation.intensities: Lim 2014 needs exactly three intensities (signal, decoy, vacuum)")
    mu1, mu2, mu3 = mu
    if not (mu2 > mu3 >= 0 and mu1 > mu2 + mu3):
        raise ValueError(f"preparation.intensities: Lim 2014 needs signal > decoy + vacuum and decoy > vacuum >= 0, "
                         f"got {mu.tolist()}")
    if not (0 < eps_sec < 1 and 0 < eps_cor < 1):
        raise ValueError(f"postprocessing.eps_sec/eps_cor: must be in (0, 1), got {eps_sec}, {eps_cor}")
    n_x = np.asarray(n_x, dtype=float)
    n_z = np.asarray(n_z, dtype=float)
    m_z = np.asarray(m_z, dtype=float)
    ln_term = math.log(21.0 / eps_sec)
    nx_tot = n_x.sum(axis=0)
    s_x0, s_x1, tau1 = _bounds_s0_s1(n_x, nx_tot, mu, p, ln_term)
    _, s_z1, _ = _bounds_s0_s1(n_z, n_z.sum(axis=0), mu, p, ln_term)
    # Eq. (4): upper bound on single-photon errors in the test basis.
    mz_tot = m_z.sum(axis=0)
    delta_m = np.sqrt(mz_tot / 2.0 * ln_term)
    m_plus_2 = math.exp(mu2) / p[1] * (m_z[1] + delta_m)
    m_minus_3 = math.exp(mu3) / p[2] * (m_z[2] - delta_m)
    v_z1 = np.maximum(tau1 * (m_plus_2 - m_minus_3) / (mu2 - mu3), 0.0)
    ok = (s_z1 > 0) & (s_x1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(ok, v_z1 / np.where(ok, s_z1, 1.0), 0.5)
        ok = ok & (b < 0.5)
        bb = np.clip(b, 1e-300, 0.5)
        c = np.where(ok, s_z1, 1.0)
        d = np.where(ok, s_x1, 1.0)
        arg = (c + d) / (c * d * (1 - bb) * bb) * 21.0**2 / eps_sec**2
        gamma = np.sqrt(np.maximum((c + d) * (1 - bb) * bb / (c * d * math.log(2)) * np.log2(arg), 0.0))
    phi = np.where(ok, np.minimum(bb + gamma, 0.5), 0.5)
    s_x1_pos = np.maximum(s_x1, 0.0)
    lam = np.asarray(lambda_ec, dtype=float)
    real = (s_x0 + s_x1_pos - s_x1_pos * binary_entropy(phi) - lam - 6 * math.log2(21.0 / eps_sec)
            - math.log2(2.0 / eps_cor))
    score = real + np.minimum(s_x1, 0.0)
    length = np.maximum(np.floor(real), 0.0)
    return FiniteKey(length=length, length_real=real, s_x0=s_x0, s_x1=s_x1, phase_error=phi, lambda_ec=lam,
                     n_x=nx_tot, score=score)


def expected_counts(n_pulses: ArrayLike, probabilities: ArrayLike, basis_bias: float, gains: ArrayLike,
                    errors: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expected (n_x, n_z, m_z, m_x) per intensity for N pulses. gains, errors: shape (3, ...) of Q_k and (E Q)_k."""
    n = np.asarray(n_pulses, dtype=float)
    p = np.asarray(probabilities, dtype=float).reshape((3,) + (1,) * (np.ndim(gains) - 1))
    q = float(basis_bias)
    g = np.asarray(gains, dtype=float)
    e = np.asarray(errors, dtype=float)
    return n * p * q * q * g, n * p * (1 - q) ** 2 * g, n * p * (1 - q) ** 2 * e, n * p * q * q * e


def optimise_parameters(objective: Callable[[dict], float], start: dict, vacuum: float,
                        n_starts: int = 4, seed: int = 0) -> tuple[dict, float]:
    """Maximise ``objective(params)`` over {basis_bias, p_signal, p_decoy, mu_signal, mu_decoy} (Lim 2014 Sec. IV).

    Unconstrained Nelder-Mead on a smooth reparametrisation that always satisfies Lim's constraints
    (1/2 < q < 1, p_k > 0 summing to 1, mu2 > mu3, mu1 > mu2 + mu3); multi-start from ``start`` and
    ``n_starts - 1`` seeded random points. Returns (best parameter dict, best objective).
    """
    def unpack(x: np.ndarray) -> dict:
        q = 0.5 + 0.5 / (1 + math.exp(-x[0]))
        w = np.exp(np.clip([x[1], x[2], 0.0], -50, 50))
        p = w / w.sum()
        mu2 = vacuum + math.exp(np.clip(x[3], -30, 5))
        mu1 = mu2 + vacuum + math.exp(np.clip(x[4], -30, 5))
        return {"basis_bias": q, "p_signal": p[0], "p_decoy": p[1], "p_vacuum": p[2], "mu_signal": mu1,
                "mu_decoy": mu2}

    def pack(d: dict) -> np.ndarray:
        q = min(max(d["basis_bias"], 0.5 + 1e-9), 1 - 1e-9)
        return np.array([-math.log(0.5 / (q - 0.5) - 1.0), math.log(d["p_signal"] / d["p_vacuum"]),
                         math.log(d["p_decoy"] / d["p_vacuum"]), math.log(d["mu_decoy"] - vacuum),
                         math.log(d["mu_signal"] - d["mu_decoy"] - vacuum)])

    rng = np.random.default_rng(seed)
    # Given start, a decoy-heavy start (small blocks need statistics on the weak classes), then seeded jitter.
    heavy = dict(start, basis_bias=0.7, p_signal=0.4, p_decoy=0.35, p_vacuum=0.25)
    x0s = [pack(start), pack(heavy)] + [pack(start) + rng.normal(0, 0.7, 5) for _ in range(max(n_starts - 2, 0))]
    best_x, best_f = None, -math.inf
    for x0 in x0s:
        res = minimize(lambda x: -objective(unpack(x)), x0, method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-14, "maxiter": 2000, "maxfev": 4000})
        if -res.fun > best_f:
            best_x, best_f = res.x, -res.fun
    return unpack(best_x), best_f
