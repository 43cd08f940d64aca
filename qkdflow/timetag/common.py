"""Shared pieces of the time-tag readers and writers: the error type, read statistics, chunk helpers.

Conventions used by every reader in :mod:`qkdflow.timetag`:

* Readers are generators of ``TAG_DTYPE`` arrays of at most ``chunk_records`` items, so memory stays
  flat for multi-GB recordings. Every yielded array is freshly allocated (a consumer may keep it).
* Channel numbering: **0 is the sync input** (PicoQuant T2 sync records, PicoHarp input 0), detector
  inputs are numbered from 1. PicoQuant HydraHarp/MultiHarp/Generic records count inputs from 0 in the
  record, so input field ``k`` becomes channel ``k + 1`` — exactly as PicoQuant's own demo decoder
  (``ProcessHHT2`` in PicoQuant-Time-Tagged-File-Format-Demos ``PTU/C/ptudemo.cc``) reports them.
* Marker (external trigger) records, when requested, come out as channel ``MARKER_CHANNEL_BASE + bits``.
* Timestamps must not go backwards within a file (markers excepted: PicoQuant documents that markers
  have coarser timing and may be slightly out of order). A backwards step is a :class:`TimeTagError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Union

import numpy as np

from qkdflow.streams import TAG_DTYPE

PathType = Union[str, "PathLike[str]"]

#: Default number of records per yielded chunk: 256 Ki records (3 MiB of TAG_DTYPE output) keeps the decoder's
#: scratch arrays in cache — measured fastest of 64 Ki..4 Mi (tools/bench_timetag.py).
DEFAULT_CHUNK_RECORDS = 1 << 18

#: Marker records (external triggers) are reported on channel ``MARKER_CHANNEL_BASE + marker_bits``.
MARKER_CHANNEL_BASE = 1000


class TimeTagError(ValueError):
    """A time-tag file is malformed: names the file and, where known, the 0-based record number."""

    def __init__(self, path: PathType | None, reason: str, record: int | None = None) -> None:
        self.path = None if path is None else str(path)
        self.record = record
        self.reason = reason
        where = f"{self.path}" if self.path is not None else "<stream>"
        if record is not None:
            where += f": record {record}"
        super().__init__(f"{where}: {reason}")


class TimeTagWarning(UserWarning):
    """Non-fatal anomaly in a recording (overflow, missed events, error records) — also counted in stats."""


@dataclass
class ReadStats:
    """What a reader saw besides the tags it yielded. Nothing is dropped without being counted here."""

    records: int = 0            # records decoded so far (all kinds)
    tags: int = 0               # tags yielded (detector + sync channels, markers if requested)
    overflow_records: int = 0   # PicoQuant wrap-around records (bookkeeping, carry no event)
    markers: int = 0            # marker records seen (yielded only with include_markers=True)
    #: Swabian Dump anomalies: records of type Error / OverflowBegin / OverflowEnd / MissedEvents
    error_records: int = 0
    overflow_intervals_ps: list[tuple[int, int]] = field(default_factory=list)
    missed_events: dict[int, int] = field(default_factory=dict)  # channel -> number of tags lost


def empty_tags(n: int = 0) -> np.ndarray:
    """An uninitialised TAG_DTYPE array of length ``n``."""
    return np.empty(n, dtype=TAG_DTYPE)


def check_monotonic(
    time_ps: np.ndarray, last_ps: int | None, path: PathType | None, record_index: np.ndarray | int
) -> None:
    """Raise :class:`TimeTagError` at the first timestamp smaller than its predecessor.

    ``last_ps`` is the last timestamp of the previous chunk (None at the start). ``record_index`` gives
    each element's record number in the file (array) or the record number of element 0 (int).
    """
    if time_ps.size == 0:
        return
    bad = None
    if last_ps is not None and time_ps[0] < last_ps:
        bad = 0
    else:
        step = np.diff(time_ps)
        neg = np.flatnonzero(step < 0)
        if neg.size:
            bad = int(neg[0]) + 1
    if bad is None:
        return
    prev = last_ps if bad == 0 else int(time_ps[bad - 1])
    rec = record_index + bad if isinstance(record_index, (int, np.integer)) else int(record_index[bad])
    raise TimeTagError(path, f"timestamp goes backwards ({int(time_ps[bad])} ps after {prev} ps)", int(rec))


def as_tags(tags: np.ndarray, what: str = "tags") -> np.ndarray:
    """Validate that ``tags`` is a 1-D TAG_DTYPE-compatible array; return it as TAG_DTYPE."""
    tags = np.asarray(tags)
    if tags.ndim != 1 or tags.dtype.names is None or not {"time_ps", "channel"} <= set(tags.dtype.names):
        raise ValueError(f"{what}: expected a 1-D array with fields time_ps and channel, got {tags.dtype}")
    if tags.dtype != TAG_DTYPE:
        out = np.empty(tags.size, TAG_DTYPE)
        out["time_ps"] = tags["time_ps"]
        out["channel"] = tags["channel"]
        return out
    return tags


def make_tags(time_ps: np.ndarray, channel: np.ndarray | int) -> np.ndarray:
    """Build a TAG_DTYPE array from parallel arrays."""
    time_ps = np.asarray(time_ps, dtype=np.int64)
    out = np.empty(time_ps.size, TAG_DTYPE)
    out["time_ps"] = time_ps
    out["channel"] = channel
    return out
