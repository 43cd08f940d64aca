"""Irregular LDPC mother codes for one-way syndrome reconciliation on the BSC.

Degree distributions
--------------------
Table I of D. Elkouss, A. Leverrier, R. Alleaume, J. J. Boutros, "Efficient reconciliation protocol for
discrete-variable quantum key distribution", Proc. IEEE ISIT 2009, pp. 1879-1883 (arXiv:0901.2140):
BSC-optimised edge-perspective distributions lambda(x) = sum_i lambda_i x^(i-1), rho(x) = sum_j rho_j x^(j-1)
for rates 0.50 ... 0.90 (step 0.05), thresholds from discretised density evolution. The table entries are
transcribed exactly, except one: in the rate-0.85 row the printed lambda(x) sums to 1.0515; the x^4
coefficient (degree 5) is printed as 0.094274, and 1 - (sum of the other coefficients) = 0.042754, which
restores normalisation and the design rate 0.85 (the printed value is evidently a transposition typo). All
other rows sum to 1 within the printed precision (<= 3e-5) and are renormalised. This is family "elkouss2009".

Family "de" (``DE_DISTRIBUTIONS``, ``family="de"``): the Elkouss rows for rates 0.50-0.80 and, for the high
rates (QBER 0.5-3 %), rows 0.79, 0.84, 0.85, 0.875, 0.90, 0.915, 0.93, 0.95 designed here by discretised density
evolution and iterative linear programming (``qkdflow/distill/ldpc_design.py``), check-concentrated,
f* = (1-R)/h(p*) = 1.03-1.06 at the DE threshold (Elkouss rate 0.9: 1.156), built by PEG. Thresholds in
``FAMILY_THRESHOLDS``; measured results in the comment above ``_DE_HIGH``.

Graph construction
------------------
``construction="peg"`` (``build_code_peg``): progressive edge growth (Hu, Eleftheriou, Arnold, IEEE Trans. IT
51(1) 2005) by a C helper (``_ldpc.peg``, bounded breadth-first search: ~3-5 s per code at n = 1e5, 41 s for the
9-code pool including the puncturing search; cached beside the random codes with a ``_peg`` tag). No 4-cycles
at n >= 2e4; check degrees concentrated. Measured at n = 1e5 (32 frames, one-shot f = 1.10, sum-product) it is
not better than the random construction below (2 %: 16 vs 24/32 failures; 3 %: 8 vs 5; 5 %: 2 vs 0), so the
default stays "random" and PEG is an option. Default (``construction="random"``): a vectorised random
("configuration model") socket matching with the structural properties that matter most at these lengths:
  * exact node-degree profile from lambda/rho (largest-remainder rounding of the node-perspective fractions);
  * degree-2 variable nodes are placed on a staircase (node j joins checks pi(j), pi(j+1)) so they form no
    cycle among themselves (cycles of degree-2 nodes are low-weight codewords -> error floor; cf. the
    dual-diagonal part of IRA / PEG codes). Where the distribution has more degree-2 nodes than checks
    (rates 0.75, 0.80, 0.90) the surplus is matched randomly;
  * no parallel edges; length-4 cycles are removed by random edge swaps while the count of length-2 paths
    through checks stays below a memory budget (all our n <= 2e5 codes; larger codes keep the few that the
    random matching leaves, which is O(1) in n for fixed distributions).

Rate adaptation helpers
-----------------------
``puncture_order``: an untainted puncturing pattern (Elkouss, Martinez-Mateo, Martin, "Untainted puncturing
for irregular LDPC codes", IEEE WCL 1(6) 2012): greedily, lowest degree first, a symbol is punctured only if
none of its checks already has a punctured neighbour. Every punctured column therefore owns a row that no
other punctured column touches, so the punctured columns of H are linearly independent over GF(2) — the
property that makes the reconciliation leak exactly ``m - p`` (see ``ldpc.py``).
``shorten_order``: the remaining symbols in a seeded random order (Elkouss et al. ITW 2010 use random
shortening).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEGREE_DISTRIBUTIONS",
    "DE_DISTRIBUTIONS",
    "FAMILIES",
    "FAMILY_RATES",
    "DEFAULT_FAMILY",
    "default_construction",
    "TABLE_RATES",
    "LdpcCode",
    "build_code",
    "load_or_build_code",
    "load_or_build_codes",
    "buildable",
    "count_four_cycles",
    "EXTENSION_FRACTION",
    "extension_rows",
    "extended_code",
    "extension_syndrome",
]

_FORMAT_VERSION = 4

# Elkouss et al. ISIT 2009, Table I. Keys: node degree i (lambda_i is the coefficient of x^(i-1)).
DEGREE_DISTRIBUTIONS: dict[float, tuple[dict[int, float], dict[int, float]]] = {
    0.90: ({2: 0.07689, 3: 0.28096, 5: 0.08933, 9: 0.19620, 12: 0.30631, 21: 0.05031},
           {50: 0.95025, 51: 0.04975}),
    0.85: ({2: 0.04528, 3: 0.20537, 4: 0.05878, 5: 0.042754, 6: 0.08454, 7: 0.01176, 9: 0.05137, 21: 0.50015},
           {41: 0.54204, 42: 0.45795}),
    0.80: ({2: 0.09420, 3: 0.18088, 6: 0.11972, 7: 0.08550, 8: 0.09816, 17: 0.07194, 26: 0.34960},
           {29: 0.58807, 30: 0.41193}),
    0.75: ({2: 0.10805, 3: 0.09511, 4: 0.01449, 5: 0.13764, 6: 0.10667, 7: 0.05288, 28: 0.01107, 31: 0.47408},
           {25: 0.74161, 26: 0.25839}),
    0.70: ({2: 0.05343, 3: 0.29406, 6: 0.00896, 9: 0.15571, 12: 0.12189, 25: 0.19872, 46: 0.09572,
            62: 0.02741, 65: 0.04056, 73: 0.00354},
           {20: 0.76922, 21: 0.23077}),
    0.65: ({2: 0.10451, 3: 0.15652, 4: 0.08057, 5: 0.00056, 9: 0.12151, 13: 0.10485, 15: 0.10719,
            21: 0.00771, 51: 0.31656},
           {2: 0.000578, 15: 0.06089, 16: 0.47001, 21: 0.46852}),
    0.60: ({2: 0.11040, 3: 0.20804, 8: 0.14163, 9: 0.14858, 26: 0.14438, 27: 0.08909, 46: 0.00748,
            71: 0.15038},
           {2: 0.00036, 10: 0.13063, 13: 0.31068, 18: 0.49341, 19: 0.064915}),
    0.55: ({2: 0.16880, 3: 0.20994, 6: 0.18095, 15: 0.03846, 16: 0.02635, 18: 0.23454, 19: 0.05815,
            31: 0.08280},
           {10: 0.27631, 11: 0.72369}),
    0.50: ({2: 0.14438, 3: 0.19026, 4: 0.01836, 5: 0.00233, 6: 0.04697, 8: 0.053943, 9: 0.05590,
            10: 0.01290, 11: 0.00162, 14: 0.06159, 15: 0.13115, 17: 0.01481, 47: 0.00879, 49: 0.00650,
            55: 0.00210, 56: 0.00099, 57: 0.11178, 58: 0.06238, 59: 0.05094, 66: 0.02230},
           {10: 0.47575, 12: 0.46847, 13: 0.02952, 14: 0.02626}),
}
# DE thresholds (crossover probability) printed in the same table, for reference/tests.
DE_THRESHOLDS: dict[float, float] = {0.90: 0.0109, 0.85: 0.0199, 0.80: 0.0298, 0.75: 0.0392, 0.70: 0.0504,
                                     0.65: 0.0633, 0.60: 0.0766, 0.55: 0.0904, 0.50: 0.1071}
TABLE_RATES: tuple[float, ...] = tuple(sorted(DEGREE_DISTRIBUTIONS))

# Family "de": rows designed here for the high rates (QBER 0.5-3 %) by discretised density evolution + iterative
# linear programming (qkdflow/distill/ldpc_design.py; Richardson, Shokrollahi, Urbanke, IEEE T-IT 47, 619 (2001);
# Chung et al., IEEE Commun. Lett. 5, 58 (2001)): check-concentrated rho (two adjacent degrees, the split sets the
# design rate exactly), lambda (degrees <= 60, degree-2 nodes < m) maximising the rate at a design crossover,
# coefficients rounded to 5 decimals. Rates 0.50-0.75 and 0.80 are the Elkouss et al. rows (0.80: f* = 1.038).
# Rates: 0.95 / 0.93 / 0.915 / 0.90 / 0.85 / 0.79 are the mother codes that the rate-adaptive protocol picks at
# QBER 0.5 / 0.7 / 1 / 1.3 / 2 / 3 % with little puncturing (puncturing is what costs most: DE of the rate-0.9 row
# with 2 % of n punctured gives f* = 1.10 instead of 1.07 shortened-only). Command, e.g.:
#   python -m qkdflow.distill.ldpc_design --rate 0.90 --dc 80 --p 0.0121 --dv-max 60 --tail 0.3 --rounds 12
# (0.79: --dc 34 --p 0.0312 --start-lambda <Elkouss 0.80 row>; 0.85: --dc 48 --p 0.0205 --tail 0.1 from an
# earlier dc-42 design; 0.915: --dc 94 --p 0.0102; 0.93: --dc 120 --p 0.0080; 0.95: --dc 160 --p 0.0052 --tail 0.4).
# Thresholds p* and f* = (1-R)/h(p*): 0.79: 0.03167 / 1.036; 0.85: 0.02071 / 1.032 (Elkouss: 0.0199 / 1.069);
# 0.90: 0.01232 / 1.044 (Elkouss: 0.0109 / 1.156); 0.915: 0.01013 / 1.041; 0.93: 0.00802 / 1.039;
# 0.95: 0.00521 / 1.064. Designed rows are built by PEG (``default_construction``).
# Measured (tools/bench_ldpc.py --family de --mode both --frames 64 --n 100000, seed 1; elkouss2009 in brackets):
# one-shot f = 1.10 frames lost 47/64 (64/64) at QBER 0.5 %, 15/64 (64/64) at 1 %, 7/64 (35/64) at 2 %,
# 0/64 (8/64) at 3 %; blind f = 1.145 (1.298) at 0.5 %, 1.105 (1.212) at 1 %, 1.093 (1.117) at 2 %,
# 1.082 (1.136) at 3 %, with 2/64 and 1/64 frames lost at 0.5 / 1 % (0/64 in brackets) under the blind plan's former
# fixed 1.15 ceiling (it picked the 0.95 / 0.915 codes, fully shortened f 1.22 / 1.17); the 3-sigma ceiling of
# ldpc.plan_blind now loses none (README's LDPC rows for the current figures). QBER >= 5 %:
# identical (same graphs). A check degree this high costs throughput (more edges): 0.2-1 Mbit/s below 3 %.
# Rows 0.84 and 0.875 fill the gaps of the blind plan (ldpc.plan_blind: highest rate whose fully shortened
# efficiency reaches 1.15 h(q + 3 sigma)/h(q); at n = 1e5 that is R <= 0.848 at QBER 2 %, R <= 0.889 / 0.876 at
# 1.3 / 1.5 %, so without them it fell back to the 0.80 / 0.85 rows and punctured heavily). Commands:
#   python -m qkdflow.distill.ldpc_design --rate 0.84 --dc 45 --p 0.0222 --dv-max 60 --tail 0.1 --rounds 12 \
#       --start-lambda <0.85 row>      (p* 0.02247, f* 1.032; 8.5 min)
#   python -m qkdflow.distill.ldpc_design --rate 0.875 --dc 60 --p 0.0163 --dv-max 60 --tail 0.1 --rounds 12 \
#       --start-lambda <0.85 row>      (p* 0.01643, f* 1.034; 4 min)
# Measured (tools/bench_ldpc.py --mode blind --frames 64 --n 100000, seed 1; without the two rows in brackets):
# blind f = 1.126 (1.140) at QBER 1.3 %, 1.102 (1.125) at 1.5 %, 1.099 (1.147) at 2 %, 1.116 (1.116) at 2.5 %,
# 0/64 frames lost everywhere; n = 1e4 unchanged (the 3-sigma margin picks the 0.80 / 0.75 rows at 2 / 3 %).
# Rows 0.815 and 0.89 fill the gaps at QBER 2.5 % and 1.3 % (the 0.84 / 0.90 rows' thresholds, 2.25 / 1.23 %, are
# below those QBERs, so the plan fell back to 0.80 / 0.875 and punctured heavily). Commands:
#   python -m qkdflow.distill.ldpc_design --rate 0.815 --dc 39 --p 0.0262 --dv-max 60 --tail 0.1 --rounds 12 \
#       --start-lambda <0.84 row>      (p* 0.02701, f* 1.032; 15 min)
#   python -m qkdflow.distill.ldpc_design --rate 0.89 --dc 74 --p 0.0139 --dv-max 60 --tail 0.1 --rounds 12 \
#       --start-lambda <an earlier dc-68 design from the 0.875 row>      (p* 0.01370, f* 1.053)
# Measured (tools/bench_ldpc.py --mode blind, margin 0 from n = 1e5 on): 2.5 %: f 1.116 -> 1.094 (n = 1e5, 64
# frames), 1.086 (n = 1e6); 1.3 %: f 1.118 -> 1.086 (n = 1e6, 16 frames).
# Row 0.962 (p* 0.00377, f* 1.062) gives reliability reveals (ldpc.plan_blind, no puncturing) a first attempt just
# below capacity at QBER 0.5 % (fully shortened f 0.93; the 0.95 row is at 1.22 there). Command:
#   python -m qkdflow.distill.ldpc_design --rate 0.962 --dc 210 --p 0.0040 --dv-max 60 --tail 0.1 --rounds 12 \
#       --start-lambda <a rate-0.954 design from the 0.95 row>      (3 min)
# Row 0.94 (p* 0.00656, f* 1.052) fills the gap at QBER 0.8 %, where the plan otherwise started the 0.95 row at a
# fully shortened f of 0.83 and ended at 1.139 (n = 1e5, 32 frames). Command:
#   python -m qkdflow.distill.ldpc_design --rate 0.94 --dc 137 --p 0.0064 --dv-max 60 --tail 0.1 --rounds 12 \
#       --start-lambda <0.93 row>      (5 min)
_DE_HIGH: dict[float, tuple[dict[int, float], dict[int, float]]] = {
    0.79: ({2: 0.05624, 3: 0.20327, 6: 0.02398, 8: 0.07655, 9: 0.05982, 10: 0.05982, 11: 0.05982, 12: 0.00967,
            26: 0.18454, 35: 0.00086, 60: 0.26543},
           {34: 0.951229, 35: 0.048771}),
    0.815: ({2: 0.04912, 3: 0.21867, 9: 0.14491, 10: 0.16589, 26: 0.00231, 27: 0.045, 28: 0.045, 29: 0.05983,
             30: 0.04103, 31: 0.00173, 58: 0.001, 59: 0.00516, 60: 0.22035},
            {38: 0.593963, 39: 0.406037}),
    0.84: ({2: 0.04264, 3: 0.22092, 9: 0.13605, 10: 0.18262, 29: 0.11325, 30: 0.09559, 56: 0.00655, 57: 0.01825,
            58: 0.0225, 59: 0.02134, 60: 0.14029},
           {44: 0.020977, 45: 0.979023}),
    0.85: ({2: 0.04, 3: 0.22238, 9: 0.15584, 10: 0.1628, 11: 0.0009, 22: 0.0016, 26: 0.01017, 27: 0.00903,
            28: 0.02855, 29: 0.0675, 30: 0.0675, 31: 0.03101, 32: 0.00117, 51: 0.00486, 52: 0.01125, 53: 0.00944,
            54: 0.0075, 60: 0.1685},
           {48: 0.923995, 49: 0.076005}),
    0.875: ({2: 0.03207, 3: 0.21729, 9: 0.1539, 10: 0.16643, 28: 0.02693, 29: 0.12824, 30: 0.06257, 57: 0.04515,
             58: 0.02757, 59: 0.0007, 60: 0.13915},
            {60: 0.973771, 61: 0.026229}),
    0.89: ({2: 0.0257, 3: 0.19536, 4: 0.00064, 5: 0.00064, 6: 0.00064, 7: 0.00064, 8: 0.00064, 9: 0.1053,
            10: 0.16446, 11: 0.02936, 12: 0.00619, 29: 0.07323, 30: 0.02848, 31: 0.02936, 32: 0.02936, 33: 0.01118,
            57: 0.00593, 59: 0.00035, 60: 0.29254},
           {75: 0.572651, 76: 0.427349}),
    0.90: ({2: 0.0241, 3: 0.20562, 5: 0.00593, 7: 0.02409, 8: 0.06003, 9: 0.10534, 12: 0.12382, 17: 0.00346,
            18: 0.00747, 19: 0.02253, 20: 0.02728, 21: 0.03016, 22: 0.01803, 23: 0.00207, 60: 0.34007},
           {79: 0.585134, 80: 0.414866}),
    0.915: ({2: 0.0204, 3: 0.20413, 8: 0.0216, 9: 0.2589, 17: 0.0225, 18: 0.00731, 19: 0.01399, 20: 0.03708,
             21: 0.03213, 22: 0.0375, 23: 0.02197, 24: 0.0075, 25: 0.0025, 60: 0.31249},
            {94: 0.001045, 95: 0.998955}),
    0.93: ({2: 0.0161, 3: 0.19394, 8: 0.04995, 9: 0.22936, 12: 0.00089, 16: 0.00031, 17: 0.003, 18: 0.01335,
            19: 0.0246, 20: 0.0164, 21: 0.04454, 22: 0.03, 23: 0.03, 24: 0.02013, 25: 0.00744, 60: 0.31999},
           {120: 0.75821, 121: 0.24179}),
    0.962: ({2: 0.0088, 3: 0.19115, 8: 0.09848, 9: 0.23043, 22: 0.00441, 23: 0.045, 24: 0.08274, 25: 0.07651,
             26: 0.01534, 27: 0.0026, 50: 0.00391, 51: 0.015, 52: 0.00168, 56: 0.00362, 57: 0.015, 58: 0.015,
             59: 0.00202, 60: 0.18831},
            {220: 0.86648, 221: 0.13352}),
    0.94: ({2: 0.01411, 3: 0.20213, 8: 0.07556, 9: 0.22839, 10: 0.00422, 19: 0.00285, 20: 0.05747, 21: 0.02462,
            22: 0.02939, 23: 0.045, 24: 0.03401, 25: 0.02163, 26: 0.00758, 60: 0.25304},
           {134: 0.54054, 135: 0.45946}),
    0.95: ({2: 0.01209, 3: 0.20328, 8: 0.15533, 9: 0.14207, 16: 0.01687, 17: 0.03385, 18: 0.045, 19: 0.04031,
            20: 0.045, 21: 0.015, 22: 0.015, 23: 0.0012, 60: 0.275},
           {160: 0.942745, 161: 0.057255}),
}
# BSC sum-product DE thresholds of the rows above (ldpc_design.threshold, LLR step 0.1, bisection to 0.2 %) and
# the efficiency f* = (1 - R)/h(p*) there; the Elkouss rows as recomputed by the same code.
_DE_HIGH_THRESHOLDS: dict[float, float] = {0.79: 0.03167, 0.815: 0.02701, 0.84: 0.02247, 0.85: 0.02071,
                                            0.875: 0.01643, 0.89: 0.01370, 0.90: 0.01232, 0.915: 0.01013,
                                            0.93: 0.00802, 0.94: 0.00656, 0.95: 0.00521, 0.962: 0.00377}
DE_DISTRIBUTIONS: dict[float, tuple[dict[int, float], dict[int, float]]] = {
    **{r: v for r, v in DEGREE_DISTRIBUTIONS.items() if r not in _DE_HIGH}, **_DE_HIGH}
FAMILIES: dict[str, dict[float, tuple[dict[int, float], dict[int, float]]]] = {
    "elkouss2009": DEGREE_DISTRIBUTIONS, "de": DE_DISTRIBUTIONS}
FAMILY_THRESHOLDS: dict[str, dict[float, float]] = {
    "elkouss2009": DE_THRESHOLDS,
    "de": {**{r: v for r, v in DE_THRESHOLDS.items() if r not in _DE_HIGH}, **_DE_HIGH_THRESHOLDS}}
FAMILY_RATES: dict[str, tuple[float, ...]] = {k: tuple(sorted(v)) for k, v in FAMILIES.items()}
# Graph construction used when none is given (``default_construction``): the designed rows of family "de" by PEG
# (at n = 1e5 the random matching leaves 2e5-1e6 4-cycles in their dense high-rate graphs, PEG 61 at rate 0.90);
# every Elkouss row by the random matching, in both families (the same graphs: results at QBER >= 5 % unchanged).
DEFAULT_FAMILY = "elkouss2009"   # of a single code (build_code); the protocol's pool: ldpc.DEFAULT_CODE_FAMILY

# Upper bound on the number of (variable, variable) pairs sharing a check that the 4-cycle search may hold.
_MAX_PAIRS_FOR_GIRTH = 40_000_000
_MIN_N = 256
_MAX_N = 4_000_000


@dataclass(frozen=True)
class LdpcCode:
    """A sparse parity-check matrix H (m x n) stored as edges sorted by check.

    ``edge_var[check_ptr[c]:check_ptr[c+1]]`` are the variable nodes of check ``c``.
    ``rate`` is the table (design) rate; ``1 - m/n`` is the actual rate assuming full row rank.
    """

    n: int
    m: int
    rate: float
    seed: int
    check_ptr: np.ndarray      # int64 (m+1,)
    edge_var: np.ndarray       # int32 (E,)
    var_degree: np.ndarray     # int32 (n,)
    puncture_order: np.ndarray  # int32: untainted candidates, in the order they are punctured
    shorten_order: np.ndarray   # int32: remaining symbols, in the order they are shortened
    four_cycles: int           # length-4 cycles left after construction (-1: not counted, too large)
    construction: str = "random"   # "random" (socket matching + 4-cycle removal) or "peg"
    family: str = "elkouss2009"    # degree-distribution table (FAMILIES)

    @property
    def n_edges(self) -> int:
        return int(self.edge_var.size)

    @functools.cached_property
    def fingerprint(self) -> bytes:
        """8-byte digest of the graph and the puncture/shorten orders (identifies the code on the wire)."""
        h = hashlib.sha256()
        h.update(np.array([self.n, self.m], dtype="<i8").tobytes())
        for a in (self.check_ptr, self.edge_var, self.puncture_order, self.shorten_order):
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.digest()[:8]

    def syndrome(self, word: np.ndarray) -> np.ndarray:
        """H @ word over GF(2) for a 0/1 uint8 vector of length n."""
        bits = word[self.edge_var].astype(np.uint8)
        return _segment_xor(bits, self.check_ptr)


def _segment_xor(bits: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Parity of each segment bits[ptr[i]:ptr[i+1]] (segments are non-empty)."""
    return (np.add.reduceat(bits, ptr[:-1], dtype=np.int64) & 1).astype(np.uint8)


def _largest_remainder(total: int, fractions: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``total * fractions`` (Hamilton rounding)."""
    raw = total * fractions / fractions.sum()
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family: must be one of {tuple(FAMILIES)}, got {family!r}")
    return family


def _check_rate(rate: float, family: str = DEFAULT_FAMILY) -> float:
    rates = FAMILY_RATES[_check_family(family)]
    for r in rates:
        if abs(rate - r) < 1e-9:
            return r
    raise ValueError(f"rate: {rate!r} is not a tabulated mother-code rate of family {family!r} "
                     f"(choose from {list(rates)})")


def default_construction(family: str, rate: float, n: int | None = None) -> str:
    """The graph construction used for (family, rate, n) when none is given: above ``LIFT_BASE_N`` symbols a lift
    of the length-``n / Z`` code (``build_code_lift``); else PEG for the rows designed in family "de"
    (``_DE_HIGH``), the random matching for the Elkouss et al. rows."""
    if n is not None and n > LIFT_BASE_N:
        return "lift"
    if _check_family(family) == "de" and any(abs(rate - r) < 1e-9 for r in _DE_HIGH):
        return "peg"
    return "random"


def _construction(construction: str | None, family: str, rate: float, n: int | None = None) -> str:
    construction = default_construction(family, rate, n) if construction is None else construction
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"construction: must be one of {CONSTRUCTIONS}, got {construction!r}")
    return construction


def count_four_cycles(code: LdpcCode) -> int:
    """Number of length-4 cycles (pairs of variables sharing >= 2 checks, counted per extra shared check)."""
    keys = _pair_keys(code.check_ptr, code.edge_var, code.n)
    if keys is None:
        return -1
    keys.sort()
    return int(np.count_nonzero(keys[1:] == keys[:-1]))


def _pair_keys(check_ptr: np.ndarray, edge_var: np.ndarray, n: int,
               return_checks: bool = False):
    """All (v1 < v2) pairs of variables sharing a check, encoded as v1 * n + v2 (vectorised per degree)."""
    deg = np.diff(check_ptr)
    total = int(np.sum(deg * (deg - 1) // 2))
    if total > _MAX_PAIRS_FOR_GIRTH:
        return None
    out, chk = [], []
    for d in np.unique(deg):
        cs = np.flatnonzero(deg == d)
        if d < 2:
            continue
        rows = edge_var[check_ptr[cs][:, None] + np.arange(d)[None, :]]  # (len(cs), d)
        i, j = np.triu_indices(d, 1)
        a, b = rows[:, i].astype(np.int64), rows[:, j].astype(np.int64)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        out.append((lo * n + hi).ravel())
        if return_checks:
            chk.append(np.repeat(cs, i.size))
    keys = np.concatenate(out) if out else np.zeros(0, np.int64)
    if return_checks:
        return keys, (np.concatenate(chk) if chk else np.zeros(0, np.int64))
    return keys


CONSTRUCTIONS = ("random", "peg", "lift")
# Codes longer than this are lifts of a code of at most this length (PEG at n = 1e6 and check degree 160 takes
# over half an hour; the lift takes about a second from the cached base code).
LIFT_BASE_N = 100_000
# PEG search limits (see _ldpc.c): breadth-first levels and edges visited per edge placed. 4 levels is local girth
# up to 10 where the neighbourhood is still small; the budget keeps n = 1e5 builds at a few seconds.
PEG_MAX_DEPTH = 4
PEG_EDGE_BUDGET = 1_500


def _node_degrees(n: int, rate: float, family: str = DEFAULT_FAMILY) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Variable degrees (ascending, exact node profile), m, and the check degree values/weights of ``rate``."""
    lam, rho = FAMILIES[family][rate]
    vdeg_vals = np.array(sorted(lam), dtype=np.int64)
    lam_w = np.array([lam[d] for d in vdeg_vals], dtype=float)
    cdeg_vals = np.array(sorted(rho), dtype=np.int64)
    rho_w = np.array([rho[d] for d in cdeg_vals], dtype=float)
    lam_w /= lam_w.sum()
    rho_w /= rho_w.sum()
    v_counts = _largest_remainder(n, lam_w / vdeg_vals)
    m = int(round(n * (rho_w / cdeg_vals).sum() / (lam_w / vdeg_vals).sum()))
    if vdeg_vals[0] == 2 and v_counts[0] > m - 1:     # see build_code: surplus degree-2 nodes -> degree 3
        surplus = int(v_counts[0] - (m - 1))
        v_counts[0] -= surplus
        if 3 not in vdeg_vals:
            vdeg_vals = np.insert(vdeg_vals, 1, 3)
            v_counts = np.insert(v_counts, 1, 0)
        v_counts[1] += surplus
    return np.repeat(vdeg_vals, v_counts), m, cdeg_vals, rho_w


def build_code_peg(n: int, rate: float, seed: int, max_depth: int = PEG_MAX_DEPTH,
                   edge_budget: int = PEG_EDGE_BUDGET, family: str = DEFAULT_FAMILY) -> LdpcCode:
    """Mother code by progressive edge growth (Hu, Eleftheriou, Arnold, IEEE T-IT 51, 386 (2005)), C helper.

    Same variable-degree profile and m as ``build_code`` (the table's lambda, node perspective); check degrees
    come out concentrated (lowest degree among the admissible checks: a spread of 2-3 around E/m) instead of
    following rho. Variables are placed in ascending degree
    order, so the degree-2 nodes form a cycle-free or long-cycle subgraph first. Deterministic in ``seed``.
    """
    from qkdflow.distill import _ldpc  # noqa: PLC0415 - optional C extension

    if not hasattr(_ldpc, "peg"):
        raise ValueError("construction: peg needs a rebuilt C extension (python setup.py build_ext --inplace)")
    n = int(n)
    var_degree, m, _, _ = _node_degrees(n, rate, family)
    out = np.empty(int(var_degree.sum()), dtype=np.int32)
    mix = int(np.random.default_rng([int(seed), n, int(round(rate * 100)), 0x9E6]).integers(1, 2**62))
    _ldpc.peg(var_degree.astype(np.int32), m, mix, int(max_depth), int(edge_budget), out)
    ev = np.repeat(np.arange(n, dtype=np.int64), var_degree)
    ec = out.astype(np.int64)
    rng = np.random.default_rng([int(seed), n, int(round(rate * 100)), _FORMAT_VERSION, 0x9E6])
    return _finish(n, m, rate, seed, ev, ec, var_degree, rng, four=-2, construction="peg", family=family)


def build_code_lift(n: int, rate: float, seed: int, family: str = DEFAULT_FAMILY) -> LdpcCode:
    """Mother code of length n = Z n0 as a random lift (Z-cover) of the length-n0 code, n0 <= ``LIFT_BASE_N``.

    Lifting (protograph / Z-cover construction: J. Thorpe, "Low-density parity-check (LDPC) codes constructed
    from protographs", IPN Progress Report 42-154 (2003); cyclic liftings as in quasi-cyclic LDPC codes): every
    base variable v and check c become Z copies (v, z), (c, z); every base edge (c, v) with a random shift s
    becomes the Z edges ((c, z + s mod Z), (v, z)). The lift keeps both degree profiles exactly; every cycle
    of the lift projects onto a cycle of the base graph, so its girth is at least the base's (the shifts break
    a base cycle with probability 1 - 1/Z). Untainted puncturing lifts too: copies of the base's punctured
    symbols share no check (their base images share none), so ``puncture_order`` is the base order with each
    symbol's Z copies in turn. The base code is ``load_or_build_code(n0, ...)`` (cached); deterministic in seed.
    """
    n = int(n)
    z = -(-n // LIFT_BASE_N)
    if n % z or n // z < _MIN_N:
        raise ValueError(f"n: {n} is not a multiple of {z} (a lifted code is {z} copies of a code of at most "
                         f"{LIFT_BASE_N} symbols)")
    base = load_or_build_code(n // z, rate, seed, family=family,
                              construction=default_construction(family, rate))
    rng = np.random.default_rng([int(seed), n, int(round(rate * 100)), _FORMAT_VERSION, 0x11F7])
    deg0 = np.diff(base.check_ptr)
    e0 = base.edge_var.size
    shift = rng.integers(0, z, size=e0)
    check_ptr = np.concatenate([[0], np.cumsum(np.repeat(deg0, z))]).astype(np.int64)
    # int32 below (every index < e0 z <= 2^31 - 1, checked): a quarter of the int64 version's bytes, same values
    if e0 * z >= 2**31:
        raise ValueError(f"n: {n} gives {e0 * z} edges, more than this construction indexes")
    check_of = np.repeat(np.arange(base.m, dtype=np.int32), deg0)
    k = (np.arange(e0, dtype=np.int32) - base.check_ptr[check_of].astype(np.int32))   # edge's place in its check
    t = np.arange(z, dtype=np.int32)
    # base check c's copy t starts at check_ptr[c z + t] = z ptr0[c] + t deg0[c] (all copies of c have its degree)
    start = base.check_ptr[check_of].astype(np.int32) * z + k
    pos = start[:, None] + t[None, :] * deg0[check_of].astype(np.int32)[:, None]
    edge_var = np.empty(e0 * z, dtype=np.int32)
    # check (c, t) holds (v, (t - s) mod Z): ascending in v, hence in v Z + copy, as the base rows are
    copy = t[None, :] - shift.astype(np.int32)[:, None]
    copy += z * (copy < 0)
    edge_var[pos.ravel()] = (base.edge_var.astype(np.int32)[:, None] * z + copy).ravel()
    punct = (base.puncture_order.astype(np.int64)[:, None] * z + t[None, :]).ravel()
    mask = np.ones(n, dtype=bool)
    mask[punct] = False
    shorten = rng.permutation(np.flatnonzero(mask)).astype(np.int32)
    return LdpcCode(n=n, m=base.m * z, rate=rate, seed=int(seed), check_ptr=check_ptr, edge_var=edge_var,
                    var_degree=np.repeat(base.var_degree, z).astype(np.int32),
                    puncture_order=punct.astype(np.int32), shorten_order=shorten, four_cycles=-1,
                    construction="lift", family=family)


def _finish(n, m, rate, seed, ev, ec, var_degree, rng, four, construction, family) -> LdpcCode:
    """Sort edges by check, derive the puncturing / shortening orders, count 4-cycles if not known."""
    order = np.lexsort((ev, ec))
    edge_var = ev[order].astype(np.int32)
    check_ptr = np.concatenate([[0], np.cumsum(np.bincount(ec, minlength=m))]).astype(np.int64)
    if four == -2:
        keys = _pair_keys(check_ptr, edge_var, n)
        if keys is None:
            four = -1
        else:
            keys.sort()
            four = int(np.count_nonzero(keys[1:] == keys[:-1]))
    vorder = np.argsort(ev, kind="stable")
    var_checks = ec[vorder]
    var_ptr = np.concatenate([[0], np.cumsum(var_degree)])
    punct = _untainted_order(var_degree, var_ptr, var_checks, m, rng)
    mask = np.ones(n, dtype=bool)
    mask[punct] = False
    shorten = rng.permutation(np.flatnonzero(mask)).astype(np.int32)
    return LdpcCode(n=n, m=m, rate=rate, seed=int(seed), check_ptr=check_ptr, edge_var=edge_var,
                    var_degree=var_degree.astype(np.int32), puncture_order=punct.astype(np.int32),
                    shorten_order=shorten, four_cycles=four, construction=construction, family=family)


def build_code(n: int, rate: float, seed: int, construction: str | None = None,
               family: str = DEFAULT_FAMILY) -> LdpcCode:
    """Construct the mother code of length ``n`` and table ``rate`` deterministically from ``seed``.

    ``family``: the degree-distribution table ("elkouss2009" or "de", ``FAMILIES``); ``construction``:
    "random" (vectorised socket matching, below) or "peg" (``build_code_peg``, C helper); None: the row's
    default (``default_construction``).
    """
    if not isinstance(n, (int, np.integer)) or not (_MIN_N <= n <= _MAX_N):
        raise ValueError(f"n: must be an integer in [{_MIN_N}, {_MAX_N}], got {n!r}")
    rate = _check_rate(rate, family)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    construction = _construction(construction, family, rate, int(n))
    if construction == "peg":
        return build_code_peg(n, rate, seed, family=family)
    if construction == "lift":
        return build_code_lift(n, rate, seed, family=family)
    n = int(n)
    rng = np.random.default_rng([int(seed), n, int(round(rate * 100)), _FORMAT_VERSION])
    lam, rho = FAMILIES[family][rate]
    vdeg_vals = np.array(sorted(lam), dtype=np.int64)
    lam_w = np.array([lam[d] for d in vdeg_vals], dtype=float)
    cdeg_vals = np.array(sorted(rho), dtype=np.int64)
    rho_w = np.array([rho[d] for d in cdeg_vals], dtype=float)
    lam_w /= lam_w.sum()
    rho_w /= rho_w.sum()
    # Node-perspective fractions: Lambda_i = (lambda_i / i) / sum_j lambda_j / j.
    v_counts = _largest_remainder(n, lam_w / vdeg_vals)
    m = int(round(n * (rho_w / cdeg_vals).sum() / (lam_w / vdeg_vals).sum()))
    # Degree-2 nodes beyond m - 1 necessarily close cycles among themselves (low-weight codewords: an
    # error floor, seen as undetected wrong-codeword decodings in our rate-0.80 code). They are promoted to
    # degree 3, which keeps n, m and hence the rate; affects the rates 0.75, 0.80, 0.90 rows only.
    if vdeg_vals[0] == 2 and v_counts[0] > m - 1:
        surplus = int(v_counts[0] - (m - 1))
        v_counts[0] -= surplus
        if 3 not in vdeg_vals:
            vdeg_vals = np.insert(vdeg_vals, 1, 3)
            v_counts = np.insert(v_counts, 1, 0)
        v_counts[1] += surplus
    var_degree = np.repeat(vdeg_vals, v_counts)             # ascending: degree-2 nodes first
    n_edges = int(var_degree.sum())
    c_counts = _largest_remainder(m, rho_w / cdeg_vals)
    check_degree = rng.permutation(np.repeat(cdeg_vals, c_counts))
    # Match the socket totals by spreading the rounding difference over random checks (+-1 each).
    diff = n_edges - int(check_degree.sum())
    while diff != 0:
        step = 1 if diff > 0 else -1
        ok = np.flatnonzero(check_degree + step >= 2)
        pick = rng.choice(ok, size=min(abs(diff), ok.size), replace=False)
        check_degree[pick] += step
        diff -= step * pick.size

    # Staircase for degree-2 nodes: var j -> checks pi[j], pi[j+1] (no cycles among degree-2 nodes).
    n2 = int(np.count_nonzero(var_degree == 2))
    n_stair = min(n2, m - 1)
    pi = rng.permutation(m)
    stair_v = np.repeat(np.arange(n_stair), 2)
    stair_c = np.stack([pi[:n_stair], pi[1:n_stair + 1]], axis=1).ravel()
    used = np.bincount(stair_c, minlength=m)
    if np.any(used > check_degree):
        raise RuntimeError("internal: staircase exceeds a check degree")  # pragma: no cover
    rest_v = np.repeat(np.arange(n_stair, n), var_degree[n_stair:])
    rest_c = rng.permutation(np.repeat(np.arange(m), check_degree - used))

    rest_c = _remove_parallel_edges(rest_v, rest_c, stair_v, stair_c, m, rng)
    ev = np.concatenate([stair_v, rest_v])
    ec = np.concatenate([stair_c, rest_c])
    n_fixed = stair_v.size
    ec, four = _remove_four_cycles(ev, ec, n_fixed, n, m, rng)

    order = np.lexsort((ev, ec))
    edge_var = ev[order].astype(np.int32)
    check_ptr = np.concatenate([[0], np.cumsum(np.bincount(ec, minlength=m))]).astype(np.int64)

    # Variable -> checks adjacency (CSR) for the puncturing search.
    vorder = np.argsort(ev, kind="stable")
    var_checks = ec[vorder]
    var_ptr = np.concatenate([[0], np.cumsum(var_degree)])
    punct = _untainted_order(var_degree, var_ptr, var_checks, m, rng)
    mask = np.ones(n, dtype=bool)
    mask[punct] = False
    shorten = rng.permutation(np.flatnonzero(mask)).astype(np.int32)
    return LdpcCode(n=n, m=m, rate=rate, seed=int(seed), check_ptr=check_ptr, edge_var=edge_var,
                    var_degree=var_degree.astype(np.int32), puncture_order=punct.astype(np.int32),
                    shorten_order=shorten, four_cycles=four, family=family)


def _remove_parallel_edges(rest_v, rest_c, stair_v, stair_c, m, rng, max_rounds: int = 200):
    """Swap check endpoints of repeated (v, c) pairs with random edges until the graph is simple."""
    stair_keys = stair_v.astype(np.int64) * m + stair_c
    for _ in range(max_rounds):
        keys = rest_v.astype(np.int64) * m + rest_c
        allk = np.concatenate([stair_keys, keys])
        _, first_idx, counts = np.unique(allk, return_index=True, return_counts=True)
        if np.all(counts == 1):
            return rest_c
        is_first = np.zeros(allk.size, dtype=bool)
        is_first[first_idx] = True
        bad = np.flatnonzero(~is_first) - stair_keys.size
        bad = bad[bad >= 0]
        # Also move a random-part copy that collides with a staircase edge.
        in_stair = np.isin(keys, stair_keys)
        bad = np.union1d(bad, np.flatnonzero(in_stair))
        partner = rng.integers(0, rest_c.size, size=bad.size)
        rest_c[bad], rest_c[partner] = rest_c[partner].copy(), rest_c[bad].copy()
    raise ValueError("n: too small for this degree distribution (cannot make the graph simple)")


def _remove_four_cycles(ev, ec, n_fixed, n, m, rng, max_rounds: int = 12):
    """Break length-4 cycles by swapping the check of one non-staircase edge per cycle with a random edge.

    Each round re-detects all 4-cycles (pairs of variables sharing two checks); it stops when none are left,
    after ``max_rounds``, or when a round removes less than a quarter of them (dense short codes cannot
    reach girth 6). Returns the new edge checks and the number of 4-cycles detected in the last round.
    """
    four = -1
    best = None
    for _ in range(max_rounds):
        order = np.lexsort((ev, ec))
        ptr = np.concatenate([[0], np.cumsum(np.bincount(ec, minlength=m))])
        res = _pair_keys(ptr, ev[order], n, return_checks=True)
        if res is None:
            return ec, -1
        keys, chks = res
        comb = np.sort(keys * m + chks)             # pair key major, check minor (< 2^63 for n <= 4e6)
        keys = comb // m
        dup = np.flatnonzero(keys[1:] == keys[:-1]) + 1
        four = int(dup.size)
        if four == 0:
            return ec, 0
        if best is not None and four >= best:
            return ec, four
        best = four if best is None else min(best, four)
        # For each duplicated pair, move edge (v2, c) of the later check occurrence.
        v2 = keys[dup] % n
        c = comb[dup] % m
        ekey = ev.astype(np.int64) * m + ec
        pos_sorted = np.argsort(ekey)
        idx = pos_sorted[np.searchsorted(ekey[pos_sorted], v2 * m + c)]
        idx = np.unique(idx[idx >= n_fixed])
        if idx.size == 0:
            return ec, four
        partner = rng.integers(n_fixed, ev.size, size=idx.size)
        ec[idx], ec[partner] = ec[partner].copy(), ec[idx].copy()
        # Swaps can create parallel edges; re-swap those at random until the graph is simple again.
        for _k in range(50):
            ekey = ev.astype(np.int64) * m + ec
            _, first_idx = np.unique(ekey, return_index=True)
            if first_idx.size == ekey.size:
                break
            is_first = np.zeros(ekey.size, dtype=bool)
            is_first[first_idx] = True
            bad = np.flatnonzero(~is_first)
            bad = bad[bad >= n_fixed]
            partner = rng.integers(n_fixed, ev.size, size=bad.size)
            ec[bad], ec[partner] = ec[partner].copy(), ec[bad].copy()
    return ec, four


def _untainted_order(var_degree, var_ptr, var_checks, m, rng) -> np.ndarray:
    """Greedy puncturing order: untainted symbols first, then further 1-step-recoverable symbols.

    Pass 1 (Elkouss et al., IEEE WCL 1(6) 2012, "untainted puncturing"): lowest degree first (random within
    a degree), accept a symbol if none of its checks already has a punctured neighbour.
    Pass 2 (1-step recoverable nodes, Ha, Kim, McLaughlin, IEEE Trans. IT 50(11) 2004): accept a symbol if it
    keeps a check with no other punctured neighbour and every earlier punctured symbol keeps one too.
    Invariant: every punctured symbol owns a *private* check, so the punctured columns of H are linearly
    independent over GF(2) (each has a row no other punctured column touches).
    """
    n = var_degree.size
    cand = np.lexsort((rng.random(n), var_degree)).tolist()
    limit = n // 4                    # p <= d = delta n; longer lists are never used with delta <= 0.25
    # Plain Python lists: this greedy scan is sequential, and list indexing beats numpy scalar calls here.
    vc = var_checks.tolist()
    ptr = var_ptr.tolist()
    count = [0] * m                   # punctured neighbours per check
    owner = [-1] * m                  # the punctured symbol of a check with count == 1
    n_priv: dict[int, int] = {}       # private checks per punctured symbol
    chosen: list[int] = []
    rest: list[int] = []
    for v in cand:                    # pass 1: untainted
        cs = vc[ptr[v]:ptr[v + 1]]
        if any(count[c] for c in cs):
            rest.append(v)
            continue
        for c in cs:
            count[c] = 1
            owner[c] = v
        n_priv[v] = len(cs)
        chosen.append(v)
        if len(chosen) >= limit:
            return np.array(chosen, dtype=np.int64)
    for v in rest:                    # pass 2: keep a private check for everyone
        cs = vc[ptr[v]:ptr[v + 1]]
        if not any(count[c] == 0 for c in cs):
            continue
        lost: dict[int, int] = {}
        for c in cs:
            if count[c] == 1:
                u = owner[c]
                lost[u] = lost.get(u, 0) + 1
        if any(n_priv[u] - k < 1 for u, k in lost.items()):
            continue
        for u, k in lost.items():
            n_priv[u] -= k
        free = 0
        for c in cs:
            if count[c] == 0:
                owner[c] = v
                free += 1
            elif count[c] == 1:
                owner[c] = -1
            count[c] += 1
        n_priv[v] = free
        chosen.append(v)
        if len(chosen) >= limit:
            break
    return np.array(chosen, dtype=np.int64)


def _row_digest(family: str, rate: float) -> str:
    """6 hex digits of a family's (lambda, rho) row: a revised distribution never reuses a cached graph."""
    lam, rho = FAMILIES[family][rate]
    return hashlib.sha256(repr((sorted(lam.items()), sorted(rho.items()))).encode()).hexdigest()[:6]


def _cache_dir() -> Path:
    base = os.environ.get("QKDFLOW_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "qkdflow" / "ldpc"


def load_or_build_code(n: int, rate: float, seed: int, cache: bool = True,
                       construction: str | None = None, family: str = DEFAULT_FAMILY) -> LdpcCode:
    """Return the mother code (n, rate, seed), from the on-disk cache if present (else build and store).

    Cache: ``$QKDFLOW_CACHE_DIR`` or ``~/.cache/qkdflow/ldpc``, one ``.npz`` per (n, rate, seed, format).
    A corrupt cache file is rebuilt, never trusted.
    """
    rate = _check_rate(rate, family)
    if not isinstance(n, (int, np.integer)) or not (_MIN_N <= n <= _MAX_N):
        raise ValueError(f"n: must be an integer in [{_MIN_N}, {_MAX_N}], got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    construction = _construction(construction, family, rate, int(n))
    if construction == "lift":      # rebuilt in about a second from the cached base code: not stored
        return build_code(n, rate, seed, construction, family)
    same_row = FAMILIES[family][rate] == DEGREE_DISTRIBUTIONS.get(rate)    # an Elkouss row: same graph, same file
    tag = ("" if same_row else f"_{family}{_row_digest(family, rate)}") + (
        "" if construction == "random" else f"_{construction}")
    path = _cache_dir() / f"ldpc_v{_FORMAT_VERSION}{tag}_n{int(n)}_r{int(round(rate * 100))}_s{int(seed)}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as z:
                code = LdpcCode(n=int(z["n"]), m=int(z["m"]), rate=float(z["rate"]), seed=int(z["seed"]),
                                check_ptr=z["check_ptr"], edge_var=z["edge_var"], var_degree=z["var_degree"],
                                puncture_order=z["puncture_order"], shorten_order=z["shorten_order"],
                                four_cycles=int(z["four_cycles"]), construction=construction, family=family)
                stored_fp = z["fingerprint"].tobytes()
            if (code.fingerprint == stored_fp and code.n == n and abs(code.rate - rate) < 1e-9
                    and code.seed == seed):
                return code
        except Exception:  # noqa: BLE001 - any unreadable cache entry is simply rebuilt
            pass
    code = build_code(n, rate, seed, construction, family)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, n=code.n, m=code.m, rate=code.rate, seed=code.seed, check_ptr=code.check_ptr,
                 edge_var=code.edge_var, var_degree=code.var_degree, puncture_order=code.puncture_order,
                 shorten_order=code.shorten_order, four_cycles=code.four_cycles,
                 fingerprint=np.frombuffer(code.fingerprint, dtype=np.uint8))
        os.replace(tmp, path)
    return code


def load_or_build_codes(n: int, seed: int, rates: tuple[float, ...] | None = None, cache: bool = True,
                        construction: str | None = None, family: str = DEFAULT_FAMILY) -> list[LdpcCode]:
    """The pool of mother codes of length ``n`` (one per rate; default: every rate of ``family``), as used by
    the rate-adaptive protocol."""
    if rates is None:  # every rate of the family whose graph fits n (a short frame has few checks)
        rates = tuple(r for r in FAMILY_RATES[_check_family(family)] if buildable(n, r, family))
    return [load_or_build_code(n, r, seed, cache=cache, construction=construction, family=family) for r in rates]


# ------------------------------------------------------------------------------------------ extension rows
# Blind reconciliation's last resort (``ldpc.BlindAliceFrame.reveal``): once every punctured value of a frame has
# been revealed, Alice goes on revealing the syndrome of extension rows, extra parity checks appended to H. The
# stacked matrix [H; E_j] (j rows of E) is the mother code at a lower rate (rate compatibility by extension, as in
# incremental-redundancy / Raptor-like LDPC codes: Chen, Vakilinia et al., IEEE T-COM 63(5) 2015), decoded by the
# same BP. Each extension bit is one more bit of leak, charged exactly. E: ``EXTENSION_FRACTION * m`` rows; every
# variable joins exactly one row (a seeded permutation dealt round-robin), so the first j rows touch j/|E| of the
# variables and no two extension rows share a variable (no 4-cycle inside E). 0.5 m rather than 0.25 m: rows of half
# the degree (n / (0.5 m), e.g. 24 for the rate-0.915 code) say more per revealed bit at low QBER; measured at
# n = 1e5, QBER 1 % (tools/bench_ldpc.py --mode blind --frames 1000 --seed 23 --code-seed 21): 0.25 m lost 1 frame
# of 1000 with the whole extension revealed (f 1.46), 0.5 m rescued it at f 1.21; mean f unchanged (1.102).
EXTENSION_FRACTION = 0.5
_EXTENSIONS: dict = {}        # fingerprint -> (code, ptr, ev) of the full extension
_EXTENDED: dict = {}          # (fingerprint, rows) -> (code, extended code)
_CACHE_MAX = 64               # entries per cache (cleared when full)


def extension_rows(code: LdpcCode) -> int:
    """Number of extension rows of ``code`` (the most extension bits blind mode may reveal per frame)."""
    return max(1, min(int(round(EXTENSION_FRACTION * code.m)), code.n // 2))


def _extension(code: LdpcCode) -> tuple[np.ndarray, np.ndarray]:
    """(row pointers, variables sorted within each row) of the full extension of ``code``."""
    hit = _EXTENSIONS.get(code.fingerprint)
    if hit is not None and hit[0] is code:
        return hit[1], hit[2]
    rows = extension_rows(code)
    perm = np.random.default_rng(np.frombuffer(code.fingerprint, dtype=np.uint32)).permutation(code.n)
    row = np.arange(code.n) % rows                      # perm[j] joins row j mod rows
    order = np.lexsort((perm, row))                     # by row, variables ascending within a row
    ev = perm[order].astype(np.int32)
    ptr = np.searchsorted(row[order], np.arange(rows + 1)).astype(np.int64)
    if len(_EXTENSIONS) >= _CACHE_MAX:
        _EXTENSIONS.clear()
    _EXTENSIONS[code.fingerprint] = (code, ptr, ev)
    return ptr, ev


def extension_syndrome(code: LdpcCode, word: np.ndarray) -> np.ndarray:
    """H_E x of a 0/1 word of length n over every extension row of ``code`` (no extended copy of H is built)."""
    ptr, ev = _extension(code)
    return _segment_xor(word[ev].astype(np.uint8), ptr)


def extended_code(code: LdpcCode, rows: int) -> LdpcCode:
    """``code`` with its first ``rows`` extension rows appended below H (``rows = 0``: the code itself). The
    extended code's edges are the mother code's edges followed by the new ones, so a decoder state of fewer rows
    is a prefix of this one's. Cached per (code, rows)."""
    if not (0 <= rows <= extension_rows(code)):
        raise ValueError(f"rows: must be in [0, {extension_rows(code)}], got {rows!r}")
    if rows == 0:
        return code
    hit = _EXTENDED.get((code.fingerprint, rows))
    if hit is not None and hit[0] is code:
        return hit[1]
    ptr, ev = _extension(code)
    new_ev = ev[:ptr[rows]]
    ext = LdpcCode(n=code.n, m=code.m + rows, rate=code.rate, seed=code.seed,
                   check_ptr=np.concatenate([code.check_ptr, code.check_ptr[-1] + ptr[1:rows + 1]]),
                   edge_var=np.concatenate([code.edge_var, new_ev]).astype(np.int32),
                   var_degree=(code.var_degree + np.bincount(new_ev, minlength=code.n)).astype(np.int32),
                   puncture_order=code.puncture_order, shorten_order=code.shorten_order, four_cycles=-1,
                   construction=code.construction, family=code.family)
    if len(_EXTENDED) >= _CACHE_MAX:
        _EXTENDED.clear()
    _EXTENDED[(code.fingerprint, rows)] = (code, ext)
    return ext


def buildable(n: int, rate: float, family: str = DEFAULT_FAMILY) -> bool:
    """Whether (n, rate) of ``family`` has room for its largest variable degree: at least twice as many checks
    (a variable node needs that many distinct checks; the designed high-rate rows reach degree 60, so rate 0.95
    needs n >= 2400). The same answer at both ends, so both build the same pool."""
    lam, _ = FAMILIES[_check_family(family)][_check_rate(rate, family)]
    return int(round((1.0 - rate) * int(n))) >= 2 * max(lam)
