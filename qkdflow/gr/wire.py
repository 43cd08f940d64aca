"""GNU Radio gr-zeromq stream wire format (3.7.8 .. 3.10.x, tag-header version 1).

Sources: GNU Radio ``gr-zeromq/lib/base_impl.cc`` (send_message / load_message),
``gr-zeromq/lib/tag_headers.cc`` (gen_tag_header / parse_tag_header), read at v3.10.5.1;
digest and a real capture in /work/shared/reference/gnuradio.md sections 1.2-1.4.

Message layouts
---------------
* ``pass_tags=False``: the message is the raw item bytes, nothing else.
* ``pass_tags=True``: ``struct "<HBQQ"`` = magic 0x5FF0, version 1, offset (absolute index of the
  first item, the sender's ``nitems_read``), ntags; then per tag ``"<Q"`` absolute offset and the
  PMTs key, value, srcid (big-endian PMT encoding, :mod:`qkdflow.gr.pmt`); then the item bytes.
* PUB/SUB with a non-empty key: multipart ``[key, message]``; SUB matches the key as a prefix.
* REQ/REP: the request is a 4-byte native uint32 item count; the reply is one message as above.

Byte order. GNU Radio writes the header integers, tag offsets and items in the *host's* byte
order ("native"); every GR host in practice (x86, ARM) is little-endian, so this module fixes
little-endian ("<") on the wire regardless of our own host. A header from a big-endian host
shows magic bytes ``5f f0`` and is rejected with a message saying so. PMTs are always big-endian.

GNU Radio item types (GRC ``type`` enum of the zeromq blocks) and numpy dtypes
------------------------------------------------------------------------------
=========  ===========  ========  =============================================
GR type    C++ type     itemsize  numpy dtype (vlen > 1: subarray ``(dtype, (vlen,))``)
=========  ===========  ========  =============================================
complex    gr_complex   8         complex64 (interleaved float32 I/Q)
float      float        4         float32
int        int          4         int32
short      short        2         int16
byte       char         1         uint8 (int8 with ``signed_byte=True``; same bytes)
=========  ===========  ========  =============================================

A message item is ``itemsize*vlen`` bytes; a payload that is not a multiple of it is GNU Radio's
"Incompatible vector sizes" error, raised here as :class:`WireError`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from qkdflow.gr.pmt import deserialize_from, serialize

__all__ = [
    "GR_HEADER_MAGIC", "GR_HEADER_VERSION", "HEADER", "GR_ITEM_TYPES", "WireError", "Tag",
    "StreamMessage", "gr_item_dtype", "gr_type_of", "encode_stream", "decode_stream",
    "rebase_tags", "frame_message", "unframe_message", "encode_request", "decode_request",
]

GR_HEADER_MAGIC = 0x5FF0
GR_HEADER_VERSION = 0x01
#: Fixed part of the tag header: magic u16, version u8, offset u64, ntags u64 (19 bytes).
HEADER = struct.Struct("<HBQQ")
_TAG_OFFSET = struct.Struct("<Q")
_REQUEST = struct.Struct("<I")
_U64_LIMIT = 2**64
#: Smallest possible serialized tag: u64 offset + three one-byte PMTs.
_MIN_TAG_BYTES = _TAG_OFFSET.size + 3

GR_ITEM_TYPES: dict[str, np.dtype] = {
    "complex": np.dtype(np.complex64),
    "float": np.dtype(np.float32),
    "int": np.dtype(np.int32),
    "short": np.dtype(np.int16),
    "byte": np.dtype(np.uint8),
}


class WireError(ValueError):
    """A gr-zeromq message that does not decode, or arguments that cannot be encoded."""


@dataclass(frozen=True, slots=True)
class Tag:
    """A stream tag, named as GNU Radio's ``gr.tag_t``; ``offset`` is an absolute item index.

    ``srcid`` defaults to ``False`` (PMT_F), GNU Radio's default when a block adds a tag.
    Key, value and srcid are Python PMT objects (see :mod:`qkdflow.gr.pmt`).
    """

    offset: int
    key: Any
    value: Any
    srcid: Any = False

    def __post_init__(self) -> None:
        if not isinstance(self.offset, (int, np.integer)) or not 0 <= self.offset < _U64_LIMIT:
            raise ValueError(f"Tag offset: {self.offset!r} is not an integer in [0, 2**64)")


class StreamMessage(NamedTuple):
    """A decoded stream message. ``offset`` is None and ``tags`` empty without pass_tags."""

    items: np.ndarray
    offset: int | None
    tags: list[Tag]


def gr_item_dtype(type_name: str, vlen: int = 1, *, signed_byte: bool = False) -> np.dtype:
    """numpy dtype of one GR item of ``type_name`` (complex/float/int/short/byte) and ``vlen``."""
    if type_name not in GR_ITEM_TYPES:
        raise ValueError(f"type_name: {type_name!r} is not one of {sorted(GR_ITEM_TYPES)}")
    if not isinstance(vlen, (int, np.integer)) or isinstance(vlen, bool) or vlen < 1:
        raise ValueError(f"vlen: {vlen!r} must be an integer >= 1")
    base = np.dtype(np.int8) if (type_name == "byte" and signed_byte) else GR_ITEM_TYPES[type_name]
    return base if vlen == 1 else np.dtype((base, (int(vlen),)))


def gr_type_of(dtype: Any) -> tuple[str, int]:
    """Inverse of :func:`gr_item_dtype`: ``(type_name, vlen)``; int8 and uint8 both give ``byte``."""
    dt = np.dtype(dtype)
    base, shape = (dt.base, dt.shape) if dt.subdtype is not None else (dt, ())
    if len(shape) > 1:
        raise ValueError(f"dtype: {dt} has a multi-dimensional subarray; GR vlen is 1-D")
    vlen = shape[0] if shape else 1
    base = base.newbyteorder("=")
    if base == np.dtype(np.int8):
        return "byte", vlen
    for name, ref in GR_ITEM_TYPES.items():
        if base == ref:
            return name, vlen
    raise ValueError(f"dtype: {dt} has no GNU Radio item type (complex64/float32/int32/int16/[u]int8)")


def _wire_dtype(dtype: Any) -> tuple[np.dtype, np.dtype]:
    """(little-endian wire dtype, native dtype) for an item dtype, subarrays kept."""
    dt = np.dtype(dtype)
    base, shape = (dt.base, dt.shape) if dt.subdtype is not None else (dt, ())
    if base.kind not in "biufc" or dt.itemsize == 0:
        raise ValueError(f"dtype: {dt} is not a fixed-size numeric item type")
    le, native = base.newbyteorder("<"), base.newbyteorder("=")
    if shape:
        return np.dtype((le, shape)), np.dtype((native, shape))
    return le, native


def encode_stream(items: np.ndarray, offset: int | None = None, tags: Iterable[Tag] = ()) -> bytes:
    """Encode one gr-zeromq stream message.

    ``items``: array whose first axis counts items (shape ``(n,)`` or ``(n, vlen)``); written in
    C order, little-endian. ``offset``: absolute index of ``items[0]``; ``None`` means
    ``pass_tags=False`` (raw bytes only, and then ``tags`` must be empty). Every tag offset must
    lie in ``[offset, offset + n)``, which is all GNU Radio's sink ever puts in a message.
    """
    arr = np.asarray(items)
    if arr.ndim == 0:
        raise ValueError("items: need an array with a leading item axis, got a scalar")
    le, _ = _wire_dtype(arr.dtype)
    payload = np.ascontiguousarray(arr, dtype=le).reshape(-1).view(np.uint8)
    tags = list(tags)
    if offset is None:
        if tags:
            raise ValueError("tags: given without an offset; tags need pass_tags (an integer offset)")
        return payload.tobytes()
    if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or not 0 <= offset < _U64_LIMIT:
        raise ValueError(f"offset: {offset!r} is not an integer in [0, 2**64)")
    n = arr.shape[0]
    parts: list[Any] = [HEADER.pack(GR_HEADER_MAGIC, GR_HEADER_VERSION, int(offset), len(tags))]
    for tag in tags:
        if not isinstance(tag, Tag):
            raise ValueError(f"tags: expected Tag, got {type(tag).__name__}")
        if not offset <= tag.offset < offset + n:
            raise ValueError(f"tags: tag offset {tag.offset} is outside this message's items [{offset}, {offset + n})")
        parts.append(_TAG_OFFSET.pack(int(tag.offset)))
        parts.append(serialize(tag.key))
        parts.append(serialize(tag.value))
        parts.append(serialize(tag.srcid))
    parts.append(payload)
    return b"".join(parts)


def decode_stream(buf: bytes | bytearray | memoryview, dtype: Any, pass_tags: bool) -> StreamMessage:
    """Decode one gr-zeromq stream message (after any PUB/SUB key frame is removed).

    ``dtype``: item dtype, a subarray dtype ``(base, (vlen,))`` for vlen > 1 (see
    :func:`gr_item_dtype`). Returns items of shape ``(n,)`` or ``(n, vlen)`` in native byte
    order; on a little-endian host they are a zero-copy, read-only view of ``buf``. Tags keep the
    sender's absolute offsets; :func:`rebase_tags` maps them to the receiver's count.
    """
    view = memoryview(buf).cast("B")
    le, native = _wire_dtype(dtype)
    pos = 0
    offset: int | None = None
    tags: list[Tag] = []
    if pass_tags:
        if len(view) < HEADER.size:
            raise WireError(f"message of {len(view)} bytes is too short for the {HEADER.size}-byte gr tag header")
        magic, version, offset, ntags = HEADER.unpack_from(view, 0)
        if magic != GR_HEADER_MAGIC:
            hint = " (byte-swapped: sender is big-endian)" if magic == 0xF05F else " (sender may not use pass_tags)"
            raise WireError(f"gr header magic does not match: got 0x{magic:04x}, expected 0x5ff0{hint}")
        if version != GR_HEADER_VERSION:
            raise WireError(f"gr header version {version} is unsupported (expected 1; GNU Radio 4.0 uses 2)")
        pos = HEADER.size
        if ntags * _MIN_TAG_BYTES > len(view) - pos:
            raise WireError(f"gr header claims {ntags} tags but only {len(view) - pos} bytes follow (at byte 11)")
        for i in range(ntags):
            if len(view) - pos < _TAG_OFFSET.size:
                raise WireError(f"tag {i}: truncated offset (at byte {pos})")
            (tag_offset,) = _TAG_OFFSET.unpack_from(view, pos)
            key, pos = deserialize_from(view, pos + 8)
            value, pos = deserialize_from(view, pos)
            srcid, pos = deserialize_from(view, pos)
            tags.append(Tag(tag_offset, key, value, srcid))
    nbytes = len(view) - pos
    if nbytes % le.itemsize:
        raise WireError(
            f"Incompatible vector sizes: need a multiple of {le.itemsize} bytes per message, "
            f"got {nbytes} payload bytes")
    items = np.frombuffer(view, dtype=le, offset=pos)
    if le != native:  # big-endian host only
        items = items.astype(native)
    if offset is not None:
        n = items.shape[0]
        for tag in tags:
            if not offset <= tag.offset < offset + n:
                raise WireError(f"tag offset {tag.offset} is outside this message's items [{offset}, {offset + n})")
    return StreamMessage(items, offset, tags)


def rebase_tags(tags: Sequence[Tag], header_offset: int, nitems_written: int) -> list[Tag]:
    """Receiver-side offsets, as gr-zeromq sources compute them:
    ``local = nitems_written + (tag.offset - header_offset)``, where ``nitems_written`` is how
    many items the receiver had produced before this message's first item."""
    return [replace(t, offset=nitems_written + (t.offset - header_offset)) for t in tags]


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    raise ValueError(f"key: expected str or bytes, got {type(key).__name__}")


def frame_message(message: bytes, key: str | bytes = b"") -> list[bytes]:
    """ZeroMQ frames for one PUB message: ``[key, message]`` with a key, else ``[message]``."""
    k = _key_bytes(key)
    return [k, message] if k else [message]


def unframe_message(frames: Sequence[Any], key: str | bytes = b"") -> Any | None:
    """The message frame of a received multipart message, as gr-zeromq's sub/pull source takes it.

    With a key: ``[key..., message]`` -> message; a single frame returns ``None`` (GNU Radio drops
    it; callers should count it). Without a key exactly one frame is expected. Other shapes raise
    :class:`WireError` (GNU Radio would misparse them).
    """
    k = _key_bytes(key)
    if not k:
        if len(frames) != 1:
            raise WireError(f"unkeyed source got a {len(frames)}-frame message; is the sender using a PUB key?")
        return frames[0]
    if len(frames) == 1:
        return None
    if len(frames) != 2:
        raise WireError(f"keyed source expects [key, message], got {len(frames)} frames")
    first = bytes(frames[0]) if not isinstance(frames[0], bytes) else frames[0]
    if not first.startswith(k):
        raise WireError(f"key frame {first[:32]!r} does not start with subscribed key {k!r}")
    return frames[1]


def encode_request(nitems: int) -> bytes:
    """REQ/REP stream request: the number of items wanted, as a 4-byte little-endian uint32."""
    if not isinstance(nitems, (int, np.integer)) or isinstance(nitems, bool) or not 0 <= nitems < 2**32:
        raise ValueError(f"nitems: {nitems!r} is not an integer in [0, 2**32)")
    return _REQUEST.pack(int(nitems))


def decode_request(buf: bytes | bytearray | memoryview) -> int | None:
    """Item count of a REQ/REP request; ``None`` for a request shorter than 4 bytes, which GNU
    Radio's rep_sink reads as "whatever you have". Longer requests raise :class:`WireError`."""
    view = memoryview(buf).cast("B")
    if len(view) < _REQUEST.size:
        return None
    if len(view) > _REQUEST.size:
        raise WireError(f"request of {len(view)} bytes; expected a 4-byte uint32 item count")
    return _REQUEST.unpack_from(view, 0)[0]
