"""Design tool: LDPC degree distributions for the BSC by discretised density evolution and linear programming.

Not used at run time: it prints the distributions that ``ldpc_codes.DE_DISTRIBUTIONS`` holds.

Density evolution (DE) for sum-product decoding on the BSC
-----------------------------------------------------------
T. Richardson, A. Shokrollahi, R. Urbanke, "Design of capacity-approaching irregular low-density parity-check
codes", IEEE T-IT 47, 619 (2001); discretised DE as in S.-Y. Chung, G. D. Forney, T. Richardson, R. Urbanke,
"On the design of low-density parity-check codes within 0.0045 dB of the Shannon limit", IEEE Commun. Lett. 5,
58 (2001). All-zero codeword (the channel and sum-product are symmetric). Messages are LLRs quantised to a
uniform grid ``k * step``, |k| <= K (saturated at K): the step is adjusted per channel so that the BSC's LLR
ln((1-p)/p) lies exactly on the grid (otherwise the rounded channel is a different p).

* variable node: x_{l+1} = C (*) sum_i lambda_i Q_l^{(*)(i-1)}, all degrees at once in the Fourier domain
  (one FFT of Q_l, Horner's rule on the spectrum, one inverse FFT), then saturated at +-K;
* check node: Chung's table lookup R(a, b) = round(2 atanh(tanh(a/2) tanh(b/2)) / step) applied pairwise, on
  (|LLR|, sign) pairs: with A = P(+m) + P(-m) and B = P(+m) - P(-m) the sign algebra factorises
  (A_out = A_1 R A_2, B_out = B_1 R B_2), so the degree-(d-1) power needs about 2 log2(d) table lookups
  (binary powering), each one ``np.bincount`` over the (K+1)^2 table.

Threshold p*: the largest crossover probability at which DE drives the message error probability below
``PE_TARGET`` (bisection). f at threshold: (1 - R) / h(p*).

Optimisation (RSU 2001 Sec. IV / Chung's iterative linear programming)
----------------------------------------------------------------------
rho fixed (check-concentrated: degrees d_c, d_c + 1). At a design crossover p, run DE of the current lambda and
record the check-to-variable densities Q_l. The error probability after the next variable update is *linear*
in lambda: P_{l+1} = sum_i lambda_i E_i(l), E_i(l) = Pe(C (*) Q_l^{(*)(i-1)}) (computed for all i from the
spectrum of Q_l by Parseval). The LP maximises sum_i lambda_i / i (the rate, rho fixed) subject to
sum lambda_i = 1, lambda_i >= 0, the stability condition lambda_2 rho'(1) 2 sqrt(p(1-p)) <= 1, progress at every
recorded iteration (sum_i lambda_i E_i(l) <= P_l - eta (P_l - P_{l+1}^old), which the old lambda satisfies),
and a trust region |lambda_i - lambda_i^old| <= tau; the step towards the LP solution is halved (twice at most)
until the new lambda converges under DE, else tau is quartered (grown by 1.5 after a full step).
Iterated until the rate stops increasing. The rate target is then met exactly by the check-degree split, and the
threshold of the rounded (5-decimal) distribution is recomputed by DE.

What makes it reach near capacity (measured with this code; LP rate at p = 0.0121, where capacity is 0.905):
  * the start (``starting_lambda``): Elkouss et al.'s row plus a spike of weight ``tail`` at ``dv_max``. From the
    light-tailed row alone (max degree 21) the LP only trims and stalls at R = 0.893 (dc 44); with the spike it
    finds a bulk at degrees 8-24 and keeps a residual spike at dv_max;
  * a high check degree: R = 0.8987 / 0.8994 / 0.9014 at dc = 60 / 64 / 80 (dv_max 50-60); the final rate-0.9
    row (dc 79/80) has p* = 0.01232, f* = 1.044. High dc also decoded better at n = 1e5 than dc 64/65 (measured,
    see ``ldpc_codes``);
  * degree-2 nodes capped below the number of checks (``DEG2_PER_CHECK``, a linear LP constraint besides the
    stability bound): the code builders place degree-2 nodes on a cycle-free staircase and convert any surplus to
    degree 3, so an uncapped design would not be the ensemble built. Lifting the cap did not raise the LP rate
    (0.9466 vs 0.9479 at R ~ 0.95, p = 0.0053);
  * a start that does not converge at p gets a heavier tail (not a lower p); DE is limited to ``max_iterations``
    (1500) in the LP; requiring convergence within 250 iterations gave a worse code in practice (p* 0.01178 and
    more frame failures at n = 1e5).
Rate 0.95 stays the weakest (f* = 1.10 at dc 124-140): the LP stalls at R ~ 0.948 at p = 0.0053.

Rate-adaptive operating points (``adaptive_efficiency``, ``--adaptive-at``; ``--punctured/--shortened`` design
for one): DE with a fraction of random variable nodes erased or known gives the efficiency the rate-adaptive code
reaches at a QBER for n -> infinity. For the rows the blind plan picks (family de, delta 0.1): 0.95 at 0.5 %:
1.080; 0.915 at 1 %: 1.055; 0.89 at 1.3 %: 1.100; 0.85 at 2 %: 1.062; 0.79 at 3 %: 1.071. The blind protocol
measures 1.128 / 1.091 / 1.084 / 1.084 / 1.081 at n = 1e6 (untainted rather than random puncturing, hence below
DE at 1.3 %), so below 1.3 % the finite length costs 0.04-0.05. Rows designed for the operating point itself
(rate 0.92, 0.5 % punctured and 9.5 % shortened, DE f 1.036 at 1 %; rate 0.954 at 0.5 %, DE f 1.059) measured no
better at n = 1e5 (blind f 1.108 / 1.143, 64 frames), so they were not added.

Usage:  python -m qkdflow.distill.ldpc_design --rate 0.90 --dc 80 --p 0.0121 --dv-max 60 --tail 0.3 --rounds 12
        python -m qkdflow.distill.ldpc_design --threshold-of de 0.90     (verify a stored distribution)
        python -m qkdflow.distill.ldpc_design --threshold-of de 0.915 --adaptive-at 0.01
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy.optimize import linprog

from qkdflow.distill.ldpc import binary_entropy

__all__ = [
    "DensityEvolution",
    "Distribution",
    "design_rate",
    "threshold",
    "optimise_lambda",
    "design",
    "rationalise",
    "rho_for_rate",
    "starting_lambda",
    "lambda2_cap",
    "cap_degree_2",
    "efficiency_at_threshold",
    "adaptive_efficiency",
]

PE_TARGET = 1e-7          # DE "converged" once the variable-to-check error probability is below this
DEFAULT_STEP = 0.1        # LLR quantisation step (adjusted per channel), design runs
DEFAULT_LLR_MAX = 25.0    # saturation |LLR|
# Degree-2 variable nodes per check allowed by the design (< 1: they fit on a cycle-free staircase, as the code
# builders place them; more would be converted to degree 3 by ``ldpc_codes._node_degrees`` -- a different ensemble).
DEG2_PER_CHECK = 0.97

Distribution = dict[int, float]   # node degree -> edge-perspective coefficient


def design_rate(lam: Distribution, rho: Distribution) -> float:
    """R = 1 - (sum_j rho_j / j) / (sum_i lambda_i / i) (edge perspective)."""
    return 1.0 - sum(v / k for k, v in rho.items()) / sum(v / k for k, v in lam.items())


def efficiency_at_threshold(rate: float, p_star: float) -> float:
    """f = (1 - R) / h(p*): the best efficiency the ensemble reaches (infinite length, no puncturing)."""
    return (1.0 - rate) / binary_entropy(p_star)


class DensityEvolution:
    """Discretised sum-product DE on BSC(p) for ensembles with variable degrees <= ``dv_max``.

    ``punctured`` / ``shortened``: fractions of the variable nodes, chosen uniformly at random, whose channel is
    erased (LLR 0) / known (LLR saturated at +llr_max): the rate-adaptive code of Elkouss et al. (QIC 11, 2011)
    at a given (p, s). The channel density is then the mixture (1 - pi - sigma) BSC(p) + pi delta_0 + sigma
    delta_K (Ha, Kim, McLaughlin, IEEE T-IT 50, 2824 (2004) for DE of randomly punctured ensembles)."""

    def __init__(self, p: float, dv_max: int, step: float = DEFAULT_STEP, llr_max: float = DEFAULT_LLR_MAX,
                 punctured: float = 0.0, shortened: float = 0.0):
        if not (0.0 < p < 0.5):
            raise ValueError(f"p: must be in (0, 0.5), got {p!r}")
        if not (0.0 <= punctured and 0.0 <= shortened and punctured + shortened < 1.0):
            raise ValueError(f"punctured/shortened fractions: need >= 0 and sum < 1, got {punctured}, {shortened}")
        self.p = float(p)
        l_ch = math.log((1 - p) / p)
        self.kc = max(1, int(round(l_ch / step)))
        self.step = l_ch / self.kc                      # channel LLR exactly on the grid
        self.K = K = int(math.ceil(llr_max / self.step))
        self.dv_max = int(dv_max)
        # Check-node table on magnitudes 0..K: R(a, b) = 2 atanh(tanh(a/2) tanh(b/2)), rounded to the grid.
        t = np.tanh(np.arange(K + 1) * self.step / 2)
        prod = np.minimum(np.outer(t, t), 1 - 1e-16)
        self._table = np.minimum(np.rint(2 * np.arctanh(prod) / self.step), K).astype(np.intp).ravel()
        # Variable node: cyclic FFT long enough for dv_max - 1 messages plus the channel (no wrap-around).
        span = (self.dv_max - 1) * K + (K if shortened > 0 else self.kc)
        self.L = sfft.next_fast_len(2 * span + 1, real=True)
        self.span = span
        bsc = 1.0 - punctured - shortened
        c = np.zeros(self.L)
        c[self.kc] = bsc * (1 - p)
        c[-self.kc] = bsc * p
        c[0] += punctured
        c[K] += shortened
        self._c_hat = sfft.rfft(c)
        # Parseval weights for Pe = sum_s y_s w_s (w = 1 for s < 0, 1/2 at s = 0) computed on rfft spectra.
        w = np.zeros(self.L)
        w[self.L - span:] = 1.0
        w[0] = 0.5
        mult = np.full(self._c_hat.size, 2.0)
        mult[0] = 1.0
        if self.L % 2 == 0:
            mult[-1] = 1.0
        self._pe_weights = mult * np.conj(sfft.rfft(w)) / self.L
        self.channel = np.zeros(2 * K + 1)
        self.channel[K + self.kc] = bsc * (1 - p)
        self.channel[K - self.kc] = bsc * p
        self.channel[K] += punctured
        self.channel[2 * K] += shortened

    # ---------------------------------------------------------------------------------------------- nodes
    @staticmethod
    def error_probability(x: np.ndarray) -> float:
        """P(LLR < 0) + P(LLR = 0) / 2 (all-zero codeword)."""
        K = (x.size - 1) // 2
        return float(x[:K].sum() + 0.5 * x[K])

    def _box(self, a1, b1, a2, b2):
        """Pairwise check-node combination of (A, B) magnitude densities by table lookup."""
        n = self.K + 1
        a = np.bincount(self._table, weights=np.outer(a1, a2).ravel(), minlength=n)
        b = np.bincount(self._table, weights=np.outer(b1, b2).ravel(), minlength=n)
        return a, b

    def _box_power(self, a, b, e):
        """(A, B) of the check-node combination of e >= 1 independent messages (binary powering)."""
        ra = rb = None
        while True:
            if e & 1:
                ra, rb = (a, b) if ra is None else self._box(ra, rb, a, b)
            e >>= 1
            if not e:
                return ra, rb
            a, b = self._box(a, b, a, b)

    def check(self, x: np.ndarray, rho: Distribution) -> np.ndarray:
        """Check-to-variable density for variable-to-check density ``x`` (full grid -K..K)."""
        K = self.K
        a = x[K:].copy()
        a[1:] += x[K - 1::-1]
        b = x[K:].copy()
        b[1:] -= x[K - 1::-1]
        degs = sorted(rho)
        out_a = np.zeros(K + 1)
        out_b = np.zeros(K + 1)
        prev_e, pa, pb = None, None, None
        for d in degs:                      # successive degrees reuse the previous power (rho is concentrated)
            if prev_e is None or d - 1 - prev_e > 2:
                pa, pb = self._box_power(a, b, d - 1)
            else:
                for _ in range(d - 1 - prev_e):
                    pa, pb = self._box(pa, pb, a, b)
            prev_e = d - 1
            out_a += rho[d] * pa
            out_b += rho[d] * pb
        q = np.zeros(2 * K + 1)
        q[K:] = 0.5 * (out_a + out_b)
        q[K - 1::-1] += 0.5 * (out_a[1:] - out_b[1:])
        q[K] = out_a[0]
        return np.maximum(q, 0.0)

    def _cyclic(self, q: np.ndarray) -> np.ndarray:
        K = self.K
        qc = np.zeros(self.L)
        qc[:K + 1] = q[K:]
        qc[self.L - K:] = q[:K]
        return qc

    def variable(self, q: np.ndarray, lam: Distribution) -> np.ndarray:
        """Variable-to-check density from check-to-variable density ``q`` (sum over lambda, saturated)."""
        K, L = self.K, self.L
        qh = sfft.rfft(self._cyclic(q))
        dmax = max(lam)
        acc = np.full_like(qh, lam[dmax])
        for d in range(dmax - 1, 0, -1):    # Horner: sum_i lambda_i qh^(i-1)
            acc = acc * qh + lam.get(d, 0.0)
        y = sfft.irfft(acc * self._c_hat, n=L)
        y = np.maximum(y, 0.0)
        x = np.empty(2 * K + 1)
        x[K:2 * K] = y[:K]
        x[2 * K] = y[K:self.span + 1].sum()
        x[:K] = y[L - K:]
        x[0] += y[L - self.span:L - K].sum()
        return x / x.sum()

    def error_after_variable(self, q: np.ndarray, degrees: np.ndarray) -> np.ndarray:
        """E_i = Pe(C (*) q^{(*)(i-1)}) for each variable degree i in ``degrees`` (Parseval, no inverse FFT)."""
        qh = sfft.rfft(self._cyclic(q))
        out = np.empty(len(degrees))
        pw = np.ones_like(qh)
        base = self._pe_weights * self._c_hat
        k = 1
        for j, d in enumerate(degrees):     # degrees ascending
            while k < d:
                pw = pw * qh
                k += 1
            out[j] = float(np.real(np.dot(base, pw)))
        return out

    # ------------------------------------------------------------------------------------------------- DE
    def run(self, lam: Distribution, rho: Distribution, max_iterations: int = 3000, record: bool = False,
            pe_target: float = PE_TARGET, stall_window: int = 150, stall_ratio: float = 1e-3):
        """DE from the channel density. Returns (converged, [Pe(x_0), Pe(x_1), ...], [Q_0, Q_1, ...] if record).

        Not converged: Pe did not drop by ``stall_ratio`` (relative) over ``stall_window`` iterations (a fixed
        point), or ``max_iterations`` were reached.
        """
        x = self.channel
        pes = [self.error_probability(x)]
        qs = []
        for it in range(max_iterations):
            q = self.check(x, rho)
            if record:
                qs.append(q)
            x = self.variable(q, lam)
            pe = self.error_probability(x)
            pes.append(pe)
            if pe < pe_target:
                return True, pes, qs
            if it >= stall_window and pe > pes[-1 - stall_window] * (1 - stall_ratio):
                return False, pes, qs
        return False, pes, qs


def adaptive_efficiency(lam: Distribution, rho: Distribution, q: float, delta: float = 0.1,
                        step: float = DEFAULT_STEP, tol: float = 2e-4, max_iterations: int = 3000) -> float:
    """Asymptotic efficiency of the rate-adaptive code at QBER ``q``: the smallest f = (m - p) / ((n - d) h(q))
    at which DE converges, with p punctured and s = d - p shortened symbols (d = ``delta`` n, uniformly random
    positions; bisection on p / n to ``tol``). inf if even p = 0 fails; the value at p = d if that converges."""
    _check_dists(lam, rho)
    one_minus_r = 1.0 - design_rate(lam, rho)
    kh = (1.0 - delta) * binary_entropy(q)
    dv = max(lam)

    def ok(pi: float) -> bool:
        return DensityEvolution(q, dv, step, punctured=pi, shortened=delta - pi).run(lam, rho, max_iterations)[0]

    lo, hi = 0.0, min(delta, one_minus_r)
    if not ok(lo):
        return math.inf
    if ok(hi):
        return (one_minus_r - hi) / kh
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return (one_minus_r - lo) / kh


def _check_dists(lam: Distribution, rho: Distribution) -> None:
    if abs(sum(lam.values()) - 1) > 1e-6 or abs(sum(rho.values()) - 1) > 1e-6:
        raise ValueError("lambda and rho must each sum to 1")
    if min(lam) < 2 or min(rho) < 2:
        raise ValueError("degrees must be >= 2")


def threshold(lam: Distribution, rho: Distribution, lo: float = 1e-3, hi: float = 0.2, tol: float = 2e-3,
              step: float = DEFAULT_STEP, llr_max: float = DEFAULT_LLR_MAX, max_iterations: int = 3000,
              punctured: float = 0.0, shortened: float = 0.0) -> float:
    """BSC sum-product DE threshold p* (largest p with convergence), bisection to relative ``tol``.

    ``lo`` must converge and ``hi`` fail (checked; the bracket is widened if not). ``punctured`` / ``shortened``:
    fractions of random variable nodes erased / known (``DensityEvolution``).
    """
    _check_dists(lam, rho)
    dv = max(lam)

    def ok(p: float) -> bool:
        return DensityEvolution(p, dv, step, llr_max, punctured, shortened).run(lam, rho, max_iterations)[0]

    while not ok(lo):
        hi, lo = lo, lo / 2
        if lo < 1e-5:
            return 0.0
    while ok(hi):
        lo, hi = hi, min(0.5, hi * 1.5)
    while hi - lo > tol * lo:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def optimise_lambda(rho: Distribution, p: float, lam0: Distribution, degrees, step: float = DEFAULT_STEP,
                    tau: float = 0.03, eta: float = 0.2, rounds: int = 40, verbose: bool = False,
                    max_iterations: int = 1500, deg2_per_check: float | None = DEG2_PER_CHECK,
                    punctured: float = 0.0, shortened: float = 0.0) -> Distribution:
    """Iterative LP (see module docstring): maximise the rate at crossover ``p`` with rho fixed.

    ``lam0`` must converge under DE at ``p``. ``degrees``: candidate variable degrees (ascending).
    """
    degrees = np.array(sorted(set(int(d) for d in degrees) | set(lam0)), dtype=int)
    tau_max = tau
    de = DensityEvolution(p, int(degrees[-1]), step, punctured=punctured, shortened=shortened)
    lam = {int(k): float(v) for k, v in lam0.items()}
    conv, pes, qs = de.run(lam, rho, max_iterations, record=True)
    if not conv:
        raise ValueError(f"p: the starting lambda does not converge at p = {p}")
    lam2_max = lambda2_cap(rho, p, deg2_per_check)
    best_rate = design_rate(lam, rho)
    for r in range(rounds):
        old = np.array([lam.get(int(d), 0.0) for d in degrees])
        rows, rhs = [], []
        for ell, q in enumerate(qs):
            if pes[ell] < PE_TARGET * 10:
                break
            e = de.error_after_variable(q, degrees)
            rows.append(e)
            rhs.append(pes[ell] - eta * (pes[ell] - pes[ell + 1]))
        a_ub = np.array(rows)
        b_ub = np.array(rhs)
        bounds = [(max(0.0, o - tau), min(1.0, o + tau)) for o in old]
        if degrees[0] == 2:
            bounds[0] = (bounds[0][0], min(bounds[0][1], lam2_max))
            if bounds[0][0] > bounds[0][1]:
                bounds[0] = (bounds[0][1], bounds[0][1])
        res = linprog(-1.0 / degrees, A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, degrees.size)), b_eq=[1.0],
                      bounds=bounds, method="highs")
        if res.status != 0:
            if verbose:
                print(f"  LP round {r}: {res.message}", flush=True)
            break
        for t in (1.0, 0.5, 0.25):       # line search towards the LP solution (the linearisation is local)
            x = old + t * (np.maximum(res.x, 0.0) - old)
            new = {int(d): float(v) for d, v in zip(degrees, x) if v > 1e-7}
            s = sum(new.values())
            new = {k: v / s for k, v in new.items()}
            conv, pes_n, qs_n = de.run(new, rho, max_iterations, record=True)
            rate = design_rate(new, rho)
            if verbose:
                print(f"  LP round {r}: step {t} rate {rate:.5f} conv {conv} iters {len(pes_n) - 1} tau {tau:.4f}",
                      flush=True)
            if conv:
                break
        if verbose and conv:
            print("    lambda", {k: round(v, 5) for k, v in new.items()}, flush=True)
        if not conv:
            tau /= 4
            if tau < 1e-4:
                break
            continue
        improved = rate - best_rate
        lam, pes, qs, best_rate = new, pes_n, qs_n, rate
        tau = min(tau * (1.5 if t == 1.0 else 1.0), tau_max)
        if improved < 1e-5:
            break
    return lam


def rationalise(lam: Distribution, decimals: int = 5, floor: float = 2e-4) -> Distribution:
    """Round to ``decimals`` decimals, drop coefficients below ``floor``, make the sum exactly 1 (on the largest)."""
    out = {k: round(v, decimals) for k, v in sorted(lam.items()) if v >= floor}
    big = max(out, key=out.get)
    out[big] = round(1.0 - sum(v for k, v in out.items() if k != big), decimals)
    return out


def rho_for_rate(lam: Distribution, rate: float) -> Distribution:
    """Check-concentrated rho (degrees d, d+1) giving design rate ``rate`` exactly with ``lam``."""
    target = (1 - rate) * sum(v / k for k, v in lam.items())       # sum_j rho_j / j
    d = int(math.floor(1 / target))                                 # 1/(d+1) < target <= 1/d
    r = (target - 1 / (d + 1)) / (1 / d - 1 / (d + 1))
    return {d: round(r, 6), d + 1: round(1 - round(r, 6), 6)} if r < 1 - 1e-9 else {d: 1.0}


def lambda2_cap(rho: Distribution, p: float, deg2_per_check: float | None = DEG2_PER_CHECK) -> float:
    """Largest lambda_2: the stability condition lambda_2 rho'(1) 2 sqrt(p(1-p)) <= 1 (RSU 2001, Thm. 5) and,
    if ``deg2_per_check`` is given, degree-2 nodes <= deg2_per_check * m (lambda_2 / 2 <= c sum_j rho_j / j)."""
    rho_p1 = sum(v * (k - 1) for k, v in rho.items())
    cap = 1.0 / (rho_p1 * 2 * math.sqrt(p * (1 - p)))
    if deg2_per_check is not None:
        cap = min(cap, 2.0 * deg2_per_check * sum(v / k for k, v in rho.items()))
    return cap


def starting_lambda(lam0: Distribution, rho: Distribution, dv_max: int, p: float, tail: float = 0.3,
                    deg2_per_check: float | None = DEG2_PER_CHECK) -> Distribution:
    """LP start: ``lam0`` (degrees > dv_max dropped, lambda_2 capped as in the LP, surplus moved to degree 3)
    blended with a spike of weight ``tail`` at degree ``dv_max``.

    Why the spike: the LP is local; started from a light-tailed row (Elkouss et al.'s rate-0.9 row, max degree
    21) it only trims the tail and stalls at R ~ 0.893 at p = 0.0121 (f = 1.12). A heavy tail to start with lets
    it find the near-capacity shape (degrees 2-3, a bulk around 8-20, a residual spike at dv_max)."""
    lam = {k: v for k, v in lam0.items() if k <= dv_max}
    s = sum(lam.values())
    lam = {k: v / s for k, v in lam.items()}
    if 2 in lam:
        # start within the node cap even when the LP may exceed it (at the stability bound DE starts too slowly)
        cap = 0.98 * lambda2_cap(rho, p, DEG2_PER_CHECK if deg2_per_check is None else deg2_per_check)
        if lam[2] > cap:
            lam[3] = lam.get(3, 0.0) + lam[2] - cap
            lam[2] = cap
    lam = {k: (1.0 - tail) * v for k, v in lam.items()}
    lam[dv_max] = lam.get(dv_max, 0.0) + tail
    return lam


def cap_degree_2(lam: Distribution, rho: Distribution, rate: float,
                 deg2_per_check: float | None = DEG2_PER_CHECK) -> tuple[Distribution, Distribution]:
    """After ``rho_for_rate`` raised the check degree, degree-2 nodes may exceed deg2_per_check * m: move the
    excess of lambda_2 to degree 3 and refit rho (a small rate-preserving change; the threshold is recomputed)."""
    if deg2_per_check is None or 2 not in lam:
        return lam, rho
    for _ in range(5):
        cap = 2.0 * deg2_per_check * sum(v / k for k, v in rho.items())
        if lam[2] <= cap:
            break
        excess = round(lam[2] - 0.999 * cap + 5e-6, 5)
        lam = dict(lam)
        lam[2] = round(lam[2] - excess, 5)
        lam[3] = round(lam.get(3, 0.0) + excess, 5)
        rho = rho_for_rate(lam, rate)
    return lam, rho


@dataclass
class DesignResult:
    rate: float
    lam: Distribution
    rho: Distribution
    p_star: float
    f_star: float


def design(rate: float, dc: int, p: float, lam0: Distribution, dv_max: int = 50, passes: int = 1,
           step: float = DEFAULT_STEP, verbose: bool = False, tau: float = 0.03, eta: float = 0.2,
           tail: float = 0.3, rounds: int = 40, deg2_per_check: float | None = DEG2_PER_CHECK,
           max_iterations: int = 1500, punctured: float = 0.0, shortened: float = 0.0) -> DesignResult:
    """Optimise lambda at crossover ``p`` with rho = check degrees (dc, dc+1) from ``starting_lambda(lam0)``,
    then fix the rate via the check-degree split (``rho_for_rate``), rationalise and compute the DE threshold.
    ``passes`` > 1 re-optimises at 0.995 p* with the new rho. ``p`` should be at or below the target threshold
    and ``dc`` such that the LP's rate at ``p`` slightly exceeds ``rate`` (then the split lowers the check degree
    and the threshold ends above ``p``). ``punctured`` / ``shortened``: design for the rate-adaptive code's
    operating point (``DensityEvolution``); f* is then (1 - R - punctured) / ((1 - punctured - shortened) h(p*)),
    the efficiency of that operating point."""
    mix = dict(punctured=punctured, shortened=shortened)
    rho = {dc: 0.5, dc + 1: 0.5}
    degrees = range(2, dv_max + 1)
    # A start that does not converge at p: first a heavier tail (lower rate, same p), then a lower p.
    while True:
        lam = starting_lambda(lam0, rho, dv_max, p, tail, deg2_per_check)
        if DensityEvolution(p, dv_max, step, **mix).run(lam, rho)[0]:
            break
        if tail < 0.75:
            tail += 0.1
        else:
            p *= 0.95
            if p < 1e-4:
                raise ValueError("p: starting lambda does not converge at any p >= 1e-4")
    p_star = p
    for k in range(passes):
        while not DensityEvolution(p, dv_max, step, **mix).run(lam, rho)[0]:
            p *= 0.95                       # pass > 0: start below the previous pass's threshold
            if p < 1e-4:
                raise ValueError("p: starting lambda does not converge at any p >= 1e-4")
        if verbose:
            print(f"pass {k}: LP at p = {p:.5f}, rho {rho}, start rate {design_rate(lam, rho):.5f} (tail {tail:.2f})",
                  flush=True)
        lam = optimise_lambda(rho, p, lam, degrees, step=step, verbose=verbose, tau=tau, eta=eta, rounds=rounds,
                              deg2_per_check=deg2_per_check, max_iterations=max_iterations, **mix)
        if verbose:
            print(f"pass {k}: LP rate {design_rate(lam, rho):.5f} at p {p:.5f}", flush=True)
        lam = rationalise(lam)
        rho = rho_for_rate(lam, rate)
        lam, rho = cap_degree_2(lam, rho, rate, deg2_per_check)
        p_star = threshold(lam, rho, lo=p * 0.9, hi=p * 1.2, step=step, **mix)
        if verbose:
            print(f"pass {k}: lambda {lam} rho {rho} rate {design_rate(lam, rho):.5f} p* {p_star:.5f} "
                  f"f* {_operating_f(rate, p_star, punctured, shortened):.4f}", flush=True)
        p = p_star * 0.995
    return DesignResult(rate, lam, rho, p_star, _operating_f(design_rate(lam, rho), p_star, punctured, shortened))


def _operating_f(rate: float, p_star: float, punctured: float, shortened: float) -> float:
    """Efficiency at threshold of the code with those fractions punctured / shortened (key bits: the rest)."""
    return (1.0 - rate - punctured) / ((1.0 - punctured - shortened) * binary_entropy(p_star))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, help="design rate")
    ap.add_argument("--dc", type=int, help="lower check degree (rho on dc, dc+1); the rate fixes the split")
    ap.add_argument("--p", type=float, help="design crossover probability (start: must converge)")
    ap.add_argument("--dv-max", type=int, default=50)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--tail", type=float, default=0.3, help="weight of the starting spike at dv_max")
    ap.add_argument("--eta", type=float, default=0.2, help="LP: fraction of the old per-iteration progress kept")
    ap.add_argument("--rounds", type=int, default=40, help="LP rounds per pass")
    ap.add_argument("--deg2-per-check", type=float, default=DEG2_PER_CHECK,
                    help="cap on degree-2 variable nodes per check (<= 0: only the stability condition)")
    ap.add_argument("--max-iterations", type=int, default=1500, help="LP: DE iterations allowed to converge")
    ap.add_argument("--tau", type=float, default=0.03, help="LP trust region (max change of a coefficient)")
    ap.add_argument("--step", type=float, default=DEFAULT_STEP, help="LLR grid step")
    ap.add_argument("--start", default="elkouss2009", help="starting lambda: family whose nearest-rate lambda starts the LP")
    ap.add_argument("--start-lambda", help='starting lambda as JSON, e.g. \'{"2": 0.07, "3": 0.3, "12": 0.63}\'')
    ap.add_argument("--punctured", type=float, default=0.0, help="design for this fraction of n punctured")
    ap.add_argument("--shortened", type=float, default=0.0, help="... and this fraction shortened")
    ap.add_argument("--threshold-of", nargs=2, metavar=("FAMILY", "RATE"), help="DE threshold of a stored code")
    ap.add_argument("--adaptive-at", type=float, metavar="QBER",
                    help="with --threshold-of: also the rate-adaptive efficiency at this QBER (adaptive_efficiency)")
    ap.add_argument("--delta", type=float, default=0.1, help="--adaptive-at: punctured + shortened fraction d / n")
    args = ap.parse_args(argv)
    from qkdflow.distill import ldpc_codes  # noqa: PLC0415 - only for the starting points / verification

    if args.threshold_of:
        fam, r = args.threshold_of[0], float(args.threshold_of[1])
        lam, rho = ldpc_codes.FAMILIES[fam][r]  # type: ignore[attr-defined]
        s_l, s_r = sum(lam.values()), sum(rho.values())
        lam = {k: v / s_l for k, v in lam.items()}
        rho = {k: v / s_r for k, v in rho.items()}
        p = threshold(lam, rho, lo=1e-3, hi=0.2, step=args.step)
        print(f"{fam} rate {r}: design rate {design_rate(lam, rho):.5f} p* {p:.5f} "
              f"f* {efficiency_at_threshold(design_rate(lam, rho), p):.4f} (step {args.step})")
        if args.adaptive_at is not None:
            f = adaptive_efficiency(lam, rho, args.adaptive_at, args.delta, step=args.step, tol=5e-4)
            print(f"  rate-adaptive at QBER {args.adaptive_at}: f {f:.4f} (delta {args.delta}, random positions)")
        return 0
    if args.rate is None or args.dc is None or args.p is None:
        ap.error("--rate, --dc and --p are required (or --threshold-of)")
    if args.start_lambda:
        import json  # noqa: PLC0415

        lam0 = {int(k): float(v) for k, v in json.loads(args.start_lambda).items()}
    else:
        table = ldpc_codes.FAMILIES[args.start]
        near = min(table, key=lambda r: abs(r - args.rate))
        lam0 = dict(table[near][0])
    res = design(args.rate, args.dc, args.p, lam0, dv_max=args.dv_max, passes=args.passes, step=args.step,
                 verbose=True, tau=args.tau, eta=args.eta, tail=args.tail, rounds=args.rounds,
                 deg2_per_check=args.deg2_per_check if args.deg2_per_check > 0 else None,
                 max_iterations=args.max_iterations, punctured=args.punctured, shortened=args.shortened)
    print(f"RESULT rate {res.rate}: lambda {res.lam} rho {res.rho} p* {res.p_star:.5f} f* {res.f_star:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
