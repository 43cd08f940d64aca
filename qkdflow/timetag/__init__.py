"""Time-tag files, clock recovery and slot assignment (pure library; blocks wrap these).

Formats: PicoQuant PTU (:mod:`.ptu`), qkdflow raw and Swabian Dump (:mod:`.raw`), CSV (:mod:`.csvtags`).
Clock: :mod:`.clock`. Slots and Alice/Bob offset: :mod:`.slots`. Conventions: :mod:`.common`.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from qkdflow.timetag.clock import (
    ClockError,
    ClockModel,
    clock_from_detections,
    clock_from_sync,
    estimate_channel_delay,
)
from qkdflow.timetag.common import (
    MARKER_CHANNEL_BASE,
    PathType,
    ReadStats,
    TimeTagError,
    TimeTagWarning,
    make_tags,
)
from qkdflow.timetag.csvtags import CsvTagReader, read_csv_tags, write_csv_tags
from qkdflow.timetag.ptu import T3_DTYPE, PtuReader, PtuWriter, t3_to_tags, tags_to_t3, write_ptu
from qkdflow.timetag.raw import (
    SWABIAN_DTYPE,
    RawTagReader,
    RawTagWriter,
    SwabianDumpReader,
    write_raw_tags,
    write_swabian_dump,
)
from qkdflow.timetag.slots import (
    ChannelMap,
    OffsetResult,
    SlotStats,
    StreamingSlotAssigner,
    assign_slots,
    find_slot_offset,
)

FORMATS = ("ptu", "raw", "swabian", "csv")


def open_tag_reader(path: PathType, fmt: str | None = None, **kwargs: Any) -> Any:
    """Reader object for ``path`` (iterate it for TAG_DTYPE chunks; ``.stats`` afterwards).

    ``fmt`` is one of ``FORMATS``; if None it is detected: PTU and raw by their magic, CSV by a
    ``time_ps,channel`` first line. Swabian Dump files have no header and must be named explicitly.
    """
    if fmt is None:
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head.startswith(b"PQTTTR"):
            fmt = "ptu"
        elif head.startswith(b"QKDFTAG"):
            fmt = "raw"
        elif head.lstrip().lower().startswith(b"time_ps") or head.startswith(b"#"):
            fmt = "csv"
        else:
            raise TimeTagError(path, "cannot detect the tag file format (Swabian Dump files need fmt='swabian')")
    readers = {"ptu": PtuReader, "raw": RawTagReader, "swabian": SwabianDumpReader, "csv": CsvTagReader}
    if fmt not in readers:
        raise ValueError(f"fmt: must be one of {FORMATS}, got {fmt!r}")
    return readers[fmt](path, **kwargs)


def iter_tags(path: PathType, fmt: str | None = None, **kwargs: Any) -> Iterator[np.ndarray]:
    """Yield TAG_DTYPE chunks from any supported file (see :func:`open_tag_reader`)."""
    yield from open_tag_reader(path, fmt, **kwargs)


__all__ = [
    "FORMATS", "MARKER_CHANNEL_BASE", "SWABIAN_DTYPE", "T3_DTYPE",
    "ChannelMap", "ClockError", "ClockModel", "CsvTagReader", "OffsetResult", "PtuReader", "PtuWriter",
    "RawTagReader", "RawTagWriter", "ReadStats", "SlotStats", "StreamingSlotAssigner", "SwabianDumpReader", "TimeTagError",
    "TimeTagWarning", "assign_slots", "clock_from_detections", "clock_from_sync", "estimate_channel_delay",
    "find_slot_offset", "iter_tags", "make_tags", "open_tag_reader", "read_csv_tags", "t3_to_tags",
    "tags_to_t3", "write_csv_tags", "write_ptu", "write_raw_tags", "write_swabian_dump",
]
