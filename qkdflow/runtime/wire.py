"""qkdflow's own wire format for frames and messages on ZeroMQ edges.

Every edge message is multipart ``[header, payload...]``:

* header: ``struct "<2sBBIQqq"`` = magic ``b"QF"``, version 1, kind, length of a JSON trailer,
  sequence number, slot ``start``, slot ``stop`` — 32 bytes — then the optional JSON trailer
  (dtype when the port does not fix it, tags, frame ``meta``; or a message's structure).
* payload: a DATA frame's raw numpy bytes (zero-copy above ``ZERO_COPY_BYTES``); a MESSAGE's
  array and bytes values, one ZeroMQ part each, referenced from the JSON structure.
* kinds: DATA, EOS (end of stream: no more frames on this edge), MESSAGE.

Sequence numbers start at 0 on every edge and increase by one per part sent on it (EOS
included); a receiver treats a gap or a repeat as an error, never as something to skip.
Messages are decoded without ``pickle``: a network peer can only send data, never code.
"""
from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from .block import Frame, Tag

MAGIC = b"QF"
VERSION = 1
DATA, EOS, MESSAGE = 0, 1, 2
HEADER = struct.Struct("<2sBBIQqq")
ZERO_COPY_BYTES = 65536  # pyzmq: copying is faster than zero-copy for small buffers


class WireError(ValueError):
    """A malformed or out-of-sequence part on an edge."""


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray) and o.size <= 64:
        return o.tolist()
    raise TypeError(f"value of type {type(o).__name__} cannot go in frame meta or tags")


def encode_frame(seq: int, frame: Frame, with_dtype: bool, cache: dict | None = None) -> list:
    """Parts for one DATA frame (``cache`` keeps the JSON of a dtype-only trailer per edge)."""
    data = frame.data
    if not frame.tags and not frame.meta:  # the hot path: no JSON per frame
        if not with_dtype:
            js = b""
        elif cache is not None and data.dtype in cache:
            js = cache[data.dtype]
        else:
            js = _trailer_json(frame, with_dtype)
            if cache is not None:
                cache[data.dtype] = js
    else:
        js = _trailer_json(frame, with_dtype)
    if not data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
    return [HEADER.pack(MAGIC, VERSION, DATA, len(js), seq, frame.start, frame.stop) + js, data]


def _trailer_json(frame: Frame, with_dtype: bool) -> bytes:
    trailer: dict[str, Any] = {}
    data = frame.data
    if with_dtype:
        trailer["dtype"] = data.dtype.descr if data.dtype.names else data.dtype.str
    if frame.tags:
        trailer["tags"] = [[t.offset, t.key, t.value, t.srcid] for t in frame.tags]
    if frame.meta:
        trailer["meta"] = frame.meta
    return json.dumps(trailer, default=_json_default, separators=(",", ":")).encode() if trailer else b""


def encode_eos(seq: int) -> list:
    return [HEADER.pack(MAGIC, VERSION, EOS, 0, seq, 0, 0)]


def encode_message(seq: int, msg: dict) -> list:
    """Parts for one message: JSON structure + one part per array/bytes value."""
    bufs: list = []

    def enc(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): enc(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        if isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            bufs.append(a)
            dt = a.dtype.descr if a.dtype.names else a.dtype.str
            return {"__nd__": len(bufs) - 1, "dtype": dt, "shape": list(a.shape)}
        if isinstance(v, (bytes, bytearray, memoryview)):
            bufs.append(bytes(v))
            return {"__b__": len(bufs) - 1}
        return v

    js = json.dumps(enc(msg), default=_json_default, separators=(",", ":")).encode()
    return [HEADER.pack(MAGIC, VERSION, MESSAGE, len(js), seq, 0, 0) + js, *bufs]


def decode_header(head: bytes, cache: dict | None = None) -> tuple[int, int, int, int, dict | None]:
    """Return ``(kind, seq, start, stop, trailer)``; raise WireError on garbage.

    ``cache`` (per edge) remembers the last dtype-only DATA trailer: an untyped edge repeats it every frame."""
    try:
        magic, ver, kind, jlen, seq, start, stop = HEADER.unpack_from(head)
    except struct.error:
        raise WireError(f"header too short ({len(head)} bytes)") from None
    if magic != MAGIC or ver != VERSION or kind > MESSAGE or len(head) != HEADER.size + jlen:  # one test per part
        if magic != MAGIC:
            raise WireError(f"bad magic {magic!r} (not a qkdflow peer?)")
        if ver != VERSION:
            raise WireError(f"unsupported wire version {ver}")
        if kind not in (DATA, EOS, MESSAGE):
            raise WireError(f"unknown frame kind {kind}")
        raise WireError(f"header length {len(head)} does not match trailer length {jlen}")
    if not jlen:
        return kind, seq, start, stop, None
    raw = head[HEADER.size:]
    if cache is not None and kind == DATA and cache.get("raw") == raw:
        return kind, seq, start, stop, cache["trailer"]
    try:
        trailer = json.loads(raw)
    except ValueError as e:
        raise WireError(f"corrupt header trailer: {e}") from None
    if cache is not None and kind == DATA and isinstance(trailer, dict) and trailer.keys() == {"dtype"}:
        trailer["_np"] = _dtype(trailer["dtype"])  # parsed once per edge
        cache["raw"], cache["trailer"] = bytes(raw), trailer
    return kind, seq, start, stop, trailer


def _dtype(spec: Any) -> np.dtype:
    try:
        if isinstance(spec, list):
            return np.dtype([tuple(x) for x in spec])
        return np.dtype(spec)
    except (TypeError, ValueError) as e:
        raise WireError(f"bad dtype {spec!r}: {e}") from None


def decode_frame(start: int, stop: int, trailer: dict | None, payload: Any, dtype: np.dtype | None) -> Frame:
    if trailer:
        if not isinstance(trailer, dict):
            raise WireError("frame trailer is not a mapping")
        if "dtype" in trailer:
            dtype = trailer.get("_np") or _dtype(trailer["dtype"])
        tags = [Tag(int(o), k, v, s) for o, k, v, s in trailer["tags"]] if "tags" in trailer else []
        meta = trailer.get("meta", {})
    else:
        tags, meta = [], {}
    if dtype is None:
        raise WireError("frame without dtype on an untyped port")
    try:
        data = np.frombuffer(payload, dtype=dtype)
    except ValueError:  # numpy: "buffer size must be a multiple of element size"
        raise WireError(f"payload of {memoryview(payload).nbytes} bytes is not a whole number of "
                        f"{dtype.itemsize}-byte items") from None
    return Frame(start, stop, data, tags, meta)


def decode_message(trailer: dict | None, bufs: list) -> dict:
    def dec(v: Any) -> Any:
        if isinstance(v, dict):
            if "__nd__" in v:
                i = v["__nd__"]
                if not isinstance(i, int) or not 0 <= i < len(bufs):
                    raise WireError(f"message references missing array part {i!r}")
                dt = _dtype(v["dtype"])
                mv = memoryview(bufs[i])
                shape = tuple(v.get("shape", ()))
                n = int(np.prod(shape)) if shape else 1
                if mv.nbytes != n * dt.itemsize:
                    raise WireError(f"array part {i} has {mv.nbytes} bytes, expected {n * dt.itemsize}")
                return np.frombuffer(mv, dtype=dt).reshape(shape)
            if "__b__" in v:
                i = v["__b__"]
                if not isinstance(i, int) or not 0 <= i < len(bufs):
                    raise WireError(f"message references missing bytes part {i!r}")
                return bytes(bufs[i])
            return {k: dec(x) for k, x in v.items()}
        if isinstance(v, list):
            return [dec(x) for x in v]
        return v

    if not isinstance(trailer, dict):
        raise WireError("message body is not a mapping")
    return dec(trailer)
