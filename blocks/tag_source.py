"""Tag source: read a time-tag file (PicoQuant PTU T2/T3, qkdflow raw, Swabian Dump, CSV) as TAG_DTYPE frames.

Readers from ``qkdflow.timetag`` (formats and channel numbering documented there: sync = channel 0, detector inputs
from 1). The file is read in chunks of at most ``chunk_records`` tags, so memory stays flat for any file length.

Frame ranges: tags are indexed by arrival, not by slot — nobody knows a tag's slot before clock recovery. A frame
covers the half-open range of **tag indices** ``[start, stop)`` in the stream (tag 0 is the file's first tag), so
frames are contiguous and gap-free like slot frames. ``meta``: ``{"tag_source": path, "format": fmt,
"time_range_ps": [first, last]}`` plus, for T3 files, ``"t3_sync_period_ps"``.

T3 files carry (nsync, dtime); tags get ``time = nsync x sync_period + dtime x resolution``. ``t3_sync_period_ps``
overrides the header's (measured, approximate) sync period — give the exact laser-clock sync period
(``slots_per_sync / rate_hz``) and the time axis is locked to the laser clock, for ``slot_assigner`` with
``clock: nominal``.

Errors: a file that cannot be opened or whose header is malformed (wrong magic, truncated, unknown record type) is
reported at load time (``qkdflow run``/``check`` exit code 2); problems inside the records (timestamps going
backwards, undefined records) stop the run with the reader's message naming the file and the record number.
Counters: tags, frames, overflow_records, markers, error_records (Swabian), missed_events.
"""
from __future__ import annotations

import os
import warnings


from qkdflow.runtime.block import DONE, Block, BlockError, Frame, Stream
from qkdflow.runtime.params import Param
from qkdflow.streams import TAG_DTYPE
from qkdflow.timetag import FORMATS, TimeTagError, TimeTagWarning, open_tag_reader, t3_to_tags


class TagSource(Block):
    """Read a time-tag file (PTU, raw, Swabian Dump, CSV) in bounded chunks; frames cover tag-index ranges."""

    category = "detector"
    params = (
        Param("path", str, doc="tag file"),
        Param("format", str, None, doc="file format (default: detected from the magic; swabian must be named)",
              choices=FORMATS),
        Param("chunk_records", int, 1 << 18, doc="records per frame (at most)", low=1),
        Param("t3_sync_period_ps", float, None, unit="ps", doc="T3 only: sync period used to convert nsync to ps "
              "(default: the header's MeasDesc_GlobalResolution)", low=0.0, low_open=True),
        Param("include_markers", bool, False, doc="PTU: also emit marker records (channel 1000 + bits)"),
        Param("strict", bool, False, doc="Swabian: an Error/Overflow/MissedEvents record stops the run"),
    )
    outputs = (Stream("out", TAG_DTYPE, doc="time tags; frame range = tag indices"),)

    def _open(self):
        kw = {"chunk_records": self.chunk_records}
        fmt = self.format
        if fmt is None:
            with open(self.path, "rb") as fh:
                head = fh.read(8)
            fmt = "ptu" if head.startswith(b"PQTTTR") else None
        if fmt == "ptu":
            kw["include_markers"] = self.include_markers
        if fmt == "swabian":
            kw["strict"] = self.strict
        return open_tag_reader(self.path, self.format, **kw)

    def validate(self) -> list[str]:
        if not os.path.isfile(self.path):
            return [f"path: no such file {self.path!r}"]
        try:
            r = self._open()
        except TimeTagError as e:
            return [f"path: {e}"]
        except OSError as e:
            return [f"path: cannot read {self.path!r}: {e.strerror}"]
        if self.t3_sync_period_ps is not None and getattr(r, "mode", 2) != 3:
            return ["t3_sync_period_ps: only for PTU T3 files"]
        return []

    def start(self) -> None:
        self._reader = self._open()
        t3 = getattr(self._reader, "mode", 2) == 3
        if t3:
            sync_ps = self.t3_sync_period_ps or self._reader.global_resolution_ps
            res_ps = self._reader.resolution_ps
            self._it = (t3_to_tags(x, sync_ps, res_ps) for x in self._reader.iter_t3())
            self._meta = {"t3_sync_period_ps": float(sync_ps)}
        else:
            self._it = iter(self._reader)
            self._meta = {}
        self._pos = 0
        self._last_t: int | None = None
        for k in ("tags", "frames"):
            self.count(k, 0)

    def work(self, ins):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TimeTagWarning)
                chunk = next(self._it, None)
            for w in caught:
                self.log(str(w.message))
        except TimeTagError as e:
            raise BlockError(str(e)) from None
        if chunk is None:
            return DONE
        if chunk.size == 0:
            return {}
        t = chunk["time_ps"]
        if self._last_t is not None and t[0] < self._last_t and self.include_markers is False:
            # readers check order within a file; T3 conversion with a too-short sync period can still invert
            raise BlockError(f"{self.path}: record near tag {self._pos}: timestamp goes backwards "
                             f"({int(t[0])} ps after {self._last_t} ps)")
        self._last_t = int(t[-1])
        start = self._pos
        self._pos += chunk.size
        self.count("tags", int(chunk.size))
        self.count("frames", 1)
        meta = {"tag_source": self.path, "format": self.format, "time_range_ps": [int(t[0]), int(t[-1])], **self._meta}
        return {"out": Frame(start, self._pos, chunk, meta=meta)}

    def report(self) -> dict:
        st = getattr(getattr(self, "_reader", None), "stats", None)
        if st is None:
            return {}
        return {"overflow_records": st.overflow_records, "markers": st.markers, "error_records": st.error_records,
                "missed_events": sum(st.missed_events.values()), "overflow_intervals": len(st.overflow_intervals_ps)}
