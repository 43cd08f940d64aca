"""Clock recovery: map time-tag timestamps (ps) to a continuous pulse-slot coordinate.

A :class:`ClockModel` is a continuous piecewise-linear map ``x(t)`` from time to slot coordinate: slot ``s``
of the clock sits at ``x = s``. Two ways to build one:

* :func:`clock_from_sync` — from a sync channel that fires once every ``slots_per_sync`` slots (the laser
  clock, possibly divided). Each sync event gets an integer sync count from the rounded gap to its
  predecessor (robust to missing events and rejecting off-grid spurious ones), then the slot-to-time relation
  is fitted by least squares with a *linear spline* (hat-function basis, uniform knots every
  ``knot_spacing_slots``), which absorbs a constant frequency offset and tracks slow drift. This is ordinary
  linear-spline regression (de Boor, *A Practical Guide to Splines*, ch. XIV); the banded normal equations
  are solved exactly. A tiny second-difference penalty only matters where a knot interval holds no events
  (it then interpolates linearly across the gap).
* :func:`clock_from_detections` — no sync channel: the detections themselves are periodic. The phase
  coherence ``|sum_j exp(2 pi i t_j / T)|`` is maximised over T near nominal. The frequency search is done as
  one FFT: detection phasors at the nominal period are summed in short blocks (short enough that the phase
  cannot smear within a block for offsets up to ``max_offset_ppm``) and the block series is Fourier
  transformed; the peak is the frequency offset (the classic periodogram / maximum-likelihood frequency
  estimator for a single tone, Rife & Boorstyn, IEEE Trans. Inf. Theory 20, 591 (1974)). The slowly varying
  phase is then tracked per segment of ``events_per_segment`` detections (circular mean, unwrapped) — the
  software-PLL approach of Swabian's SoftwareClock and qcrypto's costream, done in batch.

The integer slot numbering of a detection-derived clock is arbitrary (slot 0 near the first detection); the
offset to Alice's numbering is found by :func:`qkdflow.timetag.slots.find_slot_offset`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ClockError(ValueError):
    """Clock recovery impossible from the given events (empty channel, no periodicity, phase jump...)."""


@dataclass
class ClockModel:
    """Continuous piecewise-linear time -> slot-coordinate map, linearly extrapolated past its ends.

    ``x(t) = slot_ref + interp(t - time_ref_ps; knot_time_ps, knot_slot)``. References keep the float64
    knot values small so sub-ps precision holds for long recordings.
    """

    time_ref_ps: int
    slot_ref: int
    knot_time_ps: np.ndarray  # float64, relative to time_ref_ps, strictly increasing (>= 2 knots)
    knot_slot: np.ndarray     # float64, relative to slot_ref
    rms_residual_ps: float = float("nan")  # fit residual of the events used (sync jitter + model error)
    n_events: int = 0

    def __post_init__(self) -> None:
        self.knot_time_ps = np.asarray(self.knot_time_ps, np.float64)
        self.knot_slot = np.asarray(self.knot_slot, np.float64)
        if self.knot_time_ps.size < 2 or self.knot_time_ps.shape != self.knot_slot.shape:
            raise ValueError("ClockModel: need >= 2 knots with matching knot_time_ps and knot_slot")
        if (np.diff(self.knot_time_ps) <= 0).any() or (np.diff(self.knot_slot) <= 0).any():
            raise ValueError("ClockModel: knots must be strictly increasing in time and slot")

    @property
    def period_ps(self) -> float:
        """Mean slot period over the model's span."""
        return float((self.knot_time_ps[-1] - self.knot_time_ps[0]) / (self.knot_slot[-1] - self.knot_slot[0]))

    def relative_coordinate(self, time_ps: np.ndarray) -> np.ndarray:
        """``x(t) - slot_ref`` as float64 (keeps precision; add ``slot_ref`` after rounding)."""
        tau = (np.asarray(time_ps, np.int64) - self.time_ref_ps).astype(np.float64)
        kt, ks = self.knot_time_ps, self.knot_slot
        x = np.interp(tau, kt, ks)
        lo = tau < kt[0]
        if lo.any():
            x[lo] = ks[0] + (tau[lo] - kt[0]) * ((ks[1] - ks[0]) / (kt[1] - kt[0]))
        hi = tau > kt[-1]
        if hi.any():
            x[hi] = ks[-1] + (tau[hi] - kt[-1]) * ((ks[-1] - ks[-2]) / (kt[-1] - kt[-2]))
        return x

    def slot_and_phase(self, time_ps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest slot (int64) and phase in slots, in [-0.5, 0.5), of each time."""
        x = self.relative_coordinate(time_ps)
        k = np.floor(x + 0.5)
        return k.astype(np.int64) + self.slot_ref, x - k

    def time_of_slot(self, slot: np.ndarray) -> np.ndarray:
        """Inverse map: time (float64 ps, absolute) at which slot coordinate ``slot`` occurs."""
        s = (np.asarray(slot, np.int64) - self.slot_ref).astype(np.float64)
        kt, ks = self.knot_time_ps, self.knot_slot
        t = np.interp(s, ks, kt)
        lo = s < ks[0]
        if lo.any():
            t[lo] = kt[0] + (s[lo] - ks[0]) * ((kt[1] - kt[0]) / (ks[1] - ks[0]))
        hi = s > ks[-1]
        if hi.any():
            t[hi] = kt[-1] + (s[hi] - ks[-1]) * ((kt[-1] - kt[-2]) / (ks[-1] - ks[-2]))
        return t + self.time_ref_ps


# ------------------------------------------------------------------------------------------ from sync
def _sync_counts(t: np.ndarray, period_ps: float, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer sync count of each event (from rounded gaps), dropping off-grid spurious events.

    Returns (indices of kept events, their counts starting at 0). An event is spurious when the gaps to both
    neighbours are off-grid (|gap/period - round| > tol) or it duplicates its predecessor (gap rounds to 0).
    """
    keep = np.arange(t.size)
    for _ in range(8):
        tk = t[keep]
        ratio = np.diff(tk) / period_ps
        inc = np.rint(ratio)
        bad = (np.abs(ratio - inc) > tol) | (inc < 1)
        if not bad.any():
            return keep, np.concatenate([[0], np.cumsum(inc.astype(np.int64))])
        # event i is adjacent to gaps i-1 (before) and i (after)
        before = np.concatenate([[True], bad])   # first event has no gap before: judge by the one after
        after = np.concatenate([bad, [True]])
        dup = np.concatenate([[False], (inc < 1) & (np.abs(ratio) <= tol)])
        spurious = (before & after) | dup
        # end events have one gap: spurious if it is off-grid while the next gap inward is on-grid
        spurious[0] = dup[0] or (bad[0] and (bad.size < 2 or not bad[1]))
        spurious[-1] = dup[-1] or (bad[-1] and (bad.size < 2 or not bad[-2]))
        if not spurious.any():
            i = int(np.flatnonzero(bad)[0])
            raise ClockError(
                f"sync phase jump between events {int(keep[i])} and {int(keep[i + 1])}: gap "
                f"{float(tk[i + 1] - tk[i]):.0f} ps is {ratio[i]:.3f} sync periods (tolerance {tol})")
        keep = keep[~spurious]
        if keep.size < 2:
            break
    raise ClockError("sync events do not form a regular grid (too many off-grid events)")


def _linear_spline_fit(s: np.ndarray, r: np.ndarray, knot_spacing: float, n_knots: int) -> np.ndarray:
    """Least-squares coefficients of a linear spline with uniform knots 0, h, 2h, ... fitted to r(s)."""
    from scipy.linalg import solveh_banded  # lazy: keeps `import qkdflow.timetag` light for file readers

    j = np.minimum((s / knot_spacing).astype(np.int64), n_knots - 2)
    w = s / knot_spacing - j
    w0, w1 = 1.0 - w, w
    diag = np.bincount(j, w0 * w0, n_knots) + np.bincount(j + 1, w1 * w1, n_knots)
    off1 = np.bincount(j, w0 * w1, n_knots)[:-1]
    rhs = np.bincount(j, w0 * r, n_knots) + np.bincount(j + 1, w1 * r, n_knots)
    # second-difference penalty lam * |D c|^2 (rows [1, -2, 1]): negligible where data exist, bridges empty
    # knot intervals with a straight line. Bands of D^T D accumulated row by row.
    lam = 1e-9 * max(float(diag.max()), 1.0)
    ab = np.zeros((3, n_knots))
    ab[2] = diag
    ab[1, 1:] = off1
    if n_knots >= 3:
        r = np.arange(n_knots - 2)
        ab[2] += lam * (np.bincount(r, minlength=n_knots) * 1.0 + 4.0 * np.bincount(r + 1, minlength=n_knots)
                        + np.bincount(r + 2, minlength=n_knots))
        ab[1, 1:] += lam * (-2.0 * np.bincount(r, minlength=n_knots - 1) - 2.0 * np.bincount(r + 1, minlength=n_knots - 1))
        ab[0, 2:] += lam * np.bincount(r, minlength=n_knots - 2)
    return solveh_banded(ab, rhs)


def clock_from_sync(
    sync_time_ps: np.ndarray,
    slot_period_ps: float,
    slots_per_sync: int = 1,
    knot_spacing_slots: int = 1 << 20,
    first_sync_slot: int = 0,
    tolerance: float = 0.25,
) -> ClockModel:
    """Fit a clock to sync-channel timestamps (sorted, ps).

    ``slot_period_ps`` is the nominal slot period (it only needs to be good to ~``tolerance/gap`` for the
    longest gap between received sync events). The first kept sync event is slot ``first_sync_slot``; sync
    event with count k is slot ``first_sync_slot + k * slots_per_sync``. Raises :class:`ClockError` when the
    median of any run of 16 consecutive sync events deviates from the fitted clock by more than
    ``tolerance * slot_period_ps`` (a phase jump, or drift too fast for the knot spacing), since detections
    there could land in the wrong slot.
    """
    t = np.asarray(sync_time_ps, np.int64)
    if t.size == 0:
        raise ClockError("sync channel has no events: cannot recover the clock")
    if t.size < 2:
        raise ClockError("sync channel has a single event: need at least 2 to fit a clock")
    if not slot_period_ps > 0:
        raise ValueError(f"slot_period_ps: must be > 0, got {slot_period_ps}")
    if int(slots_per_sync) < 1:
        raise ValueError(f"slots_per_sync: must be >= 1, got {slots_per_sync}")
    if int(knot_spacing_slots) < 1:
        raise ValueError(f"knot_spacing_slots: must be >= 1, got {knot_spacing_slots}")
    if not 0 < tolerance < 0.5:
        raise ValueError(f"tolerance: must be in (0, 0.5), got {tolerance}")
    if (np.diff(t) < 0).any():
        raise ValueError("sync_time_ps: must be sorted")
    sync_period = float(slot_period_ps) * int(slots_per_sync)
    keep, k = _sync_counts(t, sync_period, tolerance)
    if keep.size < 2:
        raise ClockError("fewer than 2 usable sync events after rejecting off-grid ones")
    # refine the period on the kept grid (nominal may be off by ppm), then recount
    tk = t[keep]
    period_fit = float(tk[-1] - tk[0]) / float(k[-1]) / int(slots_per_sync)
    keep2, k2 = _sync_counts(t, period_fit * int(slots_per_sync), tolerance)
    keep, k = keep2, k2
    t0 = int(t[keep[0]])
    s = (k * int(slots_per_sync)).astype(np.float64)          # slot of each sync, relative
    tau = (t[keep] - t0).astype(np.float64)
    span = float(s[-1])
    if span <= 0:
        raise ClockError("all usable sync events fall on the same sync period")
    h = float(min(int(knot_spacing_slots), span))
    n_knots = max(int(np.ceil(span / h)) + 1, 2)
    resid = tau - period_fit * s                                 # small numbers: drift/jitter only
    coef = _linear_spline_fit(s, resid, h, n_knots)
    knot_s = np.arange(n_knots) * h
    knot_t = period_fit * knot_s + coef
    j = np.minimum((s / h).astype(np.int64), n_knots - 2)
    w = s / h - j
    fitted = coef[j] * (1 - w) + coef[j + 1] * w
    err = resid - fitted
    rms = float(np.sqrt(np.mean(err ** 2)))
    # If the clock runs this far from the fit, detections would land in the wrong slot: refuse. Judge the
    # median of runs of 16 consecutive events, so single jittery sync events (5-sigma outliers are normal in
    # 1e6 events) do not trip it, while a phase jump or unfollowed drift does.
    limit = tolerance * float(slot_period_ps)
    run = 16 if err.size >= 64 else 1
    n_full = err.size // run * run
    med = np.median(err[:n_full].reshape(-1, run), axis=1)
    if n_full < err.size:
        med = np.append(med, np.median(err[n_full:]))
    worst = int(np.argmax(np.abs(med)))
    if abs(med[worst]) > limit:
        ev = int(keep[min(worst * run, keep.size - 1)])
        raise ClockError(
            f"sync events from {ev} on are {med[worst]:.0f} ps off the fitted clock (limit {limit:.0f} ps = "
            f"tolerance x slot period): phase jump, or drift faster than knot_spacing_slots="
            f"{int(knot_spacing_slots)} can follow")
    return ClockModel(time_ref_ps=t0, slot_ref=int(first_sync_slot), knot_time_ps=knot_t, knot_slot=knot_s,
                      rms_residual_ps=rms, n_events=int(keep.size))


# ------------------------------------------------------------------------------------ from detections
def clock_from_detections(
    time_ps: np.ndarray,
    slot_period_ps: float,
    max_offset_ppm: float = 200.0,
    events_per_segment: int = 4096,
    min_snr: float = 8.0,
) -> ClockModel:
    """Recover the slot clock from detection timestamps alone (sorted, ps), no sync channel.

    Finds the period within ``max_offset_ppm`` of nominal that maximises phase coherence, then tracks the
    phase per segment of ``events_per_segment`` detections. Slot 0 is the slot of the first detection.
    Raises :class:`ClockError` when the coherence ``|sum exp(2 pi i t/T)| / sqrt(n)`` at the best period is
    below ``min_snr`` (random times give ~1).
    """
    t = np.asarray(time_ps, np.int64)
    if t.size == 0:
        raise ClockError("no detection events: cannot recover the clock")
    if t.size < 64:
        raise ClockError(f"only {t.size} detection events: need at least 64 to recover the clock")
    if not slot_period_ps > 0:
        raise ValueError(f"slot_period_ps: must be > 0, got {slot_period_ps}")
    if not max_offset_ppm > 0:
        raise ValueError(f"max_offset_ppm: must be > 0, got {max_offset_ppm}")
    if int(events_per_segment) < 16:
        raise ValueError(f"events_per_segment: must be >= 16, got {events_per_segment}")
    if (np.diff(t) < 0).any():
        raise ValueError("time_ps: must be sorted")
    T = float(slot_period_ps)
    t0 = int(t[0])
    tau = (t - t0).astype(np.float64)
    duration = float(tau[-1])
    if duration <= 0:
        raise ClockError("all detections at the same time: cannot recover the clock")
    phasor = np.exp(2j * np.pi * (np.mod(tau, T) / T))
    # 1) coarse frequency offset: FFT of block sums. Block short enough that the phase moves <= 1/4 cycle.
    block_ps = T / (4.0 * max_offset_ppm * 1e-6)
    n_blocks = int(duration // block_ps) + 1
    if n_blocks > 1:
        b = (tau // block_ps).astype(np.int64)
        z = np.bincount(b, phasor.real, n_blocks) + 1j * np.bincount(b, phasor.imag, n_blocks)
        nfft = 1 << int(np.ceil(np.log2(4 * n_blocks)))
        spec = np.abs(np.fft.fft(z, nfft))
        f = np.fft.fftfreq(nfft)                  # cycles per block
        allowed = np.abs(f) <= 0.25 + 1e-12
        spec_a = np.where(allowed, spec, -1.0)
        m = int(np.argmax(spec_a))
        # parabolic interpolation on the magnitude peak
        y0, y1, y2 = spec[(m - 1) % nfft], spec[m], spec[(m + 1) % nfft]
        den = y0 - 2 * y1 + y2
        delta = 0.5 * (y0 - y2) / den if den < 0 else 0.0
        nu = (f[m] + delta / nfft) / block_ps     # phase rotation, cycles per ps
    else:
        nu = 0.0
    # 2) refine on a fine grid around the coarse estimate (golden-section on |coherence|)
    res_nu = 1.0 / (4.0 * duration)
    lo, hi = nu - 2 * res_nu, nu + 2 * res_nu

    def neg_coh(v: float) -> float:
        return -abs(complex((phasor * np.exp(-2j * np.pi * v * tau)).sum()))

    g = (np.sqrt(5) - 1) / 2
    a, bb = lo, hi
    c, d = bb - g * (bb - a), a + g * (bb - a)
    fc, fd = neg_coh(c), neg_coh(d)
    for _ in range(30):
        if fc < fd:
            bb, d, fd = d, c, fc
            c = bb - g * (bb - a)
            fc = neg_coh(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (bb - a)
            fd = neg_coh(d)
    nu = 0.5 * (a + bb)
    demod = phasor * np.exp(-2j * np.pi * nu * tau)
    snr = abs(complex(demod.sum())) / np.sqrt(t.size)
    if snr < min_snr:
        raise ClockError(f"no clock found within {max_offset_ppm} ppm of {T} ps: coherence/sqrt(n) = {snr:.1f} "
                         f"< {min_snr}")
    period = 1.0 / (1.0 / T - nu)                # x = tau / period advances one per slot
    # 3) phase tracking per segment of equal event count (circular mean, unwrapped)
    m_seg = int(events_per_segment)
    n_seg = max(1, t.size // m_seg)
    seg = np.minimum(np.arange(t.size) // m_seg, n_seg - 1)
    zs = np.bincount(seg, demod.real, n_seg) + 1j * np.bincount(seg, demod.imag, n_seg)
    cnt = np.bincount(seg, minlength=n_seg)
    tc = np.bincount(seg, tau, n_seg) / cnt
    theta = np.unwrap(np.angle(zs)) / (2 * np.pi)   # cycles; detections sit at x = tau/period - theta
    base = tau[0] / period - theta[0]
    if n_seg == 1:
        knot_t = np.array([0.0, duration])
        knot_x = knot_t / period - theta[0] - np.rint(base)
    else:
        # extend the end segments' phase flat to the data edges
        knot_t = np.concatenate([[min(0.0, tc[0] - 1.0)], tc, [max(duration, tc[-1] + 1.0)]])
        th = np.concatenate([[theta[0]], theta, [theta[-1]]])
        knot_x = knot_t / period - th - np.rint(base)
    x_det = np.interp(tau, knot_t, knot_x)
    rms = float(np.sqrt(np.mean((x_det - np.rint(x_det)) ** 2)) * period)
    return ClockModel(time_ref_ps=t0, slot_ref=0, knot_time_ps=knot_t, knot_slot=knot_x,
                      rms_residual_ps=rms, n_events=int(t.size))


def estimate_channel_delay(time_ps: np.ndarray, clock: ClockModel) -> float:
    """Mean arrival phase of a channel's detections relative to the clock, in ps in [-T/2, T/2).

    Circular mean of the slot phase (so it is unbiased by the wrap at +-T/2); pass the result as the
    channel's ``channel_delay_ps`` to slot assignment. The whole-slot part of a delay is not observable
    here: it shows up in the slot offset instead.
    """
    t = np.asarray(time_ps, np.int64)
    if t.size == 0:
        raise ClockError("channel has no events: cannot estimate its delay")
    x = clock.relative_coordinate(t)
    z = np.exp(2j * np.pi * (x - np.floor(x))).mean()
    frac = np.angle(z) / (2 * np.pi)
    frac = frac - np.floor(frac + 0.5)  # [-0.5, 0.5)
    return float(frac * clock.period_ps)
