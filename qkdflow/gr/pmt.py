"""GNU Radio PMT (polymorphic type) serialization, byte-compatible with ``pmt::serialize``.

Source: GNU Radio 3.10 ``gnuradio-runtime/lib/pmt/pmt_serialize.cc`` and ``pmt_serial_tags.h``
(read at v3.10.5.1 and main; unchanged since 3.8). Golden bytes from GR 3.10.5.1
``pmt.serialize_str()`` are in /work/shared/reference/gnuradio.md section 1.6 and in the tests.
Every multi-byte field is big-endian, whatever the host.

Python <-> PMT mapping (encode dispatches on the Python type, decode returns these types):

=================  ====  ===============================================================
PMT                tag   Python
=================  ====  ===============================================================
``#t`` / ``#f``    00/01 ``True`` / ``False`` (also ``numpy.bool_``)
symbol             02    ``str`` (u16 length + UTF-8 bytes)
integer            03    ``int`` that fits int32 (i32)
integer            0d    ``int`` that fits int64 but not int32 (i64), as GR does
uint64             0b    :class:`UInt64` only -- a plain ``int`` never becomes uint64
double             04    ``float`` (also numpy floating scalars)
complex            05    ``complex`` (f64 real, f64 imaginary)
null (PMT_NIL)     06    ``None``; the empty ``dict`` also encodes to 06 and decodes to ``None``
pair               07    :class:`Pair` ``(car, cdr)``; a list ``(a b)`` is ``Pair(a, Pair(b, None))``
vector             08    ``list`` (u32 n, then n PMTs)
dict               09    ``dict`` (see ordering below)
uniform vector     0a    1-D ``numpy.ndarray`` of u8,i8,u16,i16,u32,i32,u64,i64,f32,f64,c64,c128
tuple              0c    ``tuple`` (u32 n, then n PMTs)
=================  ====  ===============================================================

Dict ordering. A GR dict is an association list built by ``dict_add``, which puts the newest
entry first, and serializes as ``09 (07 key value) 09 (07 key value) ... 06``. A Python dict
iterates oldest insertion first. We map Python insertion order to ``dict_add`` order: the *last*
Python item is written *first* on the wire, and the decoder reverses the wire order back. So
``{"a": 1, "b": True}`` gives the golden ``dict a:1 then b:#t`` bytes, and both round trips
(obj -> bytes -> obj and canonical bytes -> obj -> bytes) keep the order.

Deliberate strictness beyond GNU Radio (GR would accept these, we raise :class:`PmtError`):
unknown tags, truncated data and trailing bytes (GR silently reads zeros on truncation); a
``09`` chain whose cell is not a key/value pair or which ends in anything but ``09``/``06``;
duplicate or unhashable dict keys after conversion to Python (e.g. keys ``1`` and ``#t`` are
equal in Python); symbols that are not valid UTF-8. The encoder refuses symbols longer than
1024 UTF-8 bytes because GR's deserializer rejects them ("very long symbol"), although the wire
field is u16. Uniform-vector padding is read as GR reads it: ``npad`` then that many bytes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PmtError", "UInt64", "Pair", "serialize", "deserialize", "deserialize_from"]

# Tag bytes (pmt_serial_tags.h).
PST_TRUE = 0x00
PST_FALSE = 0x01
PST_SYMBOL = 0x02
PST_INT32 = 0x03
PST_DOUBLE = 0x04
PST_COMPLEX = 0x05
PST_NULL = 0x06
PST_PAIR = 0x07
PST_VECTOR = 0x08
PST_DICT = 0x09
PST_UNIFORM_VECTOR = 0x0A
PST_UINT64 = 0x0B
PST_TUPLE = 0x0C
PST_INT64 = 0x0D

#: GR's deserializer refuses longer symbols (tmpbuf[1024] in pmt_serialize.cc).
MAX_SYMBOL_BYTES = 1024

# Uniform-vector subtype <-> numpy dtype "kind+itemsize" (UVI_* in pmt_serial_tags.h).
_UVI_TO_KEY = {
    0x00: "u1", 0x01: "i1", 0x02: "u2", 0x03: "i2", 0x04: "u4", 0x05: "i4",
    0x06: "u8", 0x07: "i8", 0x08: "f4", 0x09: "f8", 0x0A: "c8", 0x0B: "c16",
}
_KEY_TO_UVI = {v: k for k, v in _UVI_TO_KEY.items()}
_UVI_BE = {k: np.dtype(">" + v) for k, v in _UVI_TO_KEY.items()}      # wire dtype
_UVI_NATIVE = {k: np.dtype("=" + v) for k, v in _UVI_TO_KEY.items()}  # decoded dtype

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_C128 = struct.Struct(">dd")
_UV_HEAD = struct.Struct(">BIB")  # subtype, n, npad

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class PmtError(ValueError):
    """Malformed PMT bytes (``offset`` = byte index of the problem) or an unencodable object."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.offset = offset


class UInt64(int):
    """An integer that serializes as PMT uint64 (tag 0b), like ``pmt.from_uint64``."""

    def __new__(cls, value: int) -> "UInt64":
        v = int(value)
        if not 0 <= v < 2**64:
            raise ValueError(f"UInt64 value: {v} is outside [0, 2**64)")
        return super().__new__(cls, v)

    def __repr__(self) -> str:
        return f"UInt64({int(self)})"


@dataclass(frozen=True, slots=True)
class Pair:
    """A PMT pair (``pmt.cons(car, cdr)``); PDUs are ``Pair(meta_dict_or_None, ndarray)``."""

    car: Any
    cdr: Any


# ---------------------------------------------------------------- encoding

def serialize(obj: Any) -> bytes:
    """Serialize a Python object (mapping in the module docstring) to PMT bytes."""
    out = bytearray()
    try:
        _encode(obj, out)
    except RecursionError:
        raise PmtError("object nests too deeply or is circular") from None
    return bytes(out)


def _encode(obj: Any, out: bytearray) -> None:
    # bool and UInt64 are int subclasses, so they are tested before int.
    if obj is None:
        out.append(PST_NULL)
    elif obj is True or obj is False or isinstance(obj, np.bool_):
        out.append(PST_TRUE if obj else PST_FALSE)
    elif isinstance(obj, UInt64):
        out.append(PST_UINT64)
        out += _U64.pack(obj)
    elif isinstance(obj, (int, np.integer)):
        v = int(obj)
        if _INT32_MIN <= v <= _INT32_MAX:
            out.append(PST_INT32)
            out += _I32.pack(v)
        elif _INT64_MIN <= v <= _INT64_MAX:
            out.append(PST_INT64)
            out += _I64.pack(v)
        else:
            raise PmtError(f"integer {v} does not fit int64; wrap values in [0, 2**64) in UInt64")
    elif isinstance(obj, (float, np.floating)):
        out.append(PST_DOUBLE)
        out += _F64.pack(float(obj))
    elif isinstance(obj, (complex, np.complexfloating)):
        c = complex(obj)
        out.append(PST_COMPLEX)
        out += _C128.pack(c.real, c.imag)
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        if len(raw) > MAX_SYMBOL_BYTES:
            raise PmtError(f"symbol is {len(raw)} UTF-8 bytes; GNU Radio accepts at most {MAX_SYMBOL_BYTES}")
        out.append(PST_SYMBOL)
        out += _U16.pack(len(raw))
        out += raw
    elif isinstance(obj, Pair):
        # Iterate down the cdr chain like GR's tail recursion, so long lists do not recurse.
        while isinstance(obj, Pair):
            out.append(PST_PAIR)
            _encode(obj.car, out)
            obj = obj.cdr
        _encode(obj, out)
    elif isinstance(obj, list):
        out.append(PST_VECTOR)
        out += _U32.pack(len(obj))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, tuple):
        out.append(PST_TUPLE)
        out += _U32.pack(len(obj))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, dict):
        # Newest (last-inserted) entry first; the empty dict is PMT_NIL, as in GR.
        for key, value in reversed(obj.items()):
            out.append(PST_DICT)
            out.append(PST_PAIR)
            _encode(key, out)
            _encode(value, out)
        out.append(PST_NULL)
    elif isinstance(obj, np.ndarray):
        _encode_uniform(obj, out)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raise PmtError("bytes have no PMT mapping; use np.frombuffer(b, np.uint8) for a u8vector")
    else:
        raise PmtError(f"cannot serialize Python type {type(obj).__name__} as a PMT")


def _encode_uniform(arr: np.ndarray, out: bytearray) -> None:
    if arr.ndim != 1:
        raise PmtError(f"uniform vector must be 1-D, got shape {arr.shape}")
    key = f"{arr.dtype.kind}{arr.dtype.itemsize}"
    uvi = _KEY_TO_UVI.get(key)
    if uvi is None:
        raise PmtError(f"numpy dtype {arr.dtype} has no PMT uniform-vector subtype")
    if len(arr) > 0xFFFFFFFF:
        raise PmtError(f"uniform vector of {len(arr)} elements exceeds the u32 length field")
    out.append(PST_UNIFORM_VECTOR)
    out += _UV_HEAD.pack(uvi, len(arr), 1)
    out.append(0)  # the single pad byte GR writes
    out += np.ascontiguousarray(arr, dtype=_UVI_BE[uvi]).tobytes()


# ---------------------------------------------------------------- decoding

def deserialize(buf: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one PMT occupying all of ``buf``; raise :class:`PmtError` otherwise."""
    view = memoryview(buf).cast("B")
    obj, end = deserialize_from(view, 0)
    if end != len(view):
        raise PmtError(f"trailing garbage: {len(view) - end} bytes after the PMT", end)
    return obj


def deserialize_from(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Any, int]:
    """Decode one PMT starting at ``offset``; return ``(obj, end_offset)``. Errors carry absolute offsets."""
    view = memoryview(buf).cast("B")
    reader = _Reader(view, offset)
    try:
        obj = reader.read()
    except RecursionError:
        raise PmtError("PMT nests too deeply", reader.pos) from None
    return obj, reader.pos


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: memoryview, pos: int) -> None:
        self.buf, self.pos, self.end = buf, pos, len(buf)

    def need(self, n: int, what: str) -> None:
        if self.end - self.pos < n:
            raise PmtError(f"truncated {what}: need {n} bytes, {self.end - self.pos} left", self.pos)

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self.need(st.size, what)
        v = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def tag(self, what: str = "PMT tag") -> int:
        self.need(1, what)
        t = self.buf[self.pos]
        self.pos += 1
        return t

    def read(self) -> Any:
        start = self.pos
        t = self.tag()
        if t == PST_TRUE:
            return True
        if t == PST_FALSE:
            return False
        if t == PST_NULL:
            return None
        if t == PST_INT32:
            return self.unpack(_I32, "int32")[0]
        if t == PST_INT64:
            return self.unpack(_I64, "int64")[0]
        if t == PST_UINT64:
            return UInt64(self.unpack(_U64, "uint64")[0])
        if t == PST_DOUBLE:
            return self.unpack(_F64, "double")[0]
        if t == PST_COMPLEX:
            re, im = self.unpack(_C128, "complex")
            return complex(re, im)
        if t == PST_SYMBOL:
            (n,) = self.unpack(_U16, "symbol length")
            self.need(n, "symbol")
            raw = bytes(self.buf[self.pos:self.pos + n])
            try:
                s = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PmtError("symbol is not valid UTF-8", self.pos) from None
            self.pos += n
            return s
        if t == PST_PAIR:
            return self.read_pair()
        if t == PST_DICT:
            return self.read_dict(start)
        if t == PST_VECTOR or t == PST_TUPLE:
            (n,) = self.unpack(_U32, "vector length")
            self.need(n, "vector items")  # every PMT is at least one byte
            items = [self.read() for _ in range(n)]
            return items if t == PST_VECTOR else tuple(items)
        if t == PST_UNIFORM_VECTOR:
            return self.read_uniform()
        raise PmtError(f"unknown PMT tag 0x{t:02x}", start)

    def read_pair(self) -> Pair:
        # Iterative over the cdr chain, like GR's parse_pair, so long lists do not recurse.
        cars = [self.read()]
        while self.tag("pair cdr") == PST_PAIR:
            cars.append(self.read())
        self.pos -= 1
        obj = self.read()
        for car in reversed(cars):
            obj = Pair(car, obj)
        return obj

    def read_dict(self, start: int) -> dict:
        entries = []
        while True:
            cell = self.pos
            kv = self.read()
            if not isinstance(kv, Pair):
                raise PmtError("dict cell does not hold a key/value pair", cell)
            entries.append((kv.car, kv.cdr, cell))
            cell = self.pos
            t = self.tag("dict cdr")
            if t == PST_NULL:
                break
            if t != PST_DICT:
                raise PmtError(f"dict chain ends in tag 0x{t:02x}, expected 09 or 06", cell)
        out: dict = {}
        for key, value, cell in reversed(entries):  # wire is newest first
            try:
                if key in out:
                    raise PmtError(f"duplicate dict key {key!r}", cell)
            except TypeError:
                raise PmtError(f"dict key of type {type(key).__name__} is unhashable in Python", cell) from None
            out[key] = value
        return out

    def read_uniform(self) -> np.ndarray:
        start = self.pos
        uvi, n, npad = self.unpack(_UV_HEAD, "uniform vector header")
        if uvi not in _UVI_TO_KEY:
            raise PmtError(f"unknown uniform-vector subtype 0x{uvi:02x}", start)
        self.need(npad, "uniform vector padding")
        self.pos += npad
        be = _UVI_BE[uvi]
        self.need(n * be.itemsize, f"uniform vector of {n} x {be.itemsize} bytes")
        arr = np.frombuffer(self.buf, dtype=be, count=n, offset=self.pos).astype(_UVI_NATIVE[uvi])
        self.pos += n * be.itemsize
        return arr
