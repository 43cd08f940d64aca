"""PicoQuant PTU (unified TTTR) files: streaming vectorised reader and writer for T2 and T3 records.

Source of the layouts (checked field by field): PicoQuant, *PicoQuant-Time-Tagged-File-Format-Demos*,
``PTU/C/ptudemo.cc`` (``ProcessPHT2``, ``ProcessPHT3``, ``ProcessHHT2``, ``ProcessHHT3``) and
``PTU/Python/Read_PTU.py``; digest in ``shared/reference/postprocessing.md`` §6.

File = 8-byte magic ``PQTTTR\\0\\0`` + 8-byte version string + 48-byte header tags (char[32] ident, int32
index (-1 = scalar), uint32 type, 8-byte value; string/blob/float-array tags give a byte length in the value
and their data follows) up to the tag ``Header_End``; then little-endian uint32 records:

=========================================  ===========================================  =========================================
record type (TTResultFormat_TTTRRecType)   layout                                       wrap-around (overflow) record
=========================================  ===========================================  =========================================
PicoHarp T2 0x00010203                     ch[31:28] time[27:0]                         ch=15, time[3:0]=0 -> +210698240
PicoHarp T3 0x00010303                     ch[31:28] dtime[27:16] nsync[15:0]           ch=15, dtime field=0 -> +65536
HydraHarp V1 T2 0x00010204                 special[31] ch[30:25] time[24:0]             special, ch=63 -> +33552000 (one per record)
HydraHarp V2 / TimeHarp260 / MultiHarp-    as V1                                        special, ch=63 -> +2^25 * time field
 Generic T2 0x01010204 0x00010205/6/7                                                    (field 0 means one wrap)
HydraHarp V1 T3 0x00010304                 special[31] ch[30:25] dtime[24:10] nsync[9:0] special, ch=63 -> +1024 (one per record)
HydraHarp V2 / TimeHarp260 / Generic T3    as V1                                        special, ch=63 -> +1024 * nsync field
 0x01010304 0x00010305/6/7                                                               (field 0 means one wrap)
=========================================  ===========================================  =========================================

HydraHarp-family specials with ch 1..15 are markers (ch = marker bit field); in T2, special with ch 0 is
the sync input. PicoHarp specials (ch 15) with non-zero low bits are markers. Anything else (e.g. HydraHarp
special ch 16..62, PicoHarp ch 5..14, PicoHarp T3 ch 0) is undefined and raises :class:`TimeTagError`.

Channel numbering of the output (see :mod:`qkdflow.timetag.common`): sync = 0, detector inputs from 1
(HydraHarp-family input field ``k`` -> channel ``k + 1``; PicoHarp router channels 1..4 as recorded),
markers -> ``MARKER_CHANNEL_BASE + bits``.

Times: T2 time_ps = (overflow offset + time field) * MeasDesc_GlobalResolution. When the resolution is a
whole number of ps (1 ps HydraHarp, 4 ps PicoHarp, 5 ps MultiHarp) the product is exact integer arithmetic;
otherwise it is float64, rounded half-to-even (error < 1 ps below 2^53 ps ~ 2.5 h). T3: the reader yields the
absolute sync counter ``nsync`` and ``dtime`` (in MeasDesc_Resolution units) exactly (:meth:`PtuReader.iter_t3`);
conversion to ps uses the header's sync period MeasDesc_GlobalResolution, which is the *measured* sync period
(approximate) — use the slot counter, not the converted time, when the sync is the laser clock.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import numpy as np

from qkdflow.streams import TAG_DTYPE
from qkdflow.timetag.common import (
    DEFAULT_CHUNK_RECORDS,
    MARKER_CHANNEL_BASE,
    PathType,
    ReadStats,
    TimeTagError,
    as_tags,
    check_monotonic,
)

MAGIC = b"PQTTTR\x00\x00"

#: T3 items: absolute sync count, delay after that sync in MeasDesc_Resolution units, channel.
T3_DTYPE = np.dtype([("nsync", "<i8"), ("dtime", "<i4"), ("channel", "<i4")])

# Header tag type codes (ptudemo.cc).
TY_EMPTY8 = 0xFFFF0008
TY_BOOL8 = 0x00000008
TY_INT8 = 0x10000008
TY_BITSET64 = 0x11000008
TY_COLOR8 = 0x12000008
TY_FLOAT8 = 0x20000008
TY_TDATETIME = 0x21000008
TY_FLOAT8ARRAY = 0x2001FFFF
TY_ANSISTRING = 0x4001FFFF
TY_WIDESTRING = 0x4002FFFF
TY_BINARYBLOB = 0xFFFFFFFF

# Record types.
RT_PICOHARP_T2 = 0x00010203
RT_PICOHARP_T3 = 0x00010303
RT_HYDRAHARP_V1_T2 = 0x00010204
RT_HYDRAHARP_V1_T3 = 0x00010304
RT_HYDRAHARP2_T2 = 0x01010204
RT_HYDRAHARP2_T3 = 0x01010304
RT_TIMEHARP260N_T2 = 0x00010205
RT_TIMEHARP260N_T3 = 0x00010305
RT_TIMEHARP260P_T2 = 0x00010206
RT_TIMEHARP260P_T3 = 0x00010306
RT_GENERIC_T2 = 0x00010207  # MultiHarp, PicoHarp 330 ("Generic")
RT_GENERIC_T3 = 0x00010307


@dataclass(frozen=True)
class RecordFormat:
    """Decoding rules of one TTTRRecType."""

    name: str
    mode: int        # 2 = T2, 3 = T3
    family: str      # "ph" (PicoHarp 300) or "hh" (HydraHarp/TimeHarp260/MultiHarp/Generic)
    hh_version: int  # 1 = one wrap per overflow record, 2 = wrap count in the record (hh family only)


RECORD_FORMATS: dict[int, RecordFormat] = {
    RT_PICOHARP_T2: RecordFormat("PicoHarp T2", 2, "ph", 0),
    RT_PICOHARP_T3: RecordFormat("PicoHarp T3", 3, "ph", 0),
    RT_HYDRAHARP_V1_T2: RecordFormat("HydraHarp V1 T2", 2, "hh", 1),
    RT_HYDRAHARP_V1_T3: RecordFormat("HydraHarp V1 T3", 3, "hh", 1),
    RT_HYDRAHARP2_T2: RecordFormat("HydraHarp V2 T2", 2, "hh", 2),
    RT_HYDRAHARP2_T3: RecordFormat("HydraHarp V2 T3", 3, "hh", 2),
    RT_TIMEHARP260N_T2: RecordFormat("TimeHarp260N T2", 2, "hh", 2),
    RT_TIMEHARP260N_T3: RecordFormat("TimeHarp260N T3", 3, "hh", 2),
    RT_TIMEHARP260P_T2: RecordFormat("TimeHarp260P T2", 2, "hh", 2),
    RT_TIMEHARP260P_T3: RecordFormat("TimeHarp260P T3", 3, "hh", 2),
    RT_GENERIC_T2: RecordFormat("Generic (MultiHarp/PicoHarp 330) T2", 2, "hh", 2),
    RT_GENERIC_T3: RecordFormat("Generic (MultiHarp/PicoHarp 330) T3", 3, "hh", 2),
}

PH_T2_WRAP = 210698240
PH_T3_WRAP = 65536
HH_T2_WRAP_V1 = 33552000
HH_T2_WRAP_V2 = 1 << 25
HH_T3_WRAP = 1024


# --------------------------------------------------------------------------------------------- header
@dataclass
class PtuHeader:
    """Parsed PTU header. ``tags`` maps ident (``ident(idx)`` for indexed tags) to its decoded value."""

    version: str
    tags: dict[str, Any]
    data_offset: int  # byte offset of the first record

    def get(self, name: str, default: Any = None) -> Any:
        return self.tags.get(name, default)

    @property
    def record_type(self) -> int:
        return int(self.tags["TTResultFormat_TTTRRecType"])

    @property
    def global_resolution_s(self) -> float:
        return float(self.tags["MeasDesc_GlobalResolution"])

    @property
    def resolution_s(self) -> float | None:
        v = self.tags.get("MeasDesc_Resolution")
        return None if v is None else float(v)

    @property
    def n_records(self) -> int | None:
        v = self.tags.get("TTResult_NumberOfRecords")
        return None if v is None else int(v)


def _read_exact(fh: BinaryIO, n: int, path: PathType, what: str) -> bytes:
    b = fh.read(n)
    if len(b) != n:
        raise TimeTagError(path, f"file truncated inside the header ({what})")
    return b


def read_ptu_header(fh: BinaryIO, path: PathType) -> PtuHeader:
    """Parse the header from an open binary file positioned at 0 (leaves it at the first record)."""
    magic = fh.read(8)
    if magic != MAGIC:
        raise TimeTagError(path, f"not a PTU file: magic {magic!r}, expected {MAGIC!r}")
    version = _read_exact(fh, 8, path, "version").rstrip(b"\x00").decode("ascii", "replace")
    tags: dict[str, Any] = {}
    while True:
        head = _read_exact(fh, 48, path, "tag")
        ident_b, idx, typ, raw = struct.unpack("<32siI8s", head)
        ident = ident_b.split(b"\x00", 1)[0].decode("ascii", "replace")
        key = ident if idx < 0 else f"{ident}({idx})"
        if typ == TY_EMPTY8:
            value: Any = None
        elif typ == TY_BOOL8:
            value = struct.unpack("<q", raw)[0] != 0
        elif typ in (TY_INT8, TY_BITSET64, TY_COLOR8):
            value = struct.unpack("<q", raw)[0]
        elif typ in (TY_FLOAT8, TY_TDATETIME):  # TDateTime: days since 1899-12-30, kept as float
            value = struct.unpack("<d", raw)[0]
        elif typ in (TY_FLOAT8ARRAY, TY_ANSISTRING, TY_WIDESTRING, TY_BINARYBLOB):
            nbytes = struct.unpack("<q", raw)[0]
            if nbytes < 0:
                raise TimeTagError(path, f"header tag {key}: negative data length {nbytes}")
            data = _read_exact(fh, nbytes, path, f"data of tag {key}")
            if typ == TY_ANSISTRING:
                value = data.split(b"\x00", 1)[0].decode("cp1252", "replace")
            elif typ == TY_WIDESTRING:
                value = data.decode("utf-16-le", "replace").split("\x00", 1)[0]
            elif typ == TY_FLOAT8ARRAY:
                value = np.frombuffer(data[: nbytes - nbytes % 8], dtype="<f8").copy()
            else:
                value = data
        else:
            raise TimeTagError(path, f"header tag {key}: unknown tag type 0x{typ:08X}")
        tags[key] = value
        if ident == "Header_End":
            break
    return PtuHeader(version=version, tags=tags, data_offset=fh.tell())


# --------------------------------------------------------------------------------------------- reader
class PtuReader:
    """Streaming reader of a PTU file (T2 or T3 records).

    ``for tags in PtuReader(path): ...`` yields TAG_DTYPE arrays of at most ``chunk_records`` items.
    For T3 files, :meth:`iter_t3` yields T3_DTYPE items (exact nsync/dtime); iterating the reader itself
    converts them to ps with the header's sync period. ``stats`` counts overflow and marker records.
    ``include_markers`` also yields marker records (channel ``MARKER_CHANNEL_BASE + bits``; markers are
    exempt from the order check since PicoQuant markers have coarse timing).
    """

    def __init__(
        self,
        path: PathType,
        chunk_records: int = DEFAULT_CHUNK_RECORDS,
        include_markers: bool = False,
        check_order: bool = True,
    ) -> None:
        if int(chunk_records) < 1:
            raise ValueError(f"chunk_records: must be >= 1, got {chunk_records}")
        self.path = path
        self.chunk_records = int(chunk_records)
        self.include_markers = bool(include_markers)
        self.check_order = bool(check_order)
        with open(path, "rb") as fh:
            self.header = read_ptu_header(fh, path)
            fh.seek(0, 2)
            self._file_size = fh.tell()
        tags = self.header.tags
        if "TTResultFormat_TTTRRecType" not in tags:
            raise TimeTagError(path, "header has no TTResultFormat_TTTRRecType tag")
        rt = self.header.record_type
        if rt not in RECORD_FORMATS:
            raise TimeTagError(path, f"unknown TTTR record type 0x{rt:08X}")
        self.format = RECORD_FORMATS[rt]
        bits = tags.get("TTResultFormat_BitsPerRecord", 32)
        if bits not in (0, 32):  # ptufile treats 0 as 32 too
            raise TimeTagError(path, f"TTResultFormat_BitsPerRecord = {bits}, only 32-bit records are supported")
        if "MeasDesc_GlobalResolution" not in tags:
            raise TimeTagError(path, "header has no MeasDesc_GlobalResolution tag")
        if not self.header.global_resolution_s > 0:
            raise TimeTagError(path, f"MeasDesc_GlobalResolution must be > 0, got {self.header.global_resolution_s}")
        if self.format.mode == 3 and not (self.header.resolution_s or 0) > 0:
            raise TimeTagError(path, "T3 file needs MeasDesc_Resolution > 0")
        data_bytes = self._file_size - self.header.data_offset
        declared = self.header.n_records
        if declared is None:
            if data_bytes % 4:
                raise TimeTagError(path, f"file truncated: {data_bytes % 4} stray bytes after the last record",
                                   data_bytes // 4)
            self.n_records = data_bytes // 4
        else:
            if declared < 0:
                raise TimeTagError(path, f"TTResult_NumberOfRecords is negative ({declared})")
            if data_bytes < 4 * declared:
                raise TimeTagError(path, f"file truncated: header declares {declared} records, "
                                         f"file holds {data_bytes // 4}", data_bytes // 4)
            if data_bytes > 4 * declared:
                raise TimeTagError(path, f"{data_bytes - 4 * declared} bytes after the {declared} declared records",
                                   declared)
            self.n_records = declared
        self.stats = ReadStats()

    # -- properties ---------------------------------------------------------------------------------
    @property
    def mode(self) -> int:
        """2 for T2, 3 for T3."""
        return self.format.mode

    @property
    def global_resolution_ps(self) -> float:
        return self.header.global_resolution_s * 1e12

    @property
    def resolution_ps(self) -> float:
        """dtime bin width (T3) in ps; for T2 the time-tag resolution."""
        r = self.header.resolution_s
        return self.global_resolution_ps if r is None or self.mode == 2 else r * 1e12

    # -- iteration ----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[np.ndarray]:
        if self.mode == 2:
            yield from self._iter_t2()
        else:
            sync_ps = self.global_resolution_ps
            res_ps = self.resolution_ps
            for t3 in self.iter_t3():
                yield t3_to_tags(t3, sync_ps, res_ps)

    def read_all(self) -> np.ndarray:
        """All tags in one array (small files only)."""
        parts = list(self)
        return np.concatenate(parts) if parts else np.empty(0, TAG_DTYPE)

    def _chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index of first record, uint32 records) reusing one buffer."""
        buf = np.empty(min(self.chunk_records, max(self.n_records, 1)), np.uint32)
        with open(self.path, "rb") as fh:
            fh.seek(self.header.data_offset)
            done = 0
            while done < self.n_records:
                n = min(buf.size, self.n_records - done)
                view = buf[:n]
                got = fh.readinto(memoryview(view).cast("B"))
                if got != 4 * n:  # file shrank since we opened it
                    raise TimeTagError(self.path, "file truncated while reading", done + (got or 0) // 4)
                yield done, view
                done += n

    def _iter_t2(self) -> Iterator[np.ndarray]:
        # Pass-minimal decoding: find the few special records first, drop them from the raw uint32 records
        # (4-byte compress), then decode straight into the output's fields.
        fmt = self.format
        res_ps = self.global_resolution_ps
        res_int = round(res_ps)
        exact = abs(res_ps - res_int) < 1e-9 * max(res_ps, 1.0) and res_int > 0
        hh = fmt.family == "hh"
        shift, tmask, rare_above = (25, 0x1FFFFFF, 64) if hh else (28, 0x0FFFFFFF, 4)
        carry = 0  # accumulated wrap-around offset in resolution units
        last_ps: int | None = None
        cap = min(self.chunk_records, max(self.n_records, 1))
        # contiguous scratch (strided ops on the 12-byte output records are several times slower)
        top_buf = np.empty(cap, np.uint32)
        t_buf = np.empty(cap, np.int64)
        c_buf = np.empty(cap, np.int32)
        b_buf = np.empty(cap, bool)
        for start, rec in self._chunks():
            n = rec.size
            top = np.right_shift(rec, shift, out=top_buf[:n])
            rare = np.flatnonzero(top > rare_above)   # overflows, markers, undefined records
            drop, ofl_idx, ofl_inc, marker_idx = self._classify_rare(rec, rare, start, t3=False)
            if drop.size:
                keep = np.ones(n, bool)
                keep[drop] = False
                rec = rec[keep]
                # position of each overflow / marker in the compressed array
                ofl_pos = ofl_idx - np.searchsorted(drop, ofl_idx)
                marker_pos = marker_idx - np.searchsorted(drop, marker_idx)
                top = np.right_shift(rec, shift, out=top_buf[: rec.size])
            else:
                ofl_pos, marker_pos = ofl_idx, marker_idx
            m = rec.size
            tt = np.bitwise_and(rec, tmask, out=t_buf[:m], casting="unsafe")
            cc = c_buf[:m]
            if hh:  # input field k -> channel k+1; sync (special, ch 0: top == 64) -> channel 0
                np.add(top, 1, out=cc, casting="unsafe")
                np.multiply(cc, np.not_equal(top, 64, out=b_buf[:m]), out=cc)
            else:   # PicoHarp: channel field as recorded (0 = sync input)
                np.copyto(cc, top, casting="unsafe")
            if marker_pos.size:
                cc[marker_pos] = MARKER_CHANNEL_BASE + self._marker_bits(rec[marker_pos], t3=False)
                if not hh:  # low 4 time bits carry the marker bits: not time information
                    tt[marker_pos] &= ~np.int64(0xF)
            # wrap-around offsets: constant between overflow records (records after overflow i get sum inc[:i+1])
            if ofl_pos.size:
                seg_off = carry + np.concatenate([[0], np.cumsum(ofl_inc)])
                seg_len = np.diff(np.concatenate([[0], ofl_pos, [m]]))
                tt += np.repeat(seg_off, seg_len)
                carry = int(seg_off[-1])
            elif carry:
                tt += carry
            if exact:
                if res_int != 1:
                    tt *= res_int
            else:
                np.rint(tt * res_ps, out=tt, casting="unsafe")
            last_ps = self._check_field(tt, cc, start, drop, marker_pos, last_ps) if self.check_order else last_ps
            out = np.empty(m, TAG_DTYPE)
            out["time_ps"] = tt
            out["channel"] = cc
            self.stats.records += n
            self.stats.tags += m
            yield out

    def iter_t3(self) -> Iterator[np.ndarray]:
        """Yield T3_DTYPE chunks: absolute nsync (overflow-corrected), dtime, channel (T3 files only)."""
        if self.mode != 3:
            raise ValueError(f"{self.path}: iter_t3 needs a T3 file, this is {self.format.name}")
        hh = self.format.family == "hh"
        carry = 0
        last_nsync: int | None = None
        for start, rec in self._chunks():
            n = rec.size
            if hh:
                top = rec >> 25
                rare = np.flatnonzero(top > 63)           # every special record (no sync records in T3)
            else:
                top = rec >> 28
                rare = np.flatnonzero((top - 1) > 3)      # uint32 wrap: catches ch 0 and 5..15
            drop, ofl_idx, ofl_inc, marker_idx = self._classify_rare(rec, rare, start, t3=True)
            if drop.size:
                keep = np.ones(n, bool)
                keep[drop] = False
                rec, top = rec[keep], top[keep]
                ofl_pos = ofl_idx - np.searchsorted(drop, ofl_idx)
                marker_pos = marker_idx - np.searchsorted(drop, marker_idx)
            else:
                ofl_pos, marker_pos = ofl_idx, marker_idx
            m = rec.size
            if hh:
                nsync = (rec & 0x3FF).astype(np.int64)
                dtime = ((rec >> 10) & 0x7FFF).astype(np.int32)
                chan = top.astype(np.int32) + 1           # input field k -> channel k+1
            else:
                nsync = (rec & 0xFFFF).astype(np.int64)
                dtime = ((rec >> 16) & 0xFFF).astype(np.int32)
                chan = top.astype(np.int32)
            if marker_pos.size:
                chan[marker_pos] = MARKER_CHANNEL_BASE + self._marker_bits(rec[marker_pos], t3=True)
                dtime[marker_pos] = 0
            if ofl_pos.size:
                seg_off = carry + np.concatenate([[0], np.cumsum(ofl_inc)])
                seg_len = np.diff(np.concatenate([[0], ofl_pos, [m]]))
                nsync += np.repeat(seg_off, seg_len)
                carry = int(seg_off[-1])
            elif carry:
                nsync += carry
            if self.check_order:
                last_nsync = self._check_field(nsync, chan, start, drop, marker_pos, last_nsync)
            out = np.empty(m, T3_DTYPE)
            out["nsync"] = nsync
            out["dtime"] = dtime
            out["channel"] = chan
            self.stats.records += n
            self.stats.tags += m
            yield out

    # -- helpers --------------------------------------------------------------------------------------
    def _classify_rare(
        self, rec: np.ndarray, rare: np.ndarray, start: int, t3: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sort the rare records of a chunk into overflows (with their increment), markers and errors.

        Returns (indices to drop from the output, overflow indices, overflow increments, marker indices).
        """
        empty = np.empty(0, np.int64)
        if rare.size == 0:
            return empty, empty, empty, empty
        fmt = self.format
        r = rec[rare]
        if fmt.family == "hh":
            top = r >> 25
            is_ofl = top == 127
            is_marker = (top >= 65) & (top <= 79)
            if fmt.mode == 3:
                field_ = r & 0x3FF
                wrap, single_inc = HH_T3_WRAP, HH_T3_WRAP
            else:
                field_ = r & 0x1FFFFFF
                wrap, single_inc = HH_T2_WRAP_V2, HH_T2_WRAP_V1
            if fmt.hh_version == 1:
                inc = np.full(r.size, single_inc, np.int64)
            else:
                inc = np.where(field_ == 0, 1, field_).astype(np.int64) * wrap
        else:
            top = r >> 28
            special = top == 15
            bits = (r >> 16) & 0xFFF if t3 else r & 0xF
            is_ofl = special & (bits == 0)
            is_marker = special & (bits != 0)
            inc = np.full(r.size, PH_T3_WRAP if t3 else PH_T2_WRAP, np.int64)
        bad = ~(is_ofl | is_marker)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise TimeTagError(self.path, f"undefined {fmt.name} record 0x{int(r[i]):08X}", start + int(rare[i]))
        ofl_idx = rare[is_ofl]
        marker_idx = rare[is_marker]
        self.stats.overflow_records += int(ofl_idx.size)
        self.stats.markers += int(marker_idx.size)
        drop = ofl_idx if self.include_markers else rare
        return drop, ofl_idx, inc[is_ofl], (marker_idx if self.include_markers else empty)

    def _marker_bits(self, r: np.ndarray, t3: bool) -> np.ndarray:
        if self.format.family == "hh":
            return ((r >> 25) & 0x3F).astype(np.int32)
        return (((r >> 16) & 0xFFF) if t3 else (r & 0xF)).astype(np.int32)

    def _record_numbers(self, start: int, drop: np.ndarray, n_out: int) -> np.ndarray:
        keep = np.ones(n_out + drop.size, bool)
        keep[drop] = False
        return start + np.flatnonzero(keep)

    def _check_field(self, t: np.ndarray, ch: np.ndarray, start: int, drop: np.ndarray,
                     marker_idx: np.ndarray, last: int | None) -> int | None:
        if t.size == 0:
            return last
        if marker_idx.size:  # markers are exempt (coarse timing by design)
            sel = ch < MARKER_CHANNEL_BASE
            recno = self._record_numbers(start, drop, t.size)[sel]
            t = t[sel]
            if t.size == 0:
                return last
        else:
            recno = None
        ok_fast = (last is None or t[0] >= last) and not (t[1:] < t[:-1]).any()
        if not ok_fast:
            if recno is None:
                recno = self._record_numbers(start, drop, t.size)
            check_monotonic(t, last, self.path, recno)
        return int(t[-1])


def t3_to_tags(t3: np.ndarray, sync_period_ps: float, resolution_ps: float) -> np.ndarray:
    """Convert T3 items to TAG_DTYPE: time_ps = nsync * sync_period_ps + dtime * resolution_ps (rounded)."""
    if not sync_period_ps > 0 or not resolution_ps > 0:
        raise ValueError(f"sync_period_ps and resolution_ps must be > 0, got {sync_period_ps}, {resolution_ps}")
    out = np.empty(t3.size, TAG_DTYPE)
    sp, rs = round(sync_period_ps), round(resolution_ps)
    if sp == sync_period_ps and rs == resolution_ps:
        out["time_ps"] = t3["nsync"] * sp + t3["dtime"].astype(np.int64) * rs
    else:
        out["time_ps"] = np.rint(t3["nsync"] * sync_period_ps + t3["dtime"] * resolution_ps)
    out["channel"] = t3["channel"]
    return out


def tags_to_t3(tags: np.ndarray, sync_period_ps: int, resolution_ps: int) -> np.ndarray:
    """Express tags as T3 items relative to an ideal sync of period ``sync_period_ps`` starting at t = 0.

    nsync = floor(time / period); dtime = floor((time - nsync * period) / resolution). Markers keep dtime 0.
    """
    tags = as_tags(tags)
    sp, rs = int(sync_period_ps), int(resolution_ps)
    if sp <= 0 or rs <= 0 or sp != sync_period_ps or rs != resolution_ps:
        raise ValueError(f"sync_period_ps and resolution_ps must be positive integers, got {sync_period_ps}, "
                         f"{resolution_ps}")
    t = tags["time_ps"]
    out = np.empty(tags.size, T3_DTYPE)
    out["nsync"] = t // sp
    dt = (t - out["nsync"] * sp) // rs
    marker = tags["channel"] >= MARKER_CHANNEL_BASE
    out["dtime"] = np.where(marker, 0, dt)
    out["channel"] = tags["channel"]
    return out


def iter_ptu(path: PathType, **kwargs: Any) -> Iterator[np.ndarray]:
    """Yield TAG_DTYPE chunks from a PTU file (see :class:`PtuReader` for keyword arguments)."""
    yield from PtuReader(path, **kwargs)


# --------------------------------------------------------------------------------------------- writer
def _encode_tag(ident: str, value: Any, idx: int = -1) -> bytes:
    name = ident.encode("ascii")
    if len(name) > 31:
        raise ValueError(f"PTU tag ident {ident!r}: longer than 31 characters")
    if value is None:
        return struct.pack("<32siI8s", name, idx, TY_EMPTY8, b"")
    if isinstance(value, bool):
        return struct.pack("<32siIq", name, idx, TY_BOOL8, int(value))
    if isinstance(value, (int, np.integer)):
        return struct.pack("<32siIq", name, idx, TY_INT8, int(value))
    if isinstance(value, (float, np.floating)):
        return struct.pack("<32siId", name, idx, TY_FLOAT8, float(value))
    if isinstance(value, str):
        data = value.encode("cp1252") + b"\x00"
        data += b"\x00" * (-len(data) % 8)
        return struct.pack("<32siIq", name, idx, TY_ANSISTRING, len(data)) + data
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value) + b"\x00" * (-len(value) % 8)
        return struct.pack("<32siIq", name, idx, TY_BINARYBLOB, len(data)) + data
    raise ValueError(f"PTU tag {ident}: unsupported value type {type(value).__name__}")


class PtuWriter:
    """Streaming writer of PTU files in any supported record type (T2 via :meth:`write`, T3 via :meth:`write_t3`).

    Times are quantised (floored) to ``global_resolution_s`` (T2) and dtime to ``resolution_s`` (T3); both must
    be whole numbers of ps. Wrap-around records are inserted exactly as the hardware does (HydraHarp V2/Generic:
    one record carrying the wrap count; V1 and PicoHarp: one record per wrap). Record count is patched into the
    header on :meth:`close`. Channels follow the reader's numbering (sync 0, detectors from 1, markers
    ``MARKER_CHANNEL_BASE + bits``); PicoHarp T2 markers overwrite the 4 low time bits, as the hardware does.
    """

    def __init__(
        self,
        path: PathType,
        record_type: int,
        global_resolution_s: float,
        resolution_s: float | None = None,
        sync_rate_hz: float | None = None,
        comment: str = "",
        extra_tags: dict[str, Any] | None = None,
    ) -> None:
        if record_type not in RECORD_FORMATS:
            raise ValueError(f"record_type: unknown TTTR record type 0x{int(record_type):08X}")
        self.format = RECORD_FORMATS[record_type]
        self.record_type = record_type
        gres_ps = global_resolution_s * 1e12
        self._gres_ps = round(gres_ps)
        if not global_resolution_s > 0 or abs(gres_ps - self._gres_ps) > 1e-6 * gres_ps or self._gres_ps < 1:
            raise ValueError(f"global_resolution_s: must be a positive whole number of ps, got {global_resolution_s}")
        if self.format.mode == 3:
            if resolution_s is None or not resolution_s > 0:
                raise ValueError("resolution_s: required (> 0) for T3 record types")
            res_ps = resolution_s * 1e12
            self._res_ps = round(res_ps)
            if abs(res_ps - self._res_ps) > 1e-6 * res_ps or self._res_ps < 1:
                raise ValueError(f"resolution_s: must be a whole number of ps, got {resolution_s}")
        else:
            resolution_s = global_resolution_s if resolution_s is None else resolution_s
            self._res_ps = self._gres_ps
        if sync_rate_hz is None:
            sync_rate_hz = 1.0 / global_resolution_s if self.format.mode == 3 else 0
        self.path = path
        self._fh: BinaryIO | None = open(path, "wb")
        self._q_last = 0          # wrap index of the previous record
        self._last_units: int | None = None
        self.n_records = 0
        head = bytearray(MAGIC + b"1.0.00\x00\x00")
        tags: list[tuple[str, Any]] = [
            ("File_Comment", comment),
            ("CreatorSW_Name", "qkdflow"),
            ("Measurement_Mode", self.format.mode),
            ("Measurement_SubMode", 0),
            ("TTResultFormat_TTTRRecType", int(record_type)),
            ("TTResultFormat_BitsPerRecord", 32),
            ("MeasDesc_GlobalResolution", float(global_resolution_s)),
            ("MeasDesc_Resolution", float(resolution_s)),
            ("TTResult_SyncRate", int(round(sync_rate_hz))),
        ]
        tags += list((extra_tags or {}).items())
        for k, v in tags:
            head += _encode_tag(k, v)
        self._nrec_offset = len(head) + 40  # value field of the record-count tag
        head += _encode_tag("TTResult_NumberOfRecords", 0)
        head += _encode_tag("Header_End", None)
        self._fh.write(bytes(head))

    def __enter__(self) -> "PtuWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.seek(self._nrec_offset)
        self._fh.write(struct.pack("<q", self.n_records))
        self._fh.close()
        self._fh = None

    # -- encoding -------------------------------------------------------------------------------------
    def _wrap_rules(self) -> tuple[int, int, int]:
        """(wrap size in units, max wraps per overflow record, overflow record base value)."""
        f = self.format
        if f.family == "ph":
            return (PH_T2_WRAP if f.mode == 2 else PH_T3_WRAP), 1, 0xF0000000
        if f.mode == 2:
            if f.hh_version == 1:
                return HH_T2_WRAP_V1, 1, 0xFE000000
            return HH_T2_WRAP_V2, (1 << 25) - 1, 0xFE000000
        return HH_T3_WRAP, (1 if f.hh_version == 1 else 1023), 0xFE000000

    def _emit(self, units: np.ndarray, payload: np.ndarray) -> None:
        """Write events at absolute times ``units`` (wrap counter domain) with record bits ``payload``
        (everything but the wrapped time/nsync field), inserting overflow records where the counter wraps."""
        if self._fh is None:
            raise ValueError("PtuWriter: write after close")
        if units.size == 0:
            return
        if units[0] < 0:
            raise ValueError("times must be >= 0")
        if (self._last_units is not None and units[0] < self._last_units) or (units[1:] < units[:-1]).any():
            raise ValueError("times must be non-decreasing")
        wrap, maxc, ofl_base = self._wrap_rules()
        q = units // wrap
        fieldv = (units - q * wrap).astype(np.uint32)
        d = np.diff(q, prepend=self._q_last)
        nrec = -(-d // maxc)  # ceil: overflow records before each event
        total = units.size + int(nrec.sum())
        out = np.empty(total, np.uint32)
        pos = np.arange(units.size) + np.cumsum(nrec)
        is_event = np.zeros(total, bool)
        is_event[pos] = True
        out[~is_event] = ofl_base | (maxc if maxc > 1 else 0)
        if maxc > 1:  # last overflow record before an event carries the remainder of the count
            has = nrec > 0
            out[pos[has] - 1] = ofl_base | (d[has] - (nrec[has] - 1) * maxc).astype(np.uint32)
        out[pos] = payload | fieldv
        out.tofile(self._fh)
        self.n_records += total
        self._q_last = int(q[-1])
        self._last_units = int(units[-1])

    def write(self, tags: np.ndarray) -> None:
        """Append time-sorted T2 tags (TAG_DTYPE)."""
        if self.format.mode != 2:
            raise ValueError(f"{self.format.name}: use write_t3 for T3 record types")
        tags = as_tags(tags)
        ch = tags["channel"].astype(np.int64)
        units = tags["time_ps"] // self._gres_ps
        marker = ch >= MARKER_CHANNEL_BASE
        bits = ch - MARKER_CHANNEL_BASE
        if self.format.family == "hh":
            if ((~marker & ((ch < 0) | (ch > 64))) | (marker & ((bits < 1) | (bits > 15)))).any():
                raise ValueError(f"channel: {self.format.name} takes channels 0 (sync), 1..64 and markers "
                                 f"{MARKER_CHANNEL_BASE + 1}..{MARKER_CHANNEL_BASE + 15}")
            payload = np.where(marker, (1 << 31) | (bits << 25),
                               np.where(ch == 0, 1 << 31, (ch - 1) << 25)).astype(np.uint32)
        else:
            if ((~marker & ((ch < 0) | (ch > 4))) | (marker & ((bits < 1) | (bits > 15)))).any():
                raise ValueError(f"channel: PicoHarp T2 takes channels 0..4 and markers "
                                 f"{MARKER_CHANNEL_BASE + 1}..{MARKER_CHANNEL_BASE + 15}")
            payload = np.where(marker, (15 << 28), ch << 28).astype(np.uint32)
            # a marker's low 4 time bits hold the marker bits
            units = np.where(marker, (units & ~np.int64(0xF)) | bits, units)
            if marker.any() and (units[1:] < units[:-1]).any():
                raise ValueError("marker bits in the low time bits reorder records; space markers >= 16 units apart")
        self._emit(units, payload)

    def write_t3(self, t3: np.ndarray) -> None:
        """Append T3 items (T3_DTYPE: absolute nsync non-decreasing, dtime in resolution units, channel)."""
        if self.format.mode != 3:
            raise ValueError(f"{self.format.name}: use write for T2 record types")
        t3 = np.asarray(t3)
        if t3.dtype.names is None or not {"nsync", "dtime", "channel"} <= set(t3.dtype.names):
            raise ValueError(f"t3: expected fields nsync, dtime, channel, got {t3.dtype}")
        ch = t3["channel"].astype(np.int64)
        dt = t3["dtime"].astype(np.int64)
        marker = ch >= MARKER_CHANNEL_BASE
        bits = ch - MARKER_CHANNEL_BASE
        if self.format.family == "hh":
            ok = np.where(marker, (bits >= 1) & (bits <= 15), (ch >= 1) & (ch <= 64))
            maxdt = 0x7FFF
        else:
            ok = np.where(marker, (bits >= 1) & (bits <= 15), (ch >= 1) & (ch <= 4))
            maxdt = 0xFFF
        if not ok.all():
            raise ValueError(f"channel: {self.format.name} takes detector channels "
                             f"{'1..64' if self.format.family == 'hh' else '1..4'} and markers "
                             f"{MARKER_CHANNEL_BASE + 1}..{MARKER_CHANNEL_BASE + 15}")
        if ((dt < 0) | (dt > maxdt)).any():
            raise ValueError(f"dtime: must be in 0..{maxdt} for {self.format.name}")
        if self.format.family == "hh":
            payload = np.where(marker, (1 << 31) | (bits << 25), ((ch - 1) << 25) | (dt << 10))
        else:
            payload = np.where(marker, (15 << 28) | (bits << 16), (ch << 28) | (dt << 16))
        self._emit(t3["nsync"].astype(np.int64), payload.astype(np.uint32))


def write_ptu(
    path: PathType,
    data: np.ndarray,
    record_type: int = RT_HYDRAHARP2_T2,
    global_resolution_s: float = 1e-12,
    resolution_s: float | None = None,
    **kwargs: Any,
) -> int:
    """Write tags (T2 record types) or T3 items (T3 record types) to a PTU file; return the record count."""
    with PtuWriter(path, record_type, global_resolution_s, resolution_s, **kwargs) as w:
        if w.format.mode == 2:
            w.write(data)
        else:
            w.write_t3(data)
        return w.n_records
