"""CSV tag files for small hand-made recordings.

Format: first line is the header ``time_ps,channel`` (spaces around names allowed); each further line holds
two integers. Blank lines and lines starting with ``#`` are ignored. Times must be non-decreasing.
Errors name the file and the 1-based line number (reported as ``record`` in :class:`TimeTagError`).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from qkdflow.streams import TAG_DTYPE
from qkdflow.timetag.common import DEFAULT_CHUNK_RECORDS, PathType, ReadStats, TimeTagError, as_tags

CSV_HEADER = "time_ps,channel"


class CsvTagReader:
    """Streaming CSV reader; yields TAG_DTYPE chunks. ``record`` in errors is the 1-based line number."""

    def __init__(self, path: PathType, chunk_records: int = DEFAULT_CHUNK_RECORDS, check_order: bool = True) -> None:
        if int(chunk_records) < 1:
            raise ValueError(f"chunk_records: must be >= 1, got {chunk_records}")
        self.path = path
        self.chunk_records = int(chunk_records)
        self.check_order = check_order
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[np.ndarray]:
        times: list[int] = []
        chans: list[int] = []
        last: int | None = None
        header_seen = False
        with open(self.path, "r", encoding="utf-8", newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                if not header_seen:
                    if [c.strip() for c in s.split(",")] != ["time_ps", "channel"]:
                        raise TimeTagError(self.path, f"header must be '{CSV_HEADER}', got {s!r}", lineno)
                    header_seen = True
                    continue
                parts = s.split(",")
                if len(parts) != 2:
                    raise TimeTagError(self.path, f"expected 2 fields, got {len(parts)}", lineno)
                try:
                    t, c = int(parts[0]), int(parts[1])
                except ValueError:
                    raise TimeTagError(self.path, f"fields must be integers, got {s!r}", lineno) from None
                if not -(2**31) <= c < 2**31:
                    raise TimeTagError(self.path, f"channel {c} does not fit in int32", lineno)
                if self.check_order and last is not None and t < last:
                    raise TimeTagError(self.path, f"timestamp goes backwards ({t} ps after {last} ps)", lineno)
                last = t
                times.append(t)
                chans.append(c)
                if len(times) >= self.chunk_records:
                    yield self._emit(times, chans)
                    times, chans = [], []
        if not header_seen:
            raise TimeTagError(self.path, f"empty file: missing header '{CSV_HEADER}'")
        if times:
            yield self._emit(times, chans)

    def _emit(self, times: list[int], chans: list[int]) -> np.ndarray:
        out = np.empty(len(times), TAG_DTYPE)
        out["time_ps"] = times
        out["channel"] = chans
        self.stats.records += out.size
        self.stats.tags += out.size
        return out

    def read_all(self) -> np.ndarray:
        parts = list(self)
        return np.concatenate(parts) if parts else np.empty(0, TAG_DTYPE)


def read_csv_tags(path: PathType, **kwargs: Any) -> np.ndarray:
    """Read a whole CSV tag file into one TAG_DTYPE array."""
    return CsvTagReader(path, **kwargs).read_all()


def write_csv_tags(path: PathType, tags: np.ndarray) -> int:
    """Write tags as CSV with the ``time_ps,channel`` header; return the number of rows."""
    tags = as_tags(tags)
    t = tags["time_ps"]
    if (t[1:] < t[:-1]).any():
        raise ValueError("tags: time_ps must be non-decreasing")
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(CSV_HEADER + "\n")
        if tags.size:
            np.savetxt(fh, np.column_stack([t, tags["channel"].astype(np.int64)]), fmt="%d", delimiter=",")
    return tags.size
