"""Binary Shannon entropy, the one definition the key-distillation modules share.

h(p) = -p log2 p - (1 - p) log2 (1 - p), with h(0) = h(1) = 0 (Shannon 1948; the leak bound n h(Q) of
reconciliation, e.g. Martinez-Mateo et al., QIC 15 (2015), and the finite-key length of Lim et al. 2014).
"""
from __future__ import annotations

import numpy as np


def binary_entropy(p: float | np.ndarray) -> float | np.ndarray:
    """h(p) in bits: a float for a scalar, an array for an array; 0 at and outside [0, 1]'s ends."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -p * np.log2(p) - (1.0 - p) * np.log2(1.0 - p)
    h = np.where((p <= 0.0) | (p >= 1.0), 0.0, h)
    return float(h) if h.ndim == 0 else h
