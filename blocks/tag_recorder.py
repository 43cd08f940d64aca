"""Tag recorder (DU sink): write simulated clicks as a time-tagger recording, plus Alice's preparation record.

Turns the simulator into a lab: the detector's clicks become time tags as a real time tagger would store them, so the
replay path (``tag_source`` -> ``slot_assigner``) can be tested against ground truth.

Model of the recording (every number is a parameter; nothing is fitted):
  * Detector channels: each set bit ``2*basis + bit`` of a click's ``mask`` (``qkdflow.streams``) becomes one tag on
    the channel that ``channel_map`` ({channel: [basis, bit]}) assigns to that detector; a double click gives two tags
    at the same time (the simulated detector draws one jitter value per click event).
  * Sync channel (``sync_channel``, T2 and raw/Swabian formats): one tag every ``slots_per_sync`` slots, at slots
    ``sync_start_slot + k * slots_per_sync`` covering the recorded range, with optional Gaussian ``sync_jitter_ps``.
  * Bob's time base: Alice-time ``t`` (ps; the click's ``time_ps``, or ``slot x period`` for syncs) becomes
    ``time_offset_ps + t + drift_ppm 1e-6 t + 1/2 drift_rate_ppm_per_s 1e-6 t^2 / 1 s`` (a constant frequency offset of
    Bob's time tagger against Alice's laser clock plus a linear frequency ramp), rounded to whole ps.
  * PTU T3 (``ptu_t3``, HydraHarp V2 T3 records): the time tagger counts syncs (the sync is the laser clock divided by
    ``slots_per_sync``) and measures ``dtime`` from the last sync in ``resolution_ps`` bins, as the hardware does
    (PicoQuant PTU demos, ``ProcessHHT3``). ``nsync`` of an event is 1 + the index of the last sync at or before it
    (events before the first sync belong to the virtual sync -1, so nsync stays >= 0). The header's sync period is the
    nominal ``slots_per_sync / rate_hz``; a reader converting with it gets ``time = nsync x N x T + dtime``, a time
    axis locked to the laser clock (drift only acts within one sync period). No sync records exist in T3.
  * Formats: ``ptu_t2`` (HydraHarp V2 T2, 1 ps or ``resolution_ps``), ``ptu_t3``, ``raw`` (qkdflow raw v1),
    ``swabian`` (Swabian Dump 16-byte TimeTag records). Writers from ``qkdflow.timetag``.
  * Tags are written time-sorted. Jitter can push a tag of frame k after a tag of frame k+1, so tags later than the
    frame's end minus ``reorder_window_ps`` are held back and merged with the next frame; a tag that would still go
    backwards fails the block (nothing is reordered silently).
  * ``alice_record``: Alice's choices for the recorded slot range ``[first frame start, last frame stop)`` as a dense
    1-D ``.npy`` of PREP_DTYPE, row i = slot ``first start + i`` (what ``preparation.record_file`` reads). The prep
    stream's counter-based descriptor is materialised with ``qkdflow.prng.prep_choices``.

Ports: prep (PREP_DTYPE), clicks (CLICK_DTYPE). Counters: tags_written, sync_tags, detector_tags, clicks, slots.
"""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from qkdflow import prng
from qkdflow.runtime.block import Block, BlockError, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import CLICK_DTYPE, PREP_DTYPE, TAG_DTYPE
from qkdflow.timetag.ptu import RT_HYDRAHARP2_T2, RT_HYDRAHARP2_T3, T3_DTYPE, PtuWriter
from qkdflow.timetag.raw import RawTagWriter, swabian_records

FORMATS = ("ptu_t2", "ptu_t3", "raw", "swabian")
DEFAULT_CHANNEL_MAP = {1: [0, 0], 2: [0, 1], 3: [1, 0], 4: [1, 1]}
HH_T3_MAX_DTIME = 0x7FFF  # 15-bit dtime field of HydraHarp-family T3 records


def parse_channel_map(value: dict) -> dict[int, tuple[int, int]]:
    """{channel: [basis, bit]} from YAML (keys may be strings) -> {int: (basis, bit)}; ValueError on bad entries."""
    out: dict[int, tuple[int, int]] = {}
    for k, v in value.items():
        try:
            ch = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"channel_map: channel {k!r} is not an integer") from None
        if not isinstance(v, (list, tuple)) or len(v) != 2 or any(x not in (0, 1) or isinstance(x, bool) for x in v):
            raise ValueError(f"channel_map[{ch}]: expected [basis, bit] with basis, bit in {{0, 1}}, got {v!r}")
        out[ch] = (int(v[0]), int(v[1]))
    if not out:
        raise ValueError("channel_map: needs at least one detector channel")
    return out


def _npy_header(n: int, length: int) -> bytes:
    """A .npy v1.0 header for a 1-D PREP_DTYPE array of n rows, space-padded to exactly ``length`` bytes."""
    d = {"descr": np.lib.format.dtype_to_descr(PREP_DTYPE), "fortran_order": False, "shape": (int(n),)}
    body = repr(d).encode("latin1")
    pad = length - 10 - len(body) - 1
    if pad < 0:
        raise ValueError("npy header does not fit")  # pragma: no cover - 256 bytes hold any int64 shape
    return b"\x93NUMPY\x01\x00" + (length - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


class TagRecorder(Block):
    """Write clicks as a PTU (T2/T3), raw or Swabian time-tag recording with sync, drift and offset; save Alice's record."""

    category = "detector"
    params = (
        Param("path", str, doc="tag file to write"),
        Param("format", str, "ptu_t2", doc="file format", choices=FORMATS),
        Param("alice_record", str, None, doc="also write Alice's choices here (.npy PREP_DTYPE)"),
        Param("channel_map", dict, DEFAULT_CHANNEL_MAP, doc="{channel: [basis, bit]} of the detectors"),
        Param("sync_channel", int, 0, doc="sync channel (T2/raw/Swabian; T3 counts syncs instead)"),
        Param("slots_per_sync", int, 16, unit="slots", doc="sync every N slots (laser clock divided by N)", low=1),
        Param("sync_start_slot", int, 0, unit="slots", doc="slot of the first sync (before: none)"),
        Param("sync_jitter_ps", float, 0.0, unit="ps", doc="Gaussian jitter of sync tags", low=0.0),
        Param("drift_ppm", float, 0.0, unit="ppm", doc="Bob's time-tagger clock rate offset vs Alice's laser"),
        Param("drift_rate_ppm_per_s", float, 0.0, unit="ppm/s", doc="linear ramp of the rate offset"),
        Param("time_offset_ps", int, 1_000_000, unit="ps", doc="added to every timestamp (>= 0)", low=0),
        Param("resolution_ps", int, 1, unit="ps", doc="T2 time / T3 dtime resolution", low=1),
        Param("reorder_window_ps", int, 10_000, unit="ps", doc="hold back tags this close to a frame end", low=0),
        Param("rate_hz", float, 1.0e9, unit="Hz", doc="slot rate (from clock.rate_hz)", low=0.0, low_open=True),
        Param("seed", int, 0, doc="seed of the sync jitter", low=0),
    )
    inputs = (Stream("prep", PREP_DTYPE, doc="Alice's choices"), Stream("clicks", CLICK_DTYPE, doc="Bob's clicks"))

    def validate(self) -> list[str]:
        errs = []
        try:
            cmap = parse_channel_map(self.channel_map)
        except ValueError as e:
            return [str(e)]
        if len(set(cmap.values())) != len(cmap):
            errs.append("channel_map: two channels name the same (basis, bit) detector")
        if self.format != "ptu_t3" and self.sync_channel in cmap:
            errs.append(f"sync_channel: channel {self.sync_channel} is also a detector in channel_map")
        if self.format.startswith("ptu"):
            lo, hi = (1, 64)
            bad = [c for c in cmap if not lo <= c <= hi]
            if bad:
                errs.append(f"channel_map: PTU HydraHarp detector channels are 1..64, got {bad}")
            if self.format == "ptu_t2" and self.sync_channel != 0:
                errs.append("sync_channel: PTU T2 records the sync as channel 0")
        period_ps = 1e12 / self.rate_hz
        if self.format == "ptu_t3":
            sync_ps = period_ps * self.slots_per_sync
            if abs(sync_ps - round(sync_ps)) > 1e-6:
                errs.append(f"slots_per_sync: T3 needs a whole-ps sync period, got {sync_ps} ps")
            elif sync_ps * (1 + abs(self.drift_ppm) * 1e-6) / self.resolution_ps >= HH_T3_MAX_DTIME:
                errs.append(f"slots_per_sync: sync period {sync_ps:g} ps exceeds the T3 dtime range "
                            f"({HH_T3_MAX_DTIME} x resolution_ps = {HH_T3_MAX_DTIME * self.resolution_ps} ps)")
        if self.alice_record is not None and os.path.abspath(self.alice_record) == os.path.abspath(self.path):
            errs.append("alice_record: must differ from path")
        return errs

    # -- time base ------------------------------------------------------------------------------------
    def bob_time_ps(self, t_ps: np.ndarray) -> np.ndarray:
        """Alice-time (ps, float or int) -> Bob's time-tagger timestamp (int64 ps)."""
        t = np.asarray(t_ps, np.float64)
        extra = self.drift_ppm * 1e-6 * t + 0.5 * self.drift_rate_ppm_per_s * 1e-6 * (t * t) * 1e-12
        # integer part kept exact: only the (small) drift term goes through float rounding
        base = np.asarray(t_ps).astype(np.int64) if np.issubdtype(np.asarray(t_ps).dtype, np.integer) else np.rint(t).astype(np.int64)
        return base + np.rint(extra).astype(np.int64) + int(self.time_offset_ps)

    def start(self) -> None:
        cmap = parse_channel_map(self.channel_map)
        self._period_ps = 1e12 / self.rate_hz
        self._det_channel = np.full(4, -1, np.int64)       # detector bit -> channel
        for ch, (b, v) in cmap.items():
            self._det_channel[2 * b + v] = ch
        self._rng = np.random.default_rng(self.seed)
        self._held = np.empty(0, TAG_DTYPE)
        self._first_slot: int | None = None
        self._last_stop: int | None = None
        self._sync_period_ps = round(self._period_ps * self.slots_per_sync)
        if self.format == "ptu_t2":
            self._w = PtuWriter(self.path, RT_HYDRAHARP2_T2, self.resolution_ps * 1e-12,
                                comment="qkdflow tag_recorder (simulated)")
        elif self.format == "ptu_t3":
            self._w = PtuWriter(self.path, RT_HYDRAHARP2_T3, self._sync_period_ps * 1e-12,
                                resolution_s=self.resolution_ps * 1e-12, comment="qkdflow tag_recorder (simulated)")
        elif self.format == "raw":
            self._w = RawTagWriter(self.path)
        else:
            self._w = open(self.path, "wb")
        self._alice: BinaryIO | None = None
        self._alice_rows = 0
        if self.alice_record is not None:
            self._alice = open(self.alice_record, "wb")
            self._alice.write(_npy_header(0, 256))
        for k in ("tags_written", "sync_tags", "detector_tags", "clicks", "slots"):
            self.count(k, 0)

    # -- per frame --------------------------------------------------------------------------------------
    def _sync_slots(self, start: int, stop: int) -> np.ndarray:
        n, s0 = self.slots_per_sync, self.sync_start_slot
        k0 = max(0, -(-(start - s0) // n))
        k1 = max(0, -(-(stop - s0) // n))
        return s0 + n * np.arange(k0, k1, dtype=np.int64)

    def work(self, ins):
        prep, clk = ins["prep"], ins["clicks"]
        if self._first_slot is None:
            self._first_slot = prep.start
        elif prep.start != self._last_stop:
            raise BlockError(f"prep frames not contiguous: [{prep.start}, {prep.stop}) after slot {self._last_stop}")
        self._last_stop = prep.stop
        self.count("slots", prep.slots)
        if self._alice is not None:
            self._write_alice(prep)
        c = clk.data
        self.count("clicks", int(c.size))
        mask = c["mask"].astype(np.int64)
        t_click = np.where(c["time_ps"] >= 0, c["time_ps"], np.rint(c["slot"] * self._period_ps).astype(np.int64))
        det_t, det_ch = [], []
        for bit in range(4):
            sel = (mask >> bit) & 1 == 1
            if not sel.any():
                continue
            if self._det_channel[bit] < 0:
                raise BlockError(f"channel_map: clicks on detector (basis {bit // 2}, bit {bit % 2}) but no channel "
                                 f"is mapped to it")
            det_t.append(t_click[sel])
            det_ch.append(np.full(int(sel.sum()), self._det_channel[bit], np.int32))
        tags = np.empty(sum(x.size for x in det_t), TAG_DTYPE)
        if det_t:
            tags["time_ps"] = self.bob_time_ps(np.concatenate(det_t))
            tags["channel"] = np.concatenate(det_ch)
        self.count("detector_tags", int(tags.size))
        if self.format != "ptu_t3":
            ss = self._sync_slots(prep.start, prep.stop)
            st = ss.astype(np.float64) * self._period_ps
            if self.sync_jitter_ps > 0:
                st = st + self._rng.normal(0.0, self.sync_jitter_ps, ss.size)
            sync = np.empty(ss.size, TAG_DTYPE)
            sync["time_ps"] = self.bob_time_ps(st)
            sync["channel"] = self.sync_channel
            self.count("sync_tags", int(ss.size))
            tags = np.concatenate([tags, sync])
        tags = np.concatenate([self._held, tags])
        tags = tags[np.argsort(tags["time_ps"], kind="stable")]
        cut = int(self.bob_time_ps(np.array([prep.stop * self._period_ps]))[0]) - self.reorder_window_ps
        n = int(np.searchsorted(tags["time_ps"], cut, side="left"))
        self._held = tags[n:].copy()
        self._write(tags[:n])
        return None

    def _write_alice(self, prep) -> None:
        if prep.data.size == prep.slots:
            rows = prep.data
        elif prep.data.size == 0 and isinstance(prep.meta.get("prep"), dict):
            i, b, x = prng.prep_choices(prep.meta["prep"], np.arange(prep.start, prep.stop, dtype=np.int64))
            rows = np.empty(prep.slots, PREP_DTYPE)
            rows["intensity"], rows["basis"], rows["bit"] = i, b, x
        else:
            raise BlockError(f"prep frame [{prep.start}, {prep.stop}) has {prep.data.size} rows and no descriptor")
        np.ascontiguousarray(rows, PREP_DTYPE).tofile(self._alice)
        self._alice_rows += prep.slots

    def _write(self, tags: np.ndarray) -> None:
        if tags.size == 0:
            return
        if int(tags["time_ps"][0]) < 0:
            raise BlockError(f"timestamp {int(tags['time_ps'][0])} ps < 0: raise time_offset_ps")
        try:
            if self.format == "ptu_t3":
                self._w.write_t3(self._to_t3(tags))
            elif self.format == "swabian":
                last = getattr(self, "_sw_last", None)
                if last is not None and tags["time_ps"][0] < last:
                    raise ValueError("tags: time_ps must be non-decreasing")
                swabian_records(tags).tofile(self._w)
                self._sw_last = int(tags["time_ps"][-1])
            else:
                self._w.write(tags)
        except ValueError as e:
            raise BlockError(f"{self.path}: {e} (a tag arrived more than reorder_window_ps={self.reorder_window_ps} "
                             f"late; raise it)") from None
        self.count("tags_written", int(tags.size))

    def _to_t3(self, tags: np.ndarray) -> np.ndarray:
        """T3 items: nsync = 1 + index of the last sync at or before the tag; dtime in resolution bins from it."""
        n, s0 = self.slots_per_sync, self.sync_start_slot
        t = tags["time_ps"]
        # candidate sync index from the nominal clock, then corrected against the exact (drifted) sync times
        k = np.floor((((t - self.time_offset_ps) / self._period_ps) - s0) / n).astype(np.int64)
        k = np.maximum(k, -1)
        for _ in range(3):
            tk = self.bob_time_ps((s0 + n * k).astype(np.float64) * self._period_ps)
            tn = self.bob_time_ps((s0 + n * (k + 1)).astype(np.float64) * self._period_ps)
            k = np.where(t < tk, k - 1, np.where(t >= tn, k + 1, k))
            k = np.maximum(k, -1)
        tk = self.bob_time_ps((s0 + n * k).astype(np.float64) * self._period_ps)
        out = np.empty(tags.size, T3_DTYPE)
        out["nsync"] = k + 1
        out["dtime"] = (t - tk) // self.resolution_ps
        out["channel"] = tags["channel"]
        if (out["dtime"] < 0).any():
            raise BlockError("event before the virtual sync -1: raise sync_start_slot or start recording later")
        return out

    def stop(self) -> None:
        if getattr(self, "_w", None) is None:
            return
        self._write(self._held)
        self._held = np.empty(0, TAG_DTYPE)
        self._w.close()
        self._w = None
        if self._alice is not None:
            self._alice.seek(0)
            self._alice.write(_npy_header(self._alice_rows, 256))
            self._alice.close()
            self._alice = None

    def report(self) -> dict:
        return {"path": self.path, "format": self.format, "first_slot": self._first_slot,
                "alice_rows": getattr(self, "_alice_rows", 0)}
