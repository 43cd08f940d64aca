"""Slot assigner (DU): time tags -> clicks keyed by Alice's slot index, in frames aligned with the preparation stream.

Pipeline (library: ``qkdflow.timetag``; physics of each step documented in ``qkdflow.timetag.slots``):
  1. Channel map: ``channel_map`` {channel: [basis, bit]}, ``sync_channel``, ``ignore_channels``. A tag on any other
     channel stops the run (no silent drops).
  2. Clock (``clock``):
       * ``sync`` — the sync channel fires every ``slots_per_sync`` slots; linear-spline clock fitted per epoch of
         ``epoch_syncs`` syncs (``StreamingSlotAssigner``: tracks drift, streams with bounded memory). Bob's slot 0 is
         the first sync event.
       * ``nominal`` — the time axis is already locked to the laser clock (PTU T3 read with the exact sync period,
         or a disciplined tagger): slot coordinate = time_ps x rate_hz / 1e12. Implemented with the same streaming
         assigner fed with exact virtual sync events every 4096 slots, so dead time and slot merging are identical.
         Bob's slot = round(time / period).
       * ``detections`` — no sync: the detections' own periodicity (``clock_from_detections``, periodogram +
         phase tracking). Batch: all tags are held until the end (at most ``max_buffer_tags``).
  3. Dead time (``dead_time_ps``, non-paralysable per channel), gate window (``window_ps`` = [lo, hi] around the
     expected arrival, default the whole slot), ``channel_delay_ps`` per channel.
  4. Alice/Bob slot offset (``alice_slot = bob_slot + offset``): the configured ``offset_slots``, or found by FFT
     cross-correlation (``find_slot_offset``) of Bob's single-detector clicks (weight +1 for bit 0, -1 for bit 1)
     against Alice's bits (+1/-1) from ``alice_record``, using Bob's clicks in his first ``offset_search_slots``
     slots and shifts within +-``max_offset_slots``. Matched-basis clicks agree with Alice's bit with probability
     1 - QBER, the others are uncorrelated, so the true shift stands out; the robust z-score of the peak must reach
     ``min_offset_z`` or the run stops.
  5. Frames: one CLICK_DTYPE frame per slot range ``[k x slots_per_frame, (k+1) x slots_per_frame)`` clipped to
     ``[0, total_slots)`` (``total_slots`` = rows of ``alice_record`` unless given) — exactly the frames of a
     ``preparation`` block with ``record_file: <alice_record>`` and the same ``slots_per_frame``, so blocks joining
     prep and clicks see aligned frames. Clicks mapping outside ``[0, total_slots)`` are counted
     (``clicks_outside_record``) and dropped. Click ``time_ps`` is Bob's tag time (his time base).

Input frames are tags over tag-index ranges (``tag_source``); several output frames can become complete on one input
frame, so ``work`` and ``end`` return the list of frames completed by that call.
Counters: tags_in, sync_events, detections, clicks_out, outside_window, dead_time_drops, ignored_tags,
clicks_outside_record, frames_out; report: clock_period_ps, drift_ppm, offset_slots, offset_z, offset_second_z.
"""
from __future__ import annotations


import numpy as np
import scipy.linalg  # noqa: F401  imported here, in the main thread: qkdflow.timetag.clock imports it lazily, and
# CPython 3.11.7 can fail compiling (dataclasses' exec) in two threads at once ('AST constructor recursion depth')

from blocks.tag_recorder import parse_channel_map
from qkdflow.runtime.block import Block, BlockError, Frame, Stream
from qkdflow.prng import load_npy
from qkdflow.runtime.params import Param
from qkdflow.streams import CLICK_DTYPE, PREP_DTYPE, TAG_DTYPE
from qkdflow.timetag import (
    ChannelMap,
    ClockError,
    StreamingSlotAssigner,
    assign_slots,
    clock_from_detections,
    find_slot_offset,
)

VIRTUAL_SYNC_CHANNEL = -(1 << 31)   # never a real channel (Swabian falling edges are small negatives)
VIRTUAL_SYNC_SLOTS = 4096


def _channel_map_check(v: dict) -> str | None:
    try:
        parse_channel_map(v)
    except ValueError as e:
        return str(e).removeprefix("channel_map: ").removeprefix("channel_map")
    return None


def _dead_time_check(v) -> str | None:
    items = v.items() if isinstance(v, dict) else [(None, v)]
    for k, x in items:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0:
            return f"{'' if k is None else f'[{k}] '}must be a number >= 0 (ps), got {x!r}"
        if k is not None:
            try:
                int(k)
            except (TypeError, ValueError):
                return f"channel {k!r} is not an integer"
    return None


class SlotAssigner(Block):
    """Time tags -> clicks in Alice's slot numbering (clock recovery, gating, dead time, offset by cross-correlation)."""

    category = "detector"
    params = (
        Param("channel_map", dict, {1: [0, 0], 2: [0, 1], 3: [1, 0], 4: [1, 1]},
              doc="{channel: [basis, bit]} of the detectors", check=_channel_map_check),
        Param("sync_channel", int, 0, doc="sync channel (clock: sync); other modes ignore its tags"),
        Param("ignore_channels", list, [], doc="channels counted and dropped"),
        Param("clock", str, "sync", doc="clock recovery", choices=("sync", "nominal", "detections")),
        Param("slots_per_sync", int, 16, unit="slots", doc="slots between sync events", low=1),
        Param("epoch_syncs", int, 1 << 16, doc="sync events per clock fit (clock: sync)", low=16),
        Param("knot_spacing_slots", int, 1 << 20, unit="slots", doc="clock spline knot spacing", low=1),
        Param("sync_tolerance", float, 0.25, doc="max sync deviation, in slots per sync gap", low=0.0, high=0.5,
              low_open=True, high_open=True),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="slot rate (from clock.rate_hz)", low=0.0, low_open=True),
        Param("window_ps", list, None, unit="ps", doc="[lo, hi] gate window around the expected arrival"),
        Param("dead_time_ps", "any", 0.0, unit="ps", doc="non-paralysable dead time: one value for every detector "
              "channel, or {channel: ps}", check=_dead_time_check),
        Param("channel_delay_ps", dict, {}, unit="ps", doc="{channel: arrival delay vs the clock}"),
        Param("alice_record", str, None, doc="Alice's record (.npy PREP_DTYPE): offset search and total_slots"),
        Param("offset_slots", int, None, unit="slots", doc="known offset alice_slot - bob_slot (skips the search)"),
        Param("max_offset_slots", int, 1 << 20, unit="slots", doc="offset search range +-", low=0),
        Param("offset_search_slots", int, 1 << 21, unit="slots", doc="Bob's slots used for the search", low=1),
        Param("min_offset_z", float, 8.0, doc="required robust z-score of the correlation peak", low=0.0),
        Param("slots_per_frame", int, 1 << 20, unit="slots", doc="output frame size (= the preparation's)", low=1),
        Param("total_slots", int, None, unit="slots", doc="slots in Alice's numbering (default: record length)",
              low=1),
        Param("require_all_channels", bool, True, doc="fail when a mapped channel has no tags at all"),
        Param("max_buffer_tags", int, 1 << 23, doc="clock: detections holds at most this many tags", low=64),
    )
    inputs = (Stream("in", TAG_DTYPE, doc="time tags (frames over tag indices)"),)
    outputs = (Stream("out", CLICK_DTYPE, doc="clicks, frames aligned with the preparation's"),)

    # -- configuration ------------------------------------------------------------------------------------
    def _cmap(self) -> dict[int, tuple[int, int]]:
        return parse_channel_map(self.channel_map)

    def validate(self) -> list[str]:
        errs = []
        cmap = self._cmap()
        if self.clock == "sync" and self.sync_channel in cmap:
            errs.append(f"sync_channel: channel {self.sync_channel} is also a detector in channel_map")
        try:
            ign = [int(c) for c in self.ignore_channels]
            if set(ign) & set(cmap):
                errs.append(f"ignore_channels: {sorted(set(ign) & set(cmap))} are detector channels")
        except (TypeError, ValueError):
            errs.append("ignore_channels: must be a list of integers")
        if self.window_ps is not None:
            T = 1e12 / self.rate_hz
            w = self.window_ps
            if (len(w) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w)
                    or not -T / 2 <= w[0] < w[1] <= T / 2):
                errs.append(f"window_ps: need [lo, hi] with -T/2 <= lo < hi <= T/2 (T = {T:g} ps), got {w!r}")
        for k, v in self.channel_delay_ps.items():
            try:
                int(k), float(v)
            except (TypeError, ValueError):
                errs.append(f"channel_delay_ps: {k!r}: {v!r} is not channel: ps")
        if self.alice_record is not None:
            try:
                rec = load_npy(self.alice_record)
                if rec.dtype != PREP_DTYPE or rec.ndim != 1 or rec.size == 0:
                    errs.append(f"alice_record: {self.alice_record}: need a non-empty 1-D PREP_DTYPE array, "
                                f"got {rec.dtype} {rec.shape}")
                elif self.total_slots is not None and self.total_slots > rec.size:
                    errs.append(f"total_slots: {self.total_slots} exceeds the {rec.size} slots of alice_record")
            except (OSError, ValueError) as e:
                errs.append(f"alice_record: cannot read {self.alice_record!r}: {e}")
        else:
            if self.offset_slots is None:
                errs.append("alice_record: required unless offset_slots is given (the offset search needs it)")
            if self.total_slots is None:
                errs.append("total_slots: required without alice_record")
        return errs

    def start(self) -> None:
        self._period_ps = 1e12 / self.rate_hz
        cmap = self._cmap()
        self._channels = sorted(cmap)
        ignore = {int(c) for c in self.ignore_channels}
        delays = {int(k): float(v) for k, v in self.channel_delay_ps.items()}
        window = None if self.window_ps is None else (float(self.window_ps[0]), float(self.window_ps[1]))
        if self.clock == "sync":
            chmap = ChannelMap(cmap, int(self.sync_channel), frozenset(ignore))
        else:
            if self.sync_channel not in cmap:
                ignore.add(int(self.sync_channel))
            chmap = ChannelMap(cmap, VIRTUAL_SYNC_CHANNEL if self.clock == "nominal" else None, frozenset(ignore))
        self._chmap, self._window, self._delays = chmap, window, delays
        d = self.dead_time_ps
        self._dead = {int(k): float(x) for k, x in d.items()} if isinstance(d, dict) else float(d)
        self._streaming: StreamingSlotAssigner | None = None
        if self.clock == "sync":
            self._streaming = self._make_streaming(self.slots_per_sync, 0)
        self._virtual_next: int | None = None         # next virtual sync index (clock: nominal)
        self._buffer: list[np.ndarray] = []             # clock: detections
        self._buffered = 0
        self._rec = None if self.alice_record is None else load_npy(self.alice_record)
        self._total = int(self.total_slots if self.total_slots is not None else self._rec.shape[0])
        self._offset = self.offset_slots
        self._offset_result = None
        self._search: list[np.ndarray] = []             # Bob-numbered clicks waiting for the offset
        self._pending: list[np.ndarray] = []            # Alice-numbered clicks not yet framed
        self._final_upto = None                         # all future clicks have slot > this (Alice numbering)
        self._next_frame = 0
        self._tags_per_channel: dict[int, int] = {}
        self._sync_first: int | None = None            # first and last sync (or virtual sync) time: mean period
        self._sync_last: int | None = None
        for k in ("tags_in", "sync_events", "detections", "clicks_out", "outside_window", "dead_time_drops",
                  "ignored_tags", "clicks_outside_record", "frames_out"):
            self.counters[k] = 0

    def _make_streaming(self, slots_per_sync: int, first_sync_slot: int) -> StreamingSlotAssigner:
        return StreamingSlotAssigner(
            self._chmap, self._period_ps, slots_per_sync, self._window, self._dead, self._delays,
            epoch_syncs=self.epoch_syncs, knot_spacing_slots=self.knot_spacing_slots,
            first_sync_slot=first_sync_slot, tolerance=self.sync_tolerance)

    # -- tags in -------------------------------------------------------------------------------------------
    def _virtual_syncs(self, t_last: int, t_first: int | None) -> np.ndarray:
        """Exact sync events every VIRTUAL_SYNC_SLOTS slots of the nominal clock up to ``t_last``."""
        P = self._period_ps * VIRTUAL_SYNC_SLOTS
        if self._virtual_next is None:
            # start one period before the first tag so every tag lies after the first sync
            self._virtual_next = max(0, int(np.floor(t_first / P)) - 1)
            self._streaming = self._make_streaming(VIRTUAL_SYNC_SLOTS, self._virtual_next * VIRTUAL_SYNC_SLOTS)
        k1 = int(np.floor(t_last / P))
        k = np.arange(self._virtual_next, k1 + 1, dtype=np.int64)
        self._virtual_next = max(self._virtual_next, k1 + 1)
        out = np.empty(k.size, TAG_DTYPE)
        out["time_ps"] = np.rint(k * P).astype(np.int64)
        out["channel"] = VIRTUAL_SYNC_CHANNEL
        return out

    def _count_channels(self, tags: np.ndarray) -> None:
        ch, n = np.unique(tags["channel"], return_counts=True)
        for c, k in zip(ch.tolist(), n.tolist()):
            self._tags_per_channel[c] = self._tags_per_channel.get(c, 0) + k

    def work(self, ins):
        tags = ins["in"].data
        if tags.size == 0:
            return None
        self.counters["tags_in"] += int(tags.size)
        self._count_channels(tags)
        try:
            if self.clock == "detections":
                self._buffered += tags.size
                if self._buffered > self.max_buffer_tags:
                    raise BlockError(f"clock: detections holds all tags until the end; more than max_buffer_tags="
                                     f"{self.max_buffer_tags} arrived (use a sync channel, or raise it)")
                self._buffer.append(tags)
                return None
            if self.clock == "nominal":
                vs = self._virtual_syncs(int(tags["time_ps"][-1]), int(tags["time_ps"][0]))
                tags = np.concatenate([tags, vs])
                tags = tags[np.argsort(tags["time_ps"], kind="stable")]
            sync_sel = tags["channel"] == self._chmap.sync_channel
            if sync_sel.any():
                ts = tags["time_ps"][sync_sel]
                if self._sync_first is None:
                    self._sync_first = int(ts[0])
                self._sync_last = int(ts[-1])
            clicks = self._streaming.push(tags)
        except (ClockError, ValueError) as e:
            raise BlockError(self._where(ins["in"]) + str(e)) from None
        self._accept(clicks, final=False)
        self._flush(final=False)
        self._update_counters()
        return self._outbox()

    @staticmethod
    def _where(frame: Frame) -> str:
        src = frame.meta.get("tag_source")
        return f"{src}: tags [{frame.start}, {frame.stop}): " if src else f"tags [{frame.start}, {frame.stop}): "

    def end(self):
        try:
            if self.clock == "detections":
                clicks = self._detections_batch()
            else:
                if self._streaming is None:   # nominal clock, no tags at all
                    clicks = np.empty(0, CLICK_DTYPE)
                else:
                    clicks = self._streaming.finish()
        except (ClockError, ValueError) as e:
            if isinstance(e, ClockError) and self.clock == "sync" and self._streaming.stats.n_sync < 2:
                raise BlockError(f"sync channel {self.sync_channel}: {self._streaming.stats.n_sync} events in "
                                 f"{self.counters['tags_in']} tags: cannot recover the clock (check sync_channel, "
                                 f"or use clock: nominal / detections)") from None
            raise BlockError(str(e)) from None
        self._accept(clicks, final=True)
        self._check_channels()
        self._flush(final=True)
        return self._outbox()

    def _check_channels(self) -> None:
        if not self.require_all_channels or self.counters["tags_in"] == 0:
            return
        missing = [c for c in self._channels if self._tags_per_channel.get(c, 0) == 0]
        if missing:
            seen = sorted(self._tags_per_channel)
            raise BlockError(f"channel_map: detector channel(s) {missing} have no tags in the stream (channels "
                             f"seen: {seen[:12]}); fix channel_map or set require_all_channels: false")

    def _detections_batch(self) -> np.ndarray:
        if not self._buffer:
            return np.empty(0, CLICK_DTYPE)
        tags = np.concatenate(self._buffer)
        self._buffer = []
        det = np.isin(tags["channel"], self._channels)
        clock = clock_from_detections(tags["time_ps"][det], self._period_ps)
        self._detections_clock = clock
        window = self._window
        if window is not None:
            # the window was checked against the nominal period; the fitted one differs by the drift (ppm):
            # a bound at the nominal +-T/2 means "the whole slot" and is moved to the fitted +-T/2
            half = clock.period_ps / 2
            window = (max(window[0], -half), min(window[1], half))
        clicks, stats = assign_slots(tags, clock, self._chmap, window, self._dead, self._delays)
        self._batch_stats = stats
        return clicks

    # -- offset and framing -------------------------------------------------------------------------------------
    def _accept(self, bob: np.ndarray, final: bool) -> None:
        if self._offset is None:
            if bob.size:
                self._search.append(bob)
            have = sum(x.size for x in self._search)
            if not have:
                if final:
                    raise BlockError("no clicks at all: cannot find the offset to Alice's record")
                return
            s0 = int(self._search[0]["slot"][0])
            s1 = int(self._search[-1]["slot"][-1])
            if not final and s1 - s0 < self.offset_search_slots:
                return
            allc = np.concatenate(self._search)
            self._search = []
            self._find_offset(allc[allc["slot"] < s0 + self.offset_search_slots])
            bob = allc
        if bob.size == 0:
            return
        c = bob.copy()
        c["slot"] += self._offset
        inside = (c["slot"] >= 0) & (c["slot"] < self._total)
        n_out = int(c.size - np.count_nonzero(inside))
        if n_out:
            self.counters["clicks_outside_record"] += n_out
            c = c[inside]
        if c.size:
            self._pending.append(c)
        self._final_upto = int(bob["slot"][-1]) + self._offset

    def _find_offset(self, bob: np.ndarray) -> None:
        mask = bob["mask"].astype(np.int64) >> (2 * bob["basis"].astype(np.int64)) & 3
        single = (mask == 1) | (mask == 2)
        sl = bob["slot"][single]
        if sl.size == 0:
            raise BlockError("offset search: no single-detector clicks")
        w = np.where(mask[single] == 1, 1.0, -1.0)     # bit 0 -> +1, bit 1 -> -1
        lo_off, hi_off = -self.max_offset_slots, self.max_offset_slots
        a0 = max(0, int(sl.min()) + lo_off)
        a1 = min(self._total, int(sl.max()) + hi_off + 1)
        if a1 - a0 < int(sl.max()) - int(sl.min()) + 1:
            raise BlockError(f"offset search: Alice's record ({self._total} slots) cannot hold Bob's clicks "
                             f"(slots {int(sl.min())}..{int(sl.max())}) at any shift within +-{self.max_offset_slots}")
        alice = 1.0 - 2.0 * np.asarray(self._rec["bit"][a0:a1], np.float64)
        try:
            res = find_slot_offset(sl, alice, a0, w, (lo_off, hi_off))
        except ValueError as e:
            raise BlockError(f"offset search: {e}") from None
        self._offset_result = res
        if not res.z_score >= self.min_offset_z:
            raise BlockError(f"offset search: no clear correlation peak (z = {res.z_score:.1f} < min_offset_z = "
                             f"{self.min_offset_z:g}, next best z = {res.second_z:.1f}, {res.n_clicks} clicks): wrong "
                             f"record, channel map or clock, or raise max_offset_slots")
        self._offset = res.offset_slots
        self.log(f"offset alice_slot - bob_slot = {res.offset_slots} (z = {res.z_score:.1f}, next {res.second_z:.1f})")

    def _flush(self, final: bool) -> None:
        """Send every frame whose slot range is complete (all of them at the end)."""
        if self._offset is None:
            return
        limit = self._total if final else (-1 if self._final_upto is None else min(self._final_upto, self._total))
        spf = self.slots_per_frame
        frames = []
        pend = np.concatenate(self._pending) if self._pending else np.empty(0, CLICK_DTYPE)
        while self._next_frame < self._total:
            start = self._next_frame
            stop = min(start + spf, self._total)
            if not final and stop - 1 > limit:  # clicks up to slot `limit` are final
                break
            n = int(np.searchsorted(pend["slot"], stop, side="left"))
            frames.append(Frame(start, stop, pend[:n].copy(), meta={"rate_hz": self.rate_hz}))
            pend = pend[n:]
            self._next_frame = stop
        self._pending = [pend] if pend.size else []
        for f in frames:
            self._send(f)

    def _send(self, frame: Frame) -> None:
        self.counters["clicks_out"] += int(frame.data.size)
        self.counters["frames_out"] += 1
        self.__dict__.setdefault("sent_frames", []).append(frame)

    def _outbox(self):
        """Frames completed since the last call, returned from work/end as one list."""
        out = self.__dict__.pop("sent_frames", [])
        return {"out": out} if out else None

    # -- report --------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._update_counters()

    def _update_counters(self) -> None:
        st = self._streaming.stats if self._streaming is not None else getattr(self, "_batch_stats", None)
        if st is None:
            return
        self.counters["sync_events"] = st.n_sync
        if self.clock == "nominal":
            self.counters["sync_events"] = 0     # virtual syncs are not events
        self.counters["detections"] = st.n_detections
        self.counters["outside_window"] = st.n_outside_window
        self.counters["dead_time_drops"] = st.n_dead_time
        self.counters["ignored_tags"] = st.n_ignored

    def report(self) -> dict:
        clock = None
        if getattr(self, "_streaming", None) is not None:
            clock = self._streaming.clock
        elif getattr(self, "_detections_clock", None) is not None:
            clock = self._detections_clock
        out: dict = {"offset_slots": getattr(self, "_offset", None)}
        if clock is not None:
            period = clock.period_ps
            t0, t1 = getattr(self, "_sync_first", None), getattr(self, "_sync_last", None)
            if t0 is not None and t1 is not None and t1 > t0:
                # mean over the whole recording: slots between the first and last sync by the final clock fit
                s0 = self._streaming.first_sync_slot
                s1 = int(clock.slot_and_phase(np.array([t1]))[0][0])
                if s1 > s0:
                    period = (t1 - t0) / (s1 - s0)
            out["clock_period_ps"] = period
            out["drift_ppm"] = (period / self._period_ps - 1.0) * 1e6
            out["last_epoch_period_ps"] = clock.period_ps
            out["clock_rms_residual_ps"] = clock.rms_residual_ps
        r = getattr(self, "_offset_result", None)
        if r is not None:
            out["offset_z"] = r.z_score
            out["offset_second_z"] = r.second_z
        return out
