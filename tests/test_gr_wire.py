"""gr-zeromq stream wire format: GR 3.10.5.1 capture bytes, strict decoding, round trips."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qkdflow.gr.pmt import PmtError, serialize
from qkdflow.gr.wire import (
    GR_ITEM_TYPES, HEADER, Tag, WireError, decode_stream, decode_request, encode_request,
    encode_stream, frame_message, gr_item_dtype, gr_type_of, rebase_tags, unframe_message,
)


def capture_message() -> bytes:
    """GR push_sink(pass_tags=True): 1000 floats, tags 'mark'=offset at 0/250/500/750, srcid gr_peer."""
    tags = [Tag(o, "mark", o, "gr_peer") for o in (0, 250, 500, 750)]
    return encode_stream(np.arange(1000, dtype=np.float32), 0, tags)


def test_golden_capture_prefix():
    # gnuradio.md 1.3: real capture of the first message, 4139 = 19 + 4 x 30 + 4000 bytes.
    msg = capture_message()
    assert len(msg) == 4139
    prefix = ("f05f01" "0000000000000000" "0400000000000000"
              "0000000000000000" "0200046d61726b" "0300000000" "02000767725f70656572"
              "fa00000000000000")
    assert msg.hex().startswith(prefix)
    # tag 2 value 250 = 0xfa as big-endian int32 right after its key
    assert msg[19 + 30 + 8 + 7:19 + 30 + 8 + 12].hex() == "03000000fa"
    assert msg[-4000:] == np.arange(1000, dtype="<f4").tobytes()


def test_golden_capture_decodes():
    items, offset, tags = decode_stream(capture_message(), np.float32, True)
    assert offset == 0
    assert items.dtype == np.float32 and items.tolist() == list(range(1000))
    assert [(t.offset, t.key, t.value, t.srcid) for t in tags] == [
        (o, "mark", o, "gr_peer") for o in (0, 250, 500, 750)]


def test_raw_messages_are_little_endian_items_only():
    assert encode_stream(np.array([1.0], np.float32)).hex() == "0000803f"
    assert encode_stream(np.array([1 + 2j], np.complex64)).hex() == "0000803f00000040"  # interleaved I/Q
    assert encode_stream(np.array([1, -2], ">i2")).hex() == "0100feff"  # big-endian input converted
    items, offset, tags = decode_stream(bytes.fromhex("0100feff"), np.int16, False)
    assert items.tolist() == [1, -2] and offset is None and tags == []


def test_header_is_struct_hbqq_with_default_srcid_false():
    msg = encode_stream(np.zeros(3, np.int16), 2**40, [Tag(2**40 + 2, "k", 1.5)])
    assert HEADER.unpack_from(msg) == (0x5FF0, 1, 2**40, 1)
    tag_bytes = struct.pack("<Q", 2**40 + 2) + serialize("k") + serialize(1.5) + b"\x01"  # srcid PMT_F
    assert msg[19:19 + len(tag_bytes)] == tag_bytes
    assert len(msg) == 19 + len(tag_bytes) + 6


def test_gr_type_table():
    assert {k: v.itemsize for k, v in GR_ITEM_TYPES.items()} == {
        "complex": 8, "float": 4, "int": 4, "short": 2, "byte": 1}
    assert gr_item_dtype("float") == np.float32
    assert gr_item_dtype("byte", signed_byte=True) == np.int8
    dt = gr_item_dtype("complex", 4)
    assert dt.itemsize == 32 and dt.base == np.complex64 and dt.shape == (4,)
    for name in GR_ITEM_TYPES:
        for vlen in (1, 3):
            assert gr_type_of(gr_item_dtype(name, vlen)) == (name, vlen)
    assert gr_type_of(np.int8) == ("byte", 1)
    with pytest.raises(ValueError, match="type_name"):
        gr_item_dtype("double")
    with pytest.raises(ValueError, match="vlen"):
        gr_item_dtype("float", 0)
    with pytest.raises(ValueError, match="dtype"):
        gr_type_of(np.float64)


def test_vlen_items_decode_as_rows():
    dt = gr_item_dtype("short", 3)
    rows = np.arange(12, dtype=np.int16).reshape(4, 3)
    msg = encode_stream(rows, 10, [Tag(13, "last", True)])
    items, offset, tags = decode_stream(msg, dt, True)
    assert items.shape == (4, 3) and (items == rows).all() and tags[0].offset == 13
    with pytest.raises(WireError, match="Incompatible vector sizes: need a multiple of 6 bytes"):
        decode_stream(encode_stream(np.arange(4, dtype=np.int16)), dt, False)


@pytest.mark.parametrize("offset,tags,match", [
    (None, [Tag(0, "k", 1)], "offset"),
    (5, [Tag(4, "k", 1)], r"outside this message's items \[5, 8\)"),
    (5, [Tag(8, "k", 1)], "outside"),
    (-1, [], "offset"),
    (2**64, [], "offset"),
    (0, ["not a tag"], "expected Tag"),
])
def test_encoder_rejects(offset, tags, match):
    with pytest.raises(ValueError, match=match):
        encode_stream(np.zeros(3, np.float32), offset, tags)


def test_encoder_rejects_bad_items():
    with pytest.raises(ValueError, match="items"):
        encode_stream(np.float32(1.0), 0)
    with pytest.raises(ValueError, match="dtype"):
        encode_stream(np.array(["a"]), 0)
    with pytest.raises(ValueError, match="Tag offset"):
        Tag(-1, "k", 1)


def _header(offset=0, ntags=0, magic=0x5FF0, version=1) -> bytes:
    return HEADER.pack(magic, version, offset, ntags)


@pytest.mark.parametrize("buf,match", [
    (b"\xf0\x5f\x01" + b"\x00" * 15, "too short"),
    (_header(magic=0xF05F), "byte-swapped"),
    (_header(magic=0x1234), "magic does not match"),
    (_header(version=2), "version 2"),
    (_header(ntags=1) + b"\x00" * 10, "claims 1 tags"),
    (_header(ntags=1) + struct.pack("<Q", 0) + b"\x02\x00\x01k" + b"\x00", "truncated"),
    (_header(offset=0, ntags=1) + struct.pack("<Q", 1) + b"\x02\x00\x01k\x00\x01" + b"\x00" * 4,
     r"outside this message's items \[0, 1\)"),
    (_header() + b"\x00" * 5, "Incompatible vector sizes: need a multiple of 4 bytes"),
])
def test_decoder_rejects(buf, match):
    with pytest.raises(ValueError, match=match):
        decode_stream(buf, np.float32, True)


def test_decoder_pmt_errors_carry_absolute_offsets():
    buf = _header(ntags=1) + struct.pack("<Q", 0) + b"\xee\x00\x00" + b"\x00" * 4
    with pytest.raises(PmtError) as info:
        decode_stream(buf, np.float32, True)
    assert info.value.offset == 27


def test_decoded_items_view_the_buffer():
    buf = bytearray(encode_stream(np.arange(4, dtype=np.int32), 0))
    items = decode_stream(buf, np.int32, True).items
    buf[-4:] = struct.pack("<i", 99)
    assert items[-1] == 99  # zero-copy on little-endian hosts


def test_rebase_tags_formula():
    tags = [Tag(1000, "a", 1), Tag(1003, "b", 2)]
    assert [t.offset for t in rebase_tags(tags, 1000, 7)] == [7, 10]
    assert [t.offset for t in rebase_tags(tags, 1000, 1000)] == [1000, 1003]


def test_pub_sub_key_framing():
    assert frame_message(b"data", "") == [b"data"]
    assert frame_message(b"data", "chan") == [b"chan", b"data"]
    assert unframe_message([b"data"]) == b"data"
    assert unframe_message([b"chan-7", b"data"], b"chan") == b"data"  # prefix match
    assert unframe_message([b"data"], "chan") is None  # GR drops single frames at keyed sources
    with pytest.raises(WireError, match="unkeyed"):
        unframe_message([b"chan", b"data"])
    with pytest.raises(WireError, match="does not start"):
        unframe_message([b"other", b"data"], "chan")
    with pytest.raises(WireError, match="3 frames"):
        unframe_message([b"chan", b"x", b"y"], "chan")


def test_req_rep_request():
    assert encode_request(1000).hex() == "e8030000"
    assert decode_request(bytes.fromhex("e8030000")) == 1000
    assert decode_request(b"") is None and decode_request(b"\x01\x02") is None
    with pytest.raises(WireError):
        decode_request(b"\x00" * 5)
    with pytest.raises(ValueError, match="nitems"):
        encode_request(2**32)


_GR_DTYPES = st.builds(gr_item_dtype, st.sampled_from(sorted(GR_ITEM_TYPES)), st.integers(1, 4),
                       signed_byte=st.booleans())
_TAG_PMTS = st.one_of(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(),
                      st.floats(allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(dtype=_GR_DTYPES, n=st.integers(0, 40), offset=st.integers(0, 2**63), data=st.data(),
       pass_tags=st.booleans())
def test_round_trip(dtype, n, offset, data, pass_tags):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8).tobytes()
    items = np.frombuffer(raw, dtype=dtype)  # any bit pattern, NaNs included
    tags = []
    if pass_tags and n:
        rel = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
        tags = [Tag(offset + r, data.draw(_TAG_PMTS), data.draw(_TAG_PMTS), data.draw(_TAG_PMTS)) for r in rel]
    msg = encode_stream(items, offset if pass_tags else None, tags)
    back, back_offset, back_tags = decode_stream(msg, dtype, pass_tags)
    assert back.shape == items.shape and back.tobytes() == items.tobytes()
    assert back_offset == (offset if pass_tags else None)
    assert back_tags == tags
    assert len(msg) >= n * dtype.itemsize
