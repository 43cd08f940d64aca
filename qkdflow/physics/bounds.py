"""Fundamental repeaterless bound.

PLOB: Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017): the secret-key capacity of a pure-loss
bosonic channel of transmissivity eta is K = -log2(1 - eta) bits per channel use (~1.44 eta for eta << 1). Any
(decoy-)BB84 rate per pulse over the same total transmissivity must lie below it.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["plob_bound"]


def plob_bound(transmittance: ArrayLike) -> np.ndarray:
    """-log2(1 - eta) bits per channel use; eta in [0, 1] (inf at eta = 1)."""
    eta = np.asarray(transmittance, dtype=float)
    if np.any((eta < 0) | (eta > 1)):
        raise ValueError(f"transmittance: must be in [0, 1], got {eta[(eta < 0) | (eta > 1)].ravel()[0]:g}")
    with np.errstate(divide="ignore"):
        return -np.log1p(-eta) / np.log(2.0)
