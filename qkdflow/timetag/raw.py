"""qkdflow raw tag files and Swabian Time Tagger "Dump" files: streaming readers and writers.

**qkdflow raw tag format, version 1** (``.qtag``; defined here):

* 16-byte header: ``magic`` 8 bytes ``b"QKDFTAG\\0"``, ``version`` uint16 LE (= 1), ``record_size`` uint16 LE
  (= 12), ``reserved`` uint32 (= 0).
* then packed little-endian 12-byte records, exactly ``qkdflow.streams.TAG_DTYPE``: int64 time_ps, int32
  channel. No padding — 12 bytes instead of 16 saves 25 % of disk bandwidth, and numpy reads packed
  records directly. Records are time-sorted (non-decreasing); the reader enforces it.
* a reader rejects other versions/record sizes; a future version bumps ``version``.

**Swabian "Dump"** (legacy ``Dump`` measurement of the Swabian Time Tagger; layout as in
``shared/reference/postprocessing.md`` §6 and libtcspc ``swabian_tag_event``): headerless 16-byte records
``Tag{uint8 type; uint8 reserved; uint16 missed_events; int32 channel; int64 time_ps}``, type 0 TimeTag,
1 Error, 2 OverflowBegin, 3 OverflowEnd, 4 MissedEvents. Only TimeTag records become tags; the others are
counted in :class:`~qkdflow.timetag.common.ReadStats` (error count, overflow intervals, missed events per
channel) and raise a :class:`~qkdflow.timetag.common.TimeTagWarning` — or a :class:`TimeTagError` with
``strict=True``. Negative channels (falling edges) are kept as they are.
"""
from __future__ import annotations

import os
import struct
import warnings
from typing import Any, BinaryIO, Iterator

import numpy as np

from qkdflow.streams import TAG_DTYPE
from qkdflow.timetag.common import (
    DEFAULT_CHUNK_RECORDS,
    PathType,
    ReadStats,
    TimeTagError,
    TimeTagWarning,
    as_tags,
    check_monotonic,
)

RAW_MAGIC = b"QKDFTAG\x00"
RAW_VERSION = 1
RAW_HEADER = struct.Struct("<8sHHI")  # magic, version, record size, reserved
RAW_HEADER_SIZE = RAW_HEADER.size     # 16

SWABIAN_DTYPE = np.dtype(
    [("type", "u1"), ("reserved", "u1"), ("missed_events", "<u2"), ("channel", "<i4"), ("time_ps", "<i8")]
)
SW_TIMETAG, SW_ERROR, SW_OVERFLOW_BEGIN, SW_OVERFLOW_END, SW_MISSED_EVENTS = range(5)
SWABIAN_TYPE_NAMES = ("TimeTag", "Error", "OverflowBegin", "OverflowEnd", "MissedEvents")


# ------------------------------------------------------------------------------------------- qkdflow raw
class RawTagReader:
    """Streaming reader of qkdflow raw tag files; iterating yields TAG_DTYPE chunks."""

    def __init__(self, path: PathType, chunk_records: int = DEFAULT_CHUNK_RECORDS, check_order: bool = True) -> None:
        if int(chunk_records) < 1:
            raise ValueError(f"chunk_records: must be >= 1, got {chunk_records}")
        self.path = path
        self.chunk_records = int(chunk_records)
        self.check_order = check_order
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(RAW_HEADER_SIZE)
        if len(head) < RAW_HEADER_SIZE:
            if head == RAW_MAGIC[: len(head)]:
                raise TimeTagError(path, "file truncated inside the 16-byte header")
            raise TimeTagError(path, f"not a qkdflow raw tag file: magic {head[:8]!r}")
        magic, version, rec_size, _ = RAW_HEADER.unpack(head)
        if magic != RAW_MAGIC:
            raise TimeTagError(path, f"not a qkdflow raw tag file: magic {magic!r}, expected {RAW_MAGIC!r}")
        if version != RAW_VERSION:
            raise TimeTagError(path, f"unsupported raw tag format version {version} (this reader knows {RAW_VERSION})")
        if rec_size != TAG_DTYPE.itemsize:
            raise TimeTagError(path, f"record_size {rec_size} in header, version 1 records are {TAG_DTYPE.itemsize}")
        body = size - RAW_HEADER_SIZE
        if body % rec_size:
            raise TimeTagError(path, f"file truncated: last record has {body % rec_size} of {rec_size} bytes",
                               body // rec_size)
        self.n_records = body // rec_size
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[np.ndarray]:
        last: int | None = None
        with open(self.path, "rb") as fh:
            fh.seek(RAW_HEADER_SIZE)
            done = 0
            while done < self.n_records:
                n = min(self.chunk_records, self.n_records - done)
                out = np.fromfile(fh, TAG_DTYPE, n)
                if out.size != n:
                    raise TimeTagError(self.path, "file truncated while reading", done + out.size)
                if self.check_order:
                    t = out["time_ps"]
                    if (last is not None and t[0] < last) or (t[1:] < t[:-1]).any():
                        check_monotonic(t, last, self.path, done)
                    last = int(t[-1])
                done += n
                self.stats.records += n
                self.stats.tags += n
                yield out

    def read_all(self) -> np.ndarray:
        parts = list(self)
        return np.concatenate(parts) if parts else np.empty(0, TAG_DTYPE)


class RawTagWriter:
    """Streaming writer of qkdflow raw tag files (version 1). Rejects times going backwards."""

    def __init__(self, path: PathType) -> None:
        self.path = path
        self._fh: BinaryIO | None = open(path, "wb")
        self._fh.write(RAW_HEADER.pack(RAW_MAGIC, RAW_VERSION, TAG_DTYPE.itemsize, 0))
        self._last: int | None = None
        self.n_records = 0

    def write(self, tags: np.ndarray) -> None:
        if self._fh is None:
            raise ValueError("RawTagWriter: write after close")
        tags = as_tags(tags)
        if tags.size == 0:
            return
        t = tags["time_ps"]
        if (self._last is not None and t[0] < self._last) or (t[1:] < t[:-1]).any():
            raise ValueError("tags: time_ps must be non-decreasing")
        np.ascontiguousarray(tags).tofile(self._fh)
        self._last = int(t[-1])
        self.n_records += tags.size

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RawTagWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_raw_tags(path: PathType, tags: np.ndarray) -> int:
    """Write a whole TAG_DTYPE array as a qkdflow raw tag file; return the record count."""
    with RawTagWriter(path) as w:
        w.write(tags)
        return w.n_records


def iter_raw_tags(path: PathType, **kwargs: Any) -> Iterator[np.ndarray]:
    yield from RawTagReader(path, **kwargs)


# ---------------------------------------------------------------------------------------- Swabian Dump
class SwabianDumpReader:
    """Streaming reader of Swabian 16-byte Dump records; yields TAG_DTYPE chunks of the TimeTag records.

    Non-TimeTag records are reported in ``stats`` (``error_records``, ``overflow_intervals_ps`` as
    (begin, end) pairs — end is -1 while open at end of file —, ``missed_events`` per channel) and by a
    :class:`TimeTagWarning`; with ``strict=True`` the first one raises :class:`TimeTagError`.
    """

    def __init__(self, path: PathType, chunk_records: int = DEFAULT_CHUNK_RECORDS, strict: bool = False,
                 check_order: bool = True) -> None:
        if int(chunk_records) < 1:
            raise ValueError(f"chunk_records: must be >= 1, got {chunk_records}")
        self.path = path
        self.chunk_records = int(chunk_records)
        self.strict = strict
        self.check_order = check_order
        size = os.path.getsize(path)
        if size % SWABIAN_DTYPE.itemsize:
            raise TimeTagError(path, f"file truncated: last record has {size % 16} of 16 bytes", size // 16)
        self.n_records = size // SWABIAN_DTYPE.itemsize
        self.stats = ReadStats()
        self._open_overflow: int | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        last: int | None = None
        warned: set[int] = set()
        with open(self.path, "rb") as fh:
            done = 0
            while done < self.n_records:
                n = min(self.chunk_records, self.n_records - done)
                recs = np.fromfile(fh, SWABIAN_DTYPE, n)
                if recs.size != n:
                    raise TimeTagError(self.path, "file truncated while reading", done + recs.size)
                typ = recs["type"]
                special = np.flatnonzero(typ != SW_TIMETAG)
                if special.size:
                    self._handle_special(recs, special, done, warned)
                    tagrecs = recs[typ == SW_TIMETAG]
                    recno = done + np.flatnonzero(typ == SW_TIMETAG)
                else:
                    tagrecs = recs
                    recno = None
                out = np.empty(tagrecs.size, TAG_DTYPE)
                out["time_ps"] = tagrecs["time_ps"]
                out["channel"] = tagrecs["channel"]
                if self.check_order and out.size:
                    t = out["time_ps"]
                    if (last is not None and t[0] < last) or (t[1:] < t[:-1]).any():
                        check_monotonic(t, last, self.path, done if recno is None else recno)
                    last = int(t[-1])
                done += n
                self.stats.records += n
                self.stats.tags += out.size
                yield out
        if self._open_overflow is not None:
            self.stats.overflow_intervals_ps.append((self._open_overflow, -1))
            self._open_overflow = None

    def _handle_special(self, recs: np.ndarray, special: np.ndarray, start: int, warned: set[int]) -> None:
        sub = recs[special]
        unknown = np.flatnonzero(sub["type"] > SW_MISSED_EVENTS)
        if unknown.size:
            i = int(unknown[0])
            raise TimeTagError(self.path, f"unknown Swabian record type {int(sub['type'][i])}", start + int(special[i]))
        if self.strict:
            i = 0
            raise TimeTagError(self.path, f"{SWABIAN_TYPE_NAMES[int(sub['type'][i])]} record at "
                                          f"{int(sub['time_ps'][i])} ps (strict mode)", start + int(special[i]))
        # few records: a plain loop keeps begin/end pairing exact
        for typ, ch, missed, t in zip(sub["type"].tolist(), sub["channel"].tolist(),
                                      sub["missed_events"].tolist(), sub["time_ps"].tolist()):
            if typ == SW_ERROR:
                self.stats.error_records += 1
            elif typ == SW_OVERFLOW_BEGIN:
                if self._open_overflow is None:
                    self._open_overflow = t
            elif typ == SW_OVERFLOW_END:
                begin = self._open_overflow if self._open_overflow is not None else -1
                self.stats.overflow_intervals_ps.append((begin, t))
                self._open_overflow = None
            else:
                self.stats.missed_events[ch] = self.stats.missed_events.get(ch, 0) + missed
            if typ not in warned:
                warned.add(typ)
                warnings.warn(f"{self.path}: {SWABIAN_TYPE_NAMES[typ]} record(s) in the stream; tags were lost "
                              f"(see reader.stats)", TimeTagWarning, stacklevel=3)

    def read_all(self) -> np.ndarray:
        parts = list(self)
        return np.concatenate(parts) if parts else np.empty(0, TAG_DTYPE)


def swabian_records(tags: np.ndarray) -> np.ndarray:
    """TimeTag records (type 0) for the given tags, ready to be merged with other record types."""
    tags = as_tags(tags)
    out = np.zeros(tags.size, SWABIAN_DTYPE)
    out["time_ps"] = tags["time_ps"]
    out["channel"] = tags["channel"]
    return out


def write_swabian_dump(path: PathType, tags: np.ndarray, events: np.ndarray | None = None) -> int:
    """Write tags (and optional non-TimeTag SWABIAN_DTYPE ``events``) as a Swabian Dump file, merged in
    time order (stable: an event at the same time as a tag comes after it). Return the record count."""
    recs = swabian_records(tags)
    if events is not None:
        events = np.asarray(events, SWABIAN_DTYPE)
        if ((events["type"] == SW_TIMETAG) | (events["type"] > SW_MISSED_EVENTS)).any():
            raise ValueError("events: types must be 1..4 (Error, OverflowBegin, OverflowEnd, MissedEvents)")
        recs = np.concatenate([recs, events])
        recs = recs[np.argsort(recs["time_ps"], kind="stable")]
    t = recs["time_ps"]
    if (t[1:] < t[:-1]).any():
        raise ValueError("tags: time_ps must be non-decreasing")
    recs.tofile(path)
    return recs.size


def iter_swabian_dump(path: PathType, **kwargs: Any) -> Iterator[np.ndarray]:
    yield from SwabianDumpReader(path, **kwargs)
