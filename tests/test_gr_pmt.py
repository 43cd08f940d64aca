"""PMT codec: GNU Radio 3.10.5.1 golden bytes, strict decoding, round-trip properties."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from qkdflow.gr.pmt import Pair, PmtError, UInt64, deserialize, deserialize_from, serialize


def same(a, b) -> bool:
    """Structural PMT equality: types must match exactly; floats compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, Pair):
        return same(a.car, b.car) and same(a.cdr, b.cdr)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


# Reference gnuradio.md 1.6. The "a:1 then b:#t" row there reads ...6203 09...: byte 6 is 03,
# which cannot be #t (PST_TRUE = 00) and makes the 19 bytes unparseable; pmt_serialize.cc writes
# 00 for PMT_T, so the fixture below uses 00 (see test_reference_dict_typo_is_rejected).
GOLDEN = [
    ("seq", "020003736571"),
    (7, "0300000007"),
    (2**40, "0d0000010000000000"),
    (1.5, "043ff8000000000000"),
    (UInt64(5), "0b0000000000000005"),
    (Pair("seq", 3), "070200037365710300000003"),
    ({"k": 1}, "09070200016b030000000106"),
    ({"a": 1, "b": True}, "09070200016200090702000161030000000106"),
    (Pair(None, np.array([1, 2, 3], np.uint8)), "07060a00000000030100010203"),
    (Pair({"k": 1}, np.array([1.0], np.float32)), "0709070200016b0300000001060a080000000101003f800000"),
    (np.array([1 + 2j], np.complex64), "0a0a0000000101003f80000040000000"),
    ((1, "a"), "0c00000002030000000102000161"),
]


@pytest.mark.parametrize("obj,hexstr", GOLDEN, ids=[h for _, h in GOLDEN])
def test_golden_encode(obj, hexstr):
    assert serialize(obj).hex() == hexstr


@pytest.mark.parametrize("obj,hexstr", GOLDEN, ids=[h for _, h in GOLDEN])
def test_golden_decode(obj, hexstr):
    assert same(deserialize(bytes.fromhex(hexstr)), obj)


def test_reference_dict_typo_is_rejected():
    with pytest.raises(PmtError):
        deserialize(bytes.fromhex("09070200016203090702000161030000000106"))


@pytest.mark.parametrize("value,hexstr", [
    (True, "00"), (False, "01"), (None, "06"),
    (2**31 - 1, "037fffffff"), (-(2**31), "0380000000"), (-1, "03ffffffff"),
    (2**31, "0d0000000080000000"), (-(2**31) - 1, "0dffffffff7fffffff"),
    (2**63 - 1, "0d7fffffffffffffff"), (-(2**63), "0d8000000000000000"),
    (UInt64(2**64 - 1), "0bffffffffffffffff"), (UInt64(0), "0b0000000000000000"),
    (complex(1.0, -2.0), "053ff0000000000000c000000000000000"),
    ("", "020000"), ("é", "020002c3a9"),
    ([], "0800000000"), ((), "0c00000000"), ([1, "x"], "080000000203000000010200017"+"8"),
    (Pair(1, Pair(2, None)), "07030000000107030000000206"),
    (np.int64(7), "0300000007"), (np.float32(0.5), "043fe0000000000000"), (np.bool_(True), "00"),
])
def test_scalar_and_container_bytes(value, hexstr):
    assert serialize(value).hex() == hexstr


def test_bool_and_uint64_do_not_become_plain_ints():
    assert type(deserialize(serialize(True))) is bool
    assert type(deserialize(serialize(UInt64(3)))) is UInt64
    assert type(deserialize(serialize(3))) is int


def test_empty_dict_is_nil():
    assert serialize({}) == b"\x06"
    assert deserialize(b"\x06") is None


def test_dict_order_round_trips_and_newest_first_on_wire():
    d = {"z": 1, "a": 2, "m": 3}
    raw = serialize(d)
    assert raw.startswith(bytes.fromhex("0907020001") + b"m")  # last inserted = newest = first
    assert list(deserialize(raw)) == ["z", "a", "m"]


@pytest.mark.parametrize("dtype,subtype,elem_hex", [
    (np.uint8, 0x00, "fe"), (np.int8, 0x01, "fe"), (np.uint16, 0x02, "fffe"), (np.int16, 0x03, "fffe"),
    (np.uint32, 0x04, "fffffffe"), (np.int32, 0x05, "fffffffe"),
    (np.uint64, 0x06, "fffffffffffffffe"), (np.int64, 0x07, "fffffffffffffffe"),
    (np.float32, 0x08, "c0000000"), (np.float64, 0x09, "c000000000000000"),
    (np.complex64, 0x0A, "c00000003f800000"), (np.complex128, 0x0B, "c0000000000000003ff0000000000000"),
])
def test_uniform_vector_subtypes_big_endian(dtype, subtype, elem_hex):
    kind = np.dtype(dtype).kind
    value = np.iinfo(dtype).max - 1 if kind == "u" else {"i": -2, "f": -2.0, "c": -2 + 1j}[kind]
    arr = np.array([value], dtype=dtype)
    expect = bytes([0x0A, subtype, 0, 0, 0, 1, 1, 0]).hex() + elem_hex
    assert serialize(arr).hex() == expect
    assert serialize(arr.astype(arr.dtype.newbyteorder(">"))).hex() == expect  # input byte order irrelevant
    back = deserialize(bytes.fromhex(expect))
    assert back.dtype == np.dtype(dtype) and back.tolist() == arr.tolist()
    back[0] = 0  # decoded arrays are owned and writable


def test_uniform_vector_honours_npad_like_gnuradio():
    # npad = 3 with three pad bytes: GR skips npad bytes, so do we.
    assert deserialize(bytes.fromhex("0a00000000020300000007ff")).tolist() == [7, 255]


@pytest.mark.parametrize("hexstr,offset,fragment", [
    ("", 0, "truncated PMT tag"),
    ("03000000", 1, "truncated int32"),
    ("0300000007ff", 5, "trailing garbage"),
    ("ee", 0, "unknown PMT tag 0xee"),
    ("0a0c000000000100", 1, "unknown uniform-vector subtype 0x0c"),
    ("0a020000000201000001", 8, "truncated uniform vector"),
    ("0200056162", 3, "truncated symbol"),
    ("0800000003", 5, "truncated vector items"),
    ("0702000161", 5, "truncated pair cdr"),
    ("0902000161", 1, "not hold a key/value pair"),
    ("09070200016103000000010300000001", 11, "dict chain ends in tag 0x03"),
    ("0907020001610300000001090702000161030000000206", 1, "duplicate dict key"),
    ("0902ff", 0, ""),  # any PmtError
    ("020002c328", 3, "not valid UTF-8"),
])
def test_strict_decoder_reports_offsets(hexstr, offset, fragment):
    with pytest.raises(PmtError) as info:
        deserialize(bytes.fromhex(hexstr))
    assert fragment in str(info.value)
    if fragment:
        assert info.value.offset == offset


def test_pmt_error_is_value_error():
    assert issubclass(PmtError, ValueError)


def test_deep_nesting_is_a_pmt_error_not_recursion_error():
    with pytest.raises(PmtError, match="nests too deeply"):
        deserialize(b"\x08\x00\x00\x00\x01" * 20000 + b"\x06")


def test_long_pair_list_is_iterative():
    lst = None
    for i in range(50_000):
        lst = Pair(i, lst)
    back = deserialize(serialize(lst))
    n = 0
    while back is not None:
        assert back.car == 49_999 - n
        back, n = back.cdr, n + 1
    assert n == 50_000


@pytest.mark.parametrize("bad", [
    b"raw", {1, 2}, object(), np.zeros((2, 2)), np.zeros(2, dtype=bool), 2**63, -(2**63) - 1,
    "x" * 1025, [1, b"x"], np.zeros(2, dtype="U3"),
])
def test_unencodable_raises(bad):
    with pytest.raises(PmtError):
        serialize(bad)


def test_uint64_range_checked():
    with pytest.raises(ValueError, match="UInt64"):
        UInt64(-1)
    with pytest.raises(ValueError, match="UInt64"):
        UInt64(2**64)


def test_deserialize_from_walks_concatenated_pmts():
    buf = serialize("mark") + serialize(7) + serialize(False)
    key, pos = deserialize_from(buf, 0)
    value, pos = deserialize_from(buf, pos)
    srcid, pos = deserialize_from(buf, pos)
    assert (key, value, srcid, pos) == ("mark", 7, False, len(buf))


# ---------------------------------------------------------------- properties

_UV_DTYPES = st.sampled_from(["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "c8", "c16"])
_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1).map(UInt64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    _UV_DTYPES.flatmap(lambda dt: hnp.arrays(np.dtype(dt), st.integers(0, 8))),
)
_keys = st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1))
pmts = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.builds(Pair, children, children),
        st.dictionaries(_keys, children, min_size=1, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(pmts)
def test_round_trip_object(obj):
    raw = serialize(obj)
    back = deserialize(raw)
    assert same(back, obj)
    assert serialize(back) == raw  # canonical bytes re-encode identically


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_only_pmt_errors(raw):
    try:
        obj = deserialize(raw)
    except PmtError:
        return
    # Whatever decodes must re-encode to something that decodes to the same object.
    assert same(deserialize(serialize(obj)), obj)
