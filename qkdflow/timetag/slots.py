"""Slot assignment (tags -> CLICK_DTYPE events) and Alice/Bob slot-offset finding.

Slot assignment, in the order the physics imposes:

1. **Channel map.** Each detector channel is a (basis, bit) detector; one channel may be the sync; channels
   listed in ``ignore`` are counted and dropped; any other channel is a configuration error.
2. **Dead time, per channel** — non-paralysable ("type I") model: after a *registered* detection the
   channel ignores everything for ``dead_time_ps`` (J. W. Müller, Nucl. Instrum. Methods 112, 47 (1973)).
   Applied before gating, because an out-of-window detection still blinds the detector.
3. **Slot and gate.** The clock gives the slot coordinate of ``t - channel_delay_ps[ch]``; the nearest slot
   is the detection's slot and the remainder (ps, in [-T/2, T/2)) its arrival offset. Detections whose offset
   is outside the detection window ``[window_lo_ps, window_hi_ps)`` are counted and dropped.
4. **Merge.** Detections in the same slot become one click with all their detector bits in ``mask`` (bit
   ``2*basis + bit``, see :mod:`qkdflow.streams`); ``basis`` and ``time_ps`` are those of the earliest
   detection in the slot. Squashing of double clicks is left to sifting.

Offset finding: :func:`find_slot_offset` cross-correlates Bob's clicks with Alice's per-slot record
(e.g. intensity class or expected mean photon number) by FFT and returns the integer shift with a robust
z-score of the peak (the approach of qcrypto's ``pfind``, done on slot indices instead of time bins).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from qkdflow.streams import CLICK_DTYPE
from qkdflow.timetag.clock import ClockError, ClockModel, clock_from_sync
from qkdflow.timetag.common import as_tags


@dataclass(frozen=True)
class ChannelMap:
    """Which channel is which detector. ``detectors``: channel -> (basis, bit), basis 0=Z 1=X, bit 0/1."""

    detectors: Mapping[int, tuple[int, int]]
    sync_channel: int | None = None
    ignore: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if not self.detectors:
            raise ValueError("detectors: channel map needs at least one detector channel")
        for ch, bb in self.detectors.items():
            if len(bb) != 2 or bb[0] not in (0, 1) or bb[1] not in (0, 1):
                raise ValueError(f"detectors[{ch}]: expected (basis, bit) with basis and bit in {{0, 1}}, got {bb}")
        if self.sync_channel is not None and self.sync_channel in self.detectors:
            raise ValueError(f"sync_channel: channel {self.sync_channel} is also mapped as a detector")
        object.__setattr__(self, "ignore", frozenset(self.ignore))
        clash = self.ignore & (set(self.detectors) | {self.sync_channel})
        if clash:
            raise ValueError(f"ignore: channels {sorted(clash)} are also detectors or the sync channel")


@dataclass
class SlotStats:
    """Accounting of slot assignment. Every input tag lands in exactly one of n_sync, n_ignored, n_dead_time,
    n_outside_window, n_detections; several detections of one slot make one click."""

    n_tags: int = 0
    n_sync: int = 0
    n_ignored: int = 0
    n_dead_time: int = 0                      # detections inside a channel's dead time
    n_outside_window: int = 0                 # detections outside the detection window
    outside_window_by_channel: dict[int, int] = field(default_factory=dict)
    n_detections: int = 0                     # detections that became (part of) a click
    n_clicks: int = 0                         # clicks emitted (slots with >= 1 detection)
    n_multi_detector_clicks: int = 0          # clicks with >= 2 detector bits set (double clicks)
    n_cross_basis_clicks: int = 0             # clicks with detectors of both bases


def _per_channel(ch: np.ndarray, table: Mapping[int, float], default: float) -> np.ndarray:
    """Look up a per-channel value for every tag (vectorised; channels are few)."""
    out = np.full(ch.size, default, np.float64)
    for c, v in table.items():
        if v != default:
            out[ch == c] = v
    return out


def apply_dead_time(time_ps: np.ndarray, dead_time_ps: float) -> np.ndarray:
    """Keep-mask of one channel's sorted times under a non-paralysable dead time.

    A detection is kept iff it is at least ``dead_time_ps`` after the previous *kept* one. A detection whose
    gap to its immediate predecessor is >= dead time is always kept, so only runs of close detections need
    the greedy chain, which is followed for all runs at once (loop over chain depth, not over detections).
    """
    n = time_ps.size
    keep = np.ones(n, bool)
    if n < 2 or dead_time_ps <= 0:
        return keep
    close = np.diff(time_ps) < dead_time_ps          # close[i]: tag i+1 within dead time of tag i
    if not close.any():
        return keep
    keep[1:] = ~close
    # next candidate after a kept tag i: first tag at or after t_i + dead
    nxt = np.searchsorted(time_ps, time_ps + dead_time_ps, side="left")
    # run starts: kept tags followed by a close tag
    cur = np.flatnonzero(keep[:-1] & close)
    run_end = np.searchsorted(np.flatnonzero(~np.concatenate([close, [False]])), cur)  # index into run ends
    ends = np.flatnonzero(~np.concatenate([close, [False]]))[run_end]                  # last tag of each run
    while cur.size:
        cur = nxt[cur]
        inside = cur <= ends
        cur, ends = cur[inside], ends[inside]
        keep[cur] = True
    return keep


def _channel_codes(ch: np.ndarray, channel_map: ChannelMap) -> np.ndarray:
    """Per-tag code from a channel lookup table: detector bit 1<<(2*basis+bit) (1..8), sync 16, ignore 32.

    Raises ValueError on channels the map does not know.
    """
    table = {int(c): 1 << (2 * b + v) for c, (b, v) in channel_map.detectors.items()}
    if channel_map.sync_channel is not None:
        table[int(channel_map.sync_channel)] = 16
    table.update({int(c): 32 for c in channel_map.ignore})
    if ch.size == 0:
        return np.zeros(0, np.uint8)
    cmin, cmax = int(ch.min()), int(ch.max())
    if cmax - cmin < (1 << 20):
        lut = np.zeros(cmax - cmin + 1, np.uint8)
        for c, v in table.items():
            if cmin <= c <= cmax:
                lut[c - cmin] = v
        code = lut[ch - cmin]
    else:  # sparse channel numbers: a few comparisons
        code = np.zeros(ch.size, np.uint8)
        for c, v in table.items():
            code[ch == c] = v
    if (code == 0).any():
        bad = np.unique(ch[code == 0])
        raise ValueError(f"channel_map: tags on unmapped channel(s) {bad.tolist()[:10]} "
                         f"(map them, or list them in ignore)")
    return code


def _dead_time_table(dead_time_ps: float | Mapping[int, float], channel_map: ChannelMap) -> dict[int, float]:
    if isinstance(dead_time_ps, Mapping):
        dead = {int(c): float(v) for c, v in dead_time_ps.items()}
    else:
        dead = {int(c): float(dead_time_ps) for c in channel_map.detectors}
    if any(not v >= 0 for v in dead.values()):
        raise ValueError("dead_time_ps: must be >= 0")
    return dead


def _apply_dead_times(t: np.ndarray, ch: np.ndarray, dead: dict[int, float],
                      last_kept: dict[int, int] | None = None) -> np.ndarray:
    """Keep-mask over all detector tags; ``last_kept`` (channel -> time) carries state across chunks."""
    keep = np.ones(t.size, bool)
    for c, d in dead.items():
        if d <= 0:
            continue
        sel = np.flatnonzero(ch == c)
        if sel.size == 0:
            continue
        tc = t[sel]
        if last_kept is not None and c in last_kept:
            k = apply_dead_time(np.concatenate([[last_kept[c]], tc]), d)[1:]
        else:
            k = apply_dead_time(tc, d)
        keep[sel] = k
        if last_kept is not None and k.any():
            last_kept[c] = int(tc[np.flatnonzero(k)[-1]])
    return keep


def _slots_gate(t: np.ndarray, ch: np.ndarray, clock: ClockModel, lo: float, hi: float,
                channel_delay_ps: Mapping[int, float] | None, stats: SlotStats) -> tuple[np.ndarray, np.ndarray]:
    """Slot of each detection and its in-window mask; counts out-of-window detections into ``stats``."""
    if channel_delay_ps:
        t_corr = t - np.rint(_per_channel(ch, channel_delay_ps, 0.0)).astype(np.int64)
    else:
        t_corr = t
    slot, phase = clock.slot_and_phase(t_corr)
    offset_ps = phase * clock.period_ps
    inwin = (offset_ps >= lo) & (offset_ps < hi)
    n_out = int(inwin.size - np.count_nonzero(inwin))
    if n_out:
        stats.n_outside_window += n_out
        cu, cn = np.unique(ch[~inwin], return_counts=True)
        for c, n in zip(cu.tolist(), cn.tolist()):
            stats.outside_window_by_channel[c] = stats.outside_window_by_channel.get(c, 0) + n
    return slot, inwin


def _merge_clicks(t: np.ndarray, slot: np.ndarray, code: np.ndarray, stats: SlotStats) -> np.ndarray:
    """One CLICK_DTYPE event per slot: OR of detector bits; basis and time of the earliest detection."""
    stats.n_detections += int(t.size)
    if slot.size == 0:
        return np.empty(0, CLICK_DTYPE)
    if (slot[1:] < slot[:-1]).any():   # channel delays can swap neighbouring slots
        order = np.lexsort((t, slot))
        t, slot, code = t[order], slot[order], code[order]
    starts = np.flatnonzero(np.concatenate([[True], slot[1:] != slot[:-1]]))
    clicks = np.empty(starts.size, CLICK_DTYPE)
    clicks["slot"] = slot[starts]
    clicks["basis"] = code[starts] >= 4          # bits 2, 3 are the X-basis detectors
    clicks["time_ps"] = t[starts]
    mask = np.bitwise_or.reduceat(code, starts)
    clicks["mask"] = mask
    return clicks


def _click_stats(clicks: np.ndarray, stats: SlotStats) -> None:
    mask = clicks["mask"]
    z, x = (mask & 0b0011) != 0, (mask & 0b1100) != 0
    multi = (mask & (mask - 1)) != 0             # more than one bit set
    stats.n_clicks += int(clicks.size)
    stats.n_multi_detector_clicks += int(np.count_nonzero(multi))
    stats.n_cross_basis_clicks += int(np.count_nonzero(z & x))


def _window(window_ps: tuple[float, float] | None, period: float) -> tuple[float, float]:
    lo, hi = (-period / 2, period / 2) if window_ps is None else (float(window_ps[0]), float(window_ps[1]))
    if not (-period / 2 - 1e-9 <= lo < hi <= period / 2 + 1e-9):
        raise ValueError(f"window_ps: need -T/2 <= lo < hi <= T/2 with T = {period:.3f} ps, got ({lo}, {hi})")
    return lo, hi


def assign_slots(
    tags: np.ndarray,
    clock: ClockModel,
    channel_map: ChannelMap,
    window_ps: tuple[float, float] | None = None,
    dead_time_ps: float | Mapping[int, float] = 0.0,
    channel_delay_ps: Mapping[int, float] | None = None,
) -> tuple[np.ndarray, SlotStats]:
    """Turn time-sorted tags into CLICK_DTYPE clicks (sorted by slot) and the accounting of dropped tags.

    ``window_ps`` = (lo, hi): accepted arrival offsets relative to the expected arrival, within
    [-T/2, T/2] with T the clock period (default: the whole slot). ``dead_time_ps``: one value for all
    detector channels or a per-channel mapping (missing channels: 0). ``channel_delay_ps``: expected arrival
    of each channel relative to the clock's slot times (see :func:`~qkdflow.timetag.clock.estimate_channel_delay`).
    """
    tags = as_tags(tags)
    lo, hi = _window(window_ps, clock.period_ps)
    dead = _dead_time_table(dead_time_ps, channel_map)
    stats = SlotStats(n_tags=int(tags.size))
    t = np.ascontiguousarray(tags["time_ps"])
    ch = np.ascontiguousarray(tags["channel"])
    code = _channel_codes(ch, channel_map)
    counts = np.bincount(code, minlength=33)
    stats.n_sync, stats.n_ignored = int(counts[16]), int(counts[32])
    if stats.n_sync or stats.n_ignored:
        det = np.flatnonzero(code < 16)
        t, ch, code = t[det], ch[det], code[det]
    keep = _apply_dead_times(t, ch, dead)
    stats.n_dead_time = int(keep.size - np.count_nonzero(keep))
    if stats.n_dead_time:
        t, ch, code = t[keep], ch[keep], code[keep]
    slot, inwin = _slots_gate(t, ch, clock, lo, hi, channel_delay_ps, stats)
    if not inwin.all():
        t, slot, code = t[inwin], slot[inwin], code[inwin]
    clicks = _merge_clicks(t, slot, code, stats)
    _click_stats(clicks, stats)
    return clicks, stats


class StreamingSlotAssigner:
    """Chunk-by-chunk slot assignment with a sync-channel clock, for recordings too long to hold in memory.

    :meth:`push` time-sorted TAG_DTYPE chunks; each returns the clicks that are final so far (sorted by slot,
    continuing across calls) plus cumulative :attr:`stats`. Every ``epoch_syncs`` sync events the clock is
    fitted (:func:`~qkdflow.timetag.clock.clock_from_sync`) over that epoch, anchored on the previous epoch's
    last sync event so slot numbering is continuous; detections up to the epoch's last sync are assigned with
    it, later ones wait for the next epoch. :meth:`finish` fits the remainder and extrapolates to the end.
    Dead time state is carried per channel; a slot split across two calls is merged (the last click of each
    call is held back until the next one).
    """

    def __init__(
        self,
        channel_map: ChannelMap,
        slot_period_ps: float,
        slots_per_sync: int = 1,
        window_ps: tuple[float, float] | None = None,
        dead_time_ps: float | Mapping[int, float] = 0.0,
        channel_delay_ps: Mapping[int, float] | None = None,
        epoch_syncs: int = 1 << 16,
        knot_spacing_slots: int = 1 << 20,
        first_sync_slot: int = 0,
        tolerance: float = 0.25,
    ) -> None:
        if channel_map.sync_channel is None:
            raise ValueError("channel_map: StreamingSlotAssigner needs a sync_channel")
        if int(epoch_syncs) < 16:
            raise ValueError(f"epoch_syncs: must be >= 16, got {epoch_syncs}")
        self.channel_map = channel_map
        self.slot_period_ps = float(slot_period_ps)
        self.slots_per_sync = int(slots_per_sync)
        self.lo, self.hi = _window(window_ps, self.slot_period_ps)
        self.dead = _dead_time_table(dead_time_ps, channel_map)
        self.channel_delay_ps = dict(channel_delay_ps or {})
        self.epoch_syncs = int(epoch_syncs)
        self.knot_spacing_slots = int(knot_spacing_slots)
        self.first_sync_slot = int(first_sync_slot)
        self.tolerance = float(tolerance)
        self.stats = SlotStats()
        self.clock: ClockModel | None = None        # model of the latest epoch
        self._sync: list[np.ndarray] = []
        self._n_sync = 0
        self._anchor: tuple[int, int] | None = None  # (time, slot) of the last sync of the previous epoch
        self._det_t = np.empty(0, np.int64)
        self._det_ch = np.empty(0, np.int32)
        self._det_code = np.empty(0, np.uint8)
        self._last_kept: dict[int, int] = {}
        self._held: np.ndarray = np.empty(0, CLICK_DTYPE)
        self._last_time: int | None = None

    def push(self, tags: np.ndarray) -> np.ndarray:
        """Add a time-sorted chunk; return clicks that are final."""
        tags = as_tags(tags)
        if tags.size == 0:
            return np.empty(0, CLICK_DTYPE)
        t = np.ascontiguousarray(tags["time_ps"])
        if (self._last_time is not None and t[0] < self._last_time) or (t[1:] < t[:-1]).any():
            raise ValueError("tags: time_ps must be non-decreasing across pushes")
        self._last_time = int(t[-1])
        ch = np.ascontiguousarray(tags["channel"])
        code = _channel_codes(ch, self.channel_map)
        counts = np.bincount(code, minlength=33)
        self.stats.n_tags += int(tags.size)
        self.stats.n_sync += int(counts[16])
        self.stats.n_ignored += int(counts[32])
        if counts[16]:
            self._sync.append(t[code == 16])
            self._n_sync += int(counts[16])
        det = np.flatnonzero(code < 16)
        t, ch, code = t[det], ch[det], code[det]
        keep = _apply_dead_times(t, ch, self.dead, self._last_kept)
        n_dead = int(keep.size - np.count_nonzero(keep))
        if n_dead:
            self.stats.n_dead_time += n_dead
            t, ch, code = t[keep], ch[keep], code[keep]
        self._det_t = np.concatenate([self._det_t, t])
        self._det_ch = np.concatenate([self._det_ch, ch])
        self._det_code = np.concatenate([self._det_code, code])
        out = []
        while self._n_sync >= self.epoch_syncs:
            out.append(self._epoch(final=False))
        return self._emit(out, final=False)

    def finish(self) -> np.ndarray:
        """Fit the last epoch, assign every remaining detection, return the last clicks."""
        if self._n_sync + (self._anchor is not None) >= 2:
            parts = [self._epoch(final=True)]
        elif self._det_t.size:
            if self.clock is None:
                raise ClockError("sync channel has no events (or only one): cannot recover the clock")
            parts = [self._assign(self.clock, np.ones(self._det_t.size, bool))]
        else:
            parts = []
        return self._emit(parts, final=True)

    # -- internals ------------------------------------------------------------------------------------
    def _epoch(self, final: bool) -> np.ndarray:
        sync = np.concatenate(self._sync) if self._sync else np.empty(0, np.int64)
        n_use = sync.size if final else self.epoch_syncs
        use, rest = sync[:n_use], sync[n_use:]
        if self._anchor is not None:
            use = np.concatenate([[self._anchor[0]], use])
        clock = clock_from_sync(use, self.slot_period_ps, self.slots_per_sync, self.knot_spacing_slots, 0,
                                self.tolerance)
        # renumber so the anchor keeps its slot (robust even if the fit dropped the anchor as spurious)
        t_ref, s_ref = (self._anchor if self._anchor is not None else (int(use[0]), self.first_sync_slot))
        clock.slot_ref += s_ref - int(clock.slot_and_phase(np.array([t_ref]))[0][0])
        self.clock = clock
        t_last = int(use[-1])
        s_last = int(clock.slot_and_phase(np.array([t_last]))[0][0])
        self._anchor = (t_last, s_last)
        self._sync = [rest] if rest.size else []
        self._n_sync = int(rest.size)
        if final:
            return self._assign(clock, np.ones(self._det_t.size, bool))
        # final now: detections whose slot (by this epoch's clock) precedes the anchor's slot. Only those up to
        # t_last + max delay + one period can qualify, so the work per epoch stays bounded.
        margin = max((abs(v) for v in self.channel_delay_ps.values()), default=0.0) + 2 * clock.period_ps
        n_cand = int(np.searchsorted(self._det_t, t_last + int(np.ceil(margin)), side="right"))
        ready = np.zeros(self._det_t.size, bool)
        if n_cand:
            stats_scratch = SlotStats()
            slot, _ = _slots_gate(self._det_t[:n_cand], self._det_ch[:n_cand], clock, self.lo, self.hi,
                                  self.channel_delay_ps, stats_scratch)
            ready[:n_cand] = slot < s_last
        return self._assign(clock, ready)

    def _assign(self, clock: ClockModel, ready: np.ndarray) -> np.ndarray:
        t, ch, code = self._det_t[ready], self._det_ch[ready], self._det_code[ready]
        rest = ~ready
        self._det_t, self._det_ch, self._det_code = self._det_t[rest], self._det_ch[rest], self._det_code[rest]
        slot, inwin = _slots_gate(t, ch, clock, self.lo, self.hi, self.channel_delay_ps, self.stats)
        if not inwin.all():
            t, slot, code = t[inwin], slot[inwin], code[inwin]
        return _merge_clicks(t, slot, code, self.stats)

    def _emit(self, parts: list[np.ndarray], final: bool) -> np.ndarray:
        """Join new clicks with the held-back one, merge a slot split across epochs, hold back the last."""
        clicks = np.concatenate([self._held] + parts) if parts else self._held
        if clicks.size > 1:
            sl = clicks["slot"]
            if (sl[1:] < sl[:-1]).any():
                raise ClockError("clock epochs disagree by more than a slot at an epoch boundary")
            if (sl[1:] == sl[:-1]).any():
                clicks = clicks[np.lexsort((clicks["time_ps"], sl))]   # earliest detection of a slot first
                sl = clicks["slot"]
                starts = np.flatnonzero(np.concatenate([[True], sl[1:] != sl[:-1]]))
                mask = np.bitwise_or.reduceat(clicks["mask"], starts)
                clicks = clicks[starts]
                clicks["mask"] = mask
        if final:
            self._held = np.empty(0, CLICK_DTYPE)
            out = clicks
        else:
            self._held = clicks[-1:].copy()
            out = clicks[:-1]
        _click_stats(out, self.stats)
        return out


# ------------------------------------------------------------------------------------------ offset
@dataclass
class OffsetResult:
    """``alice_slot = bob_slot + offset_slots``; ``z_score``: peak height above the median of all candidate
    shifts in robust standard deviations (1.4826 MAD); ``second_z``: same for the best other shift."""

    offset_slots: int
    z_score: float
    second_z: float
    n_clicks: int
    n_candidates: int


def find_slot_offset(
    bob_slots: np.ndarray,
    alice_values: np.ndarray,
    alice_start_slot: int = 0,
    bob_weights: np.ndarray | None = None,
    offset_range: tuple[int, int] | None = None,
) -> OffsetResult:
    """Find the integer slot offset between Bob's clicks and Alice's per-slot record by FFT cross-correlation.

    ``alice_values[k]`` describes Alice's slot ``alice_start_slot + k`` (e.g. mean photon number of the
    chosen intensity, or +-1 for her bit in the basis Bob's click was measured in when ``bob_weights`` are
    Bob's +-1 results). The correlation ``C(d) = sum_j w_j (a[s_j + d] - mean(a))`` is evaluated for every
    shift that puts all clicks inside Alice's record (optionally restricted to ``offset_range`` = [lo, hi]).
    Cost: one real FFT of length ~ (span of Bob's slots + length of Alice's record).
    """
    s = np.asarray(bob_slots, np.int64)
    a = np.asarray(alice_values, np.float64)
    if s.size == 0:
        raise ValueError("bob_slots: no clicks to correlate")
    if a.ndim != 1 or a.size == 0:
        raise ValueError("alice_values: need a non-empty 1-D array")
    w = np.ones(s.size) if bob_weights is None else np.asarray(bob_weights, np.float64)
    if w.shape != s.shape:
        raise ValueError(f"bob_weights: shape {w.shape} does not match bob_slots {s.shape}")
    b0 = int(s.min())
    lb = int(s.max()) - b0 + 1
    la = a.size
    if lb > la:
        raise ValueError(f"alice_values: record of {la} slots is shorter than the span of Bob's clicks ({lb} slots)")
    bvec = np.bincount(s - b0, w, lb)
    av = a - a.mean()
    n = 1 << int(np.ceil(np.log2(la + lb)))
    corr = np.fft.irfft(np.conj(np.fft.rfft(bvec, n)) * np.fft.rfft(av, n), n)
    # corr[e] = sum_k bvec[k] av[k + e]; full overlap for e in [0, la - lb]; offset d = e + alice_start - b0
    e_lo, e_hi = 0, la - lb
    if offset_range is not None:
        e_lo = max(e_lo, int(offset_range[0]) - int(alice_start_slot) + b0)
        e_hi = min(e_hi, int(offset_range[1]) - int(alice_start_slot) + b0)
        if e_lo > e_hi:
            raise ValueError(f"offset_range: {offset_range} leaves no shift with all clicks inside Alice's record")
    c = corr[e_lo:e_hi + 1]
    k = int(np.argmax(c))
    med = float(np.median(c))
    mad = float(np.median(np.abs(c - med))) * 1.4826
    scale = mad if mad > 0 else float(np.std(c)) or 1.0
    z = (float(c[k]) - med) / scale
    others = c.copy()
    others[max(0, k - 1):k + 2] = -np.inf
    second = (float(others.max()) - med) / scale if others.size > 3 else float("nan")
    return OffsetResult(offset_slots=int(e_lo + k + int(alice_start_slot) - b0), z_score=z, second_z=second,
                        n_clicks=int(s.size), n_candidates=int(c.size))
