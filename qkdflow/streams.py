"""Item types that flow on qkdflow stream edges (see DESIGN.md §2).

Every event is keyed by its 64-bit pulse-slot index. Frames cover a half-open slot range
``[start, stop)``; these dtypes describe the *items* inside a frame's payload.

Conventions shared by every block:

* basis: 0 = Z (the key basis of efficient BB84), 1 = X.
* intensity class: 0 = signal, 1 = decoy, 2 = vacuum (``INTENSITY_NAMES``).
* detector bit ``2*basis + value`` of ``mask`` is set when the detector that reports ``value`` in
  ``basis`` fired; double clicks keep both bits (squashing happens in sifting, not here).
* origin of a photon: see ``ORIGIN_NAMES``.
"""
from __future__ import annotations

import numpy as np

INTENSITY_NAMES = ("signal", "decoy", "vacuum")
BASIS_NAMES = ("Z", "X")
ORIGIN_NAMES = ("signal", "raman", "leakage", "eve")

#: Alice's per-slot preparation choices (dense; slot index implicit from the frame range).
PREP_DTYPE = np.dtype([("intensity", "u1"), ("basis", "u1"), ("bit", "u1")])

#: A photon (or a group of ``n`` photons in one mode) travelling in a slot.
PHOTON_DTYPE = np.dtype([("slot", "<i8"), ("n", "<u2"), ("basis", "u1"), ("bit", "u1"), ("origin", "u1")])

#: A detection event at Bob: which detectors fired in this slot, and when (ps, -1 if unknown).
CLICK_DTYPE = np.dtype([("slot", "<i8"), ("basis", "u1"), ("mask", "u1"), ("time_ps", "<i8")])

#: A raw time tag from a time tagger: channel and timestamp in ps.
TAG_DTYPE = np.dtype([("time_ps", "<i8"), ("channel", "<i4")])
