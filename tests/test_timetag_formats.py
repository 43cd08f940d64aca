"""Time-tag file formats: PTU (PicoQuant), qkdflow raw, Swabian Dump, CSV — decoding, round trips, errors."""
from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow.streams import TAG_DTYPE
from qkdflow.timetag import (
    MARKER_CHANNEL_BASE,
    SWABIAN_DTYPE,
    T3_DTYPE,
    CsvTagReader,
    PtuReader,
    PtuWriter,
    RawTagReader,
    SwabianDumpReader,
    TimeTagError,
    TimeTagWarning,
    iter_tags,
    make_tags,
    open_tag_reader,
    read_csv_tags,
    tags_to_t3,
    write_csv_tags,
    write_ptu,
    write_raw_tags,
    write_swabian_dump,
)
from qkdflow.timetag import ptu
from qkdflow.timetag.ptu import _encode_tag

T2_TYPES = [ptu.RT_HYDRAHARP2_T2, ptu.RT_HYDRAHARP_V1_T2, ptu.RT_GENERIC_T2, ptu.RT_TIMEHARP260P_T2]
T3_TYPES = [ptu.RT_HYDRAHARP2_T3, ptu.RT_HYDRAHARP_V1_T3, ptu.RT_GENERIC_T3, ptu.RT_PICOHARP_T3]


def random_tags(rng: np.random.Generator, n: int, max_gap_ps: int, channels: tuple[int, int] = (0, 5)) -> np.ndarray:
    t = np.cumsum(rng.integers(0, max_gap_ps, n)).astype(np.int64)
    return make_tags(t, rng.integers(*channels, n))


def ptu_file(path, record_type: int, records: list[int], gres_s: float = 1e-12, res_s: float = 1e-12,
             n_records: int | None = None, extra: bytes = b"") -> None:
    """A PTU file with hand-made records (header via our tag encoder, records straight from the spec)."""
    head = ptu.MAGIC + b"1.0.00\x00\x00"
    head += _encode_tag("TTResultFormat_TTTRRecType", record_type)
    head += _encode_tag("MeasDesc_GlobalResolution", gres_s)
    head += _encode_tag("MeasDesc_Resolution", res_s)
    head += _encode_tag("TTResult_NumberOfRecords", len(records) if n_records is None else n_records)
    head += _encode_tag("Header_End", None)
    path.write_bytes(head + np.array(records, dtype="<u4").tobytes() + extra)


# ------------------------------------------------------------------------------------ PTU known answers
def hh(special: int, ch: int, field: int) -> int:
    return (special << 31) | (ch << 25) | field


def test_hydraharp_v2_t2_decodes_per_picoquant_spec(tmp_path):
    p = tmp_path / "a.ptu"
    recs = [hh(0, 2, 5),            # input field 2 at 5 -> channel 3
            hh(1, 0, 7),            # sync at 7 -> channel 0
            hh(1, 63, 3),           # overflow x3
            hh(0, 0, 1),            # channel 1 at 3 * 2^25 + 1
            hh(1, 63, 0),           # overflow with field 0 = one wrap
            hh(1, 4, 9),            # marker bits 4 at 4 * 2^25 + 9
            hh(0, 63, 11)]          # input field 63 -> channel 64
    ptu_file(p, ptu.RT_HYDRAHARP2_T2, recs)
    r = PtuReader(p, include_markers=True)
    tags = r.read_all()
    w = 1 << 25
    assert tags["time_ps"].tolist() == [5, 7, 3 * w + 1, 4 * w + 9, 4 * w + 11]
    assert tags["channel"].tolist() == [3, 0, 1, MARKER_CHANNEL_BASE + 4, 64]
    assert r.stats.overflow_records == 2 and r.stats.markers == 1
    # without markers they are counted, not yielded
    r2 = PtuReader(p)
    assert r2.read_all()["channel"].tolist() == [3, 0, 1, 64]
    assert r2.stats.markers == 1


def test_hydraharp_v1_overflow_is_one_wrap_of_33552000_regardless_of_field(tmp_path):
    p = tmp_path / "v1.ptu"
    ptu_file(p, ptu.RT_HYDRAHARP_V1_T2, [hh(1, 63, 3), hh(0, 1, 10), hh(1, 63, 0), hh(1, 63, 0), hh(0, 1, 20)])
    tags = PtuReader(p).read_all()
    assert tags["time_ps"].tolist() == [33552000 + 10, 3 * 33552000 + 20]
    assert tags["channel"].tolist() == [2, 2]


def test_non_integer_resolution_rounds_to_nearest_ps(tmp_path):
    p = tmp_path / "r.ptu"
    ptu_file(p, ptu.RT_GENERIC_T2, [hh(0, 0, 1), hh(0, 0, 3), hh(1, 63, 1), hh(0, 0, 0)], gres_s=2.5e-12)
    assert PtuReader(p).read_all()["time_ps"].tolist() == [2, 8, 83886080]   # rint(2.5), rint(7.5), 2.5*2^25


def test_picoharp_t2_and_t3_known_answers(tmp_path):
    p2 = tmp_path / "ph2.ptu"
    # ch 1 at 100; overflow (ch 15, low bits 0); marker 2 (low bits carry it); ch 0 (sync input) at 50
    ptu_file(p2, ptu.RT_PICOHARP_T2, [(1 << 28) | 100, (15 << 28), (15 << 28) | 0x1232, (0 << 28) | 50],
             gres_s=4e-12)
    tags = PtuReader(p2, include_markers=True).read_all()
    assert tags["time_ps"].tolist() == [400, 4 * (210698240 + 0x1230), 4 * (210698240 + 50)]
    assert tags["channel"].tolist() == [1, MARKER_CHANNEL_BASE + 2, 0]
    p3 = tmp_path / "ph3.ptu"
    recs = [(2 << 28) | (17 << 16) | 9, (15 << 28) | 4, (15 << 28) | (0 << 16) | 0, (4 << 28) | (5 << 16) | 3]
    ptu_file(p3, ptu.RT_PICOHARP_T3, recs, gres_s=12.5e-9, res_s=4e-12)
    r = PtuReader(p3, include_markers=False)
    t3 = np.concatenate(list(r.iter_t3()))
    assert t3["nsync"].tolist() == [9, 2 * 65536 + 3]
    assert t3["dtime"].tolist() == [17, 5]
    assert t3["channel"].tolist() == [2, 4]
    # the (15, field 0, nsync 4) record is an overflow too: the field (not nsync) decides
    assert r.stats.overflow_records == 2


def test_hydraharp_t3_overflow_count_and_v1_rule(tmp_path):
    p = tmp_path / "hh3.ptu"
    recs = [(0 << 31) | (1 << 25) | (100 << 10) | 5, hh(1, 63, 2), (0 << 31) | (0 << 25) | (7 << 10) | 1]
    ptu_file(p, ptu.RT_HYDRAHARP2_T3, recs, gres_s=1e-9, res_s=1e-12)
    t3 = np.concatenate(list(PtuReader(p).iter_t3()))
    assert t3["nsync"].tolist() == [5, 2 * 1024 + 1]
    assert t3["dtime"].tolist() == [100, 7]
    assert t3["channel"].tolist() == [2, 1]
    ptu_file(p, ptu.RT_HYDRAHARP_V1_T3, recs, gres_s=1e-9, res_s=1e-12)
    assert np.concatenate(list(PtuReader(p).iter_t3()))["nsync"].tolist() == [5, 1024 + 1]
    # T3 tags in ps: nsync * sync period + dtime * resolution
    tags = PtuReader(p).read_all()
    assert tags["time_ps"].tolist() == [5 * 1000 + 100, 1025 * 1000 + 7]


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("record_type", T2_TYPES)
def test_ptu_t2_round_trip_across_chunks(tmp_path, record_type):
    rng = np.random.default_rng(11)
    tags = random_tags(rng, 20000, 400_000)
    tags["time_ps"][-50:] += 3 * (1 << 25) * 1000  # long gap: multi-wrap overflow
    p = tmp_path / "rt.ptu"
    n_rec = write_ptu(p, tags, record_type)
    r = PtuReader(p, chunk_records=997)
    back = np.concatenate(list(r))
    assert back.dtype == TAG_DTYPE
    np.testing.assert_array_equal(back, tags)
    assert r.stats.records == n_rec and r.stats.overflow_records == n_rec - tags.size > 0


def test_ptu_picoharp_t2_round_trip_quantises_to_resolution(tmp_path):
    rng = np.random.default_rng(12)
    tags = random_tags(rng, 5000, 3_000_000)
    p = tmp_path / "ph.ptu"
    write_ptu(p, tags, ptu.RT_PICOHARP_T2, global_resolution_s=4e-12)
    back = PtuReader(p, chunk_records=333).read_all()
    np.testing.assert_array_equal(back["time_ps"], tags["time_ps"] // 4 * 4)
    np.testing.assert_array_equal(back["channel"], tags["channel"])


@pytest.mark.parametrize("record_type", T3_TYPES)
def test_ptu_t3_round_trip(tmp_path, record_type):
    rng = np.random.default_rng(13)
    tags = random_tags(rng, 20000, 200_000, channels=(1, 5))
    t3 = tags_to_t3(tags, sync_period_ps=12500, resolution_ps=4)
    p = tmp_path / "t3.ptu"
    write_ptu(p, t3, record_type, global_resolution_s=12.5e-9, resolution_s=4e-12)
    r = PtuReader(p, chunk_records=1001)
    back = np.concatenate(list(r.iter_t3()))
    assert back.dtype == T3_DTYPE
    np.testing.assert_array_equal(back, t3)
    tags_back = PtuReader(p).read_all()
    np.testing.assert_array_equal(tags_back["time_ps"], tags["time_ps"] // 4 * 4)


def test_ptu_markers_round_trip_and_are_exempt_from_order_check(tmp_path):
    p = tmp_path / "m.ptu"
    with PtuWriter(p, ptu.RT_HYDRAHARP2_T2, 1e-12) as w:
        w.write(make_tags([10, 20], [1, 2]))
        w.write(make_tags([25, 40], [MARKER_CHANNEL_BASE + 3, 1]))
    back = PtuReader(p, include_markers=True).read_all()
    assert back["channel"].tolist() == [1, 2, MARKER_CHANNEL_BASE + 3, 1]
    assert back["time_ps"].tolist() == [10, 20, 25, 40]
    # PicoQuant markers have coarse timing and may precede the photon before them: not an error
    ptu_file(p, ptu.RT_HYDRAHARP2_T2, [hh(0, 0, 20), hh(1, 2, 15), hh(0, 1, 40)])
    back = PtuReader(p, include_markers=True).read_all()
    assert back["time_ps"].tolist() == [20, 15, 40]
    assert back["channel"].tolist() == [1, MARKER_CHANNEL_BASE + 2, 2]


def test_ptu_header_strings_blobs_arrays(tmp_path):
    p = tmp_path / "h.ptu"
    write_ptu(p, make_tags([1, 2], [1, 2]), extra_tags={"File_Comment2": "détecteur", "Blob": b"\x01\x02\x03"})
    raw = p.read_bytes()
    # splice a wide string and a float array tag (hand-encoded per the tag layout) before Header_End
    end = raw.index(b"Header_End")
    wide = "Bob DU".encode("utf-16-le") + b"\x00\x00"
    wide += b"\x00" * (-len(wide) % 8)
    farr = np.array([1.5, -2.0], "<f8").tobytes()
    extra = struct.pack("<32siIq", b"WideTag", -1, ptu.TY_WIDESTRING, len(wide)) + wide
    extra += struct.pack("<32siIq", b"Arr", 0, ptu.TY_FLOAT8ARRAY, len(farr)) + farr
    p.write_bytes(raw[:end] + extra + raw[end:])
    r = PtuReader(p)
    h = r.header.tags
    assert h["File_Comment2"] == "détecteur"
    assert h["Blob"][:3] == b"\x01\x02\x03"
    assert h["WideTag"] == "Bob DU"
    np.testing.assert_array_equal(h["Arr(0)"], [1.5, -2.0])
    assert h["CreatorSW_Name"] == "qkdflow" and h["Measurement_Mode"] == 2
    assert r.read_all()["time_ps"].tolist() == [1, 2]


def test_ptu_cross_check_with_ptufile(tmp_path):
    ptufile = pytest.importorskip("ptufile")
    rng = np.random.default_rng(14)
    # detectors on channels 1..4 (record fields 0..3) and the sync: ptufile reports field numbers, sync as 0
    tags = random_tags(rng, 50000, 100_000)
    for rt in (ptu.RT_HYDRAHARP2_T2, ptu.RT_HYDRAHARP_V1_T2, ptu.RT_GENERIC_T2):
        p = tmp_path / f"x{rt:x}.ptu"
        write_ptu(p, tags, rt)
        ours = PtuReader(p, chunk_records=4096).read_all()
        theirs = ptufile.PtuFile(p).decode_records()
        theirs = theirs[theirs["channel"] >= 0]
        np.testing.assert_array_equal(ours["time_ps"], theirs["time"].astype(np.int64))
        expected = np.where(ours["channel"] == 0, 0, ours["channel"] - 1)
        np.testing.assert_array_equal(expected, theirs["channel"])
    t3 = tags_to_t3(random_tags(rng, 30000, 50_000, channels=(1, 5)), 12500, 8)
    for rt in (ptu.RT_HYDRAHARP2_T3, ptu.RT_PICOHARP_T3):
        p = tmp_path / f"y{rt:x}.ptu"
        write_ptu(p, t3, rt, global_resolution_s=12.5e-9, resolution_s=8e-12)
        ours = np.concatenate(list(PtuReader(p, chunk_records=5000).iter_t3()))
        theirs = ptufile.PtuFile(p).decode_records()
        theirs = theirs[theirs["channel"] >= 0]
        np.testing.assert_array_equal(ours["nsync"], theirs["time"].astype(np.int64))
        np.testing.assert_array_equal(ours["dtime"], theirs["dtime"])
        np.testing.assert_array_equal(ours["channel"] - 1, theirs["channel"])


# ----------------------------------------------------------------------------------------- PTU errors
def test_ptu_wrong_magic(tmp_path):
    p = tmp_path / "bad.ptu"
    p.write_bytes(b"NOTAPTU!" + b"\x00" * 100)
    with pytest.raises(TimeTagError, match="bad.ptu.*magic"):
        PtuReader(p)


def test_ptu_truncated_header_and_records(tmp_path):
    p = tmp_path / "t.ptu"
    write_ptu(p, make_tags(np.arange(100) * 10, 1))
    raw = p.read_bytes()
    (tmp_path / "h.ptu").write_bytes(raw[:60])
    with pytest.raises(TimeTagError, match="truncated inside the header"):
        PtuReader(tmp_path / "h.ptu")
    (tmp_path / "r.ptu").write_bytes(raw[:-10])  # last 2.5 records missing
    with pytest.raises(TimeTagError, match="truncated") as e:
        PtuReader(tmp_path / "r.ptu")
    assert e.value.record == 97 and "r.ptu" in str(e.value)
    (tmp_path / "x.ptu").write_bytes(raw + b"\x00" * 4)
    with pytest.raises(TimeTagError, match="bytes after the 100 declared records"):
        PtuReader(tmp_path / "x.ptu")


def test_ptu_unknown_record_type_and_undefined_record(tmp_path):
    p = tmp_path / "u.ptu"
    ptu_file(p, 0x00010299, [1, 2])
    with pytest.raises(TimeTagError, match="unknown TTTR record type 0x00010299"):
        PtuReader(p)
    ptu_file(p, ptu.RT_HYDRAHARP2_T2, [hh(0, 1, 1), hh(0, 1, 2), hh(1, 20, 3)])
    with pytest.raises(TimeTagError, match="record 2: undefined") as e:
        PtuReader(p).read_all()
    assert e.value.record == 2
    ptu_file(p, ptu.RT_HYDRAHARP2_T3, [hh(1, 0, 3)], gres_s=1e-9)  # T3 has no sync records
    with pytest.raises(TimeTagError, match="record 0: undefined"):
        list(PtuReader(p).iter_t3())


def test_ptu_timestamps_backwards_names_record_across_chunks(tmp_path):
    p = tmp_path / "b.ptu"
    recs = [hh(0, 0, 10 * i) for i in range(10)] + [hh(1, 63, 1)] + [hh(0, 0, 5), hh(0, 0, 3)]
    ptu_file(p, ptu.RT_HYDRAHARP2_T2, recs)
    with pytest.raises(TimeTagError, match="record 12: timestamp goes backwards") as e:
        PtuReader(p, chunk_records=4).read_all()
    assert e.value.record == 12
    ptu_file(p, ptu.RT_HYDRAHARP2_T2, [hh(0, 0, 50), hh(0, 0, 60), hh(0, 0, 40)])
    with pytest.raises(TimeTagError, match="record 2"):
        PtuReader(p, chunk_records=2).read_all()


def test_ptu_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-decreasing"):
        write_ptu(tmp_path / "w.ptu", make_tags([5, 3], [1, 1]))
    with pytest.raises(ValueError, match="channel"):
        write_ptu(tmp_path / "w.ptu", make_tags([5], [70]))
    with pytest.raises(ValueError, match="channel"):
        write_ptu(tmp_path / "w.ptu", make_tags([5], [5]), ptu.RT_PICOHARP_T2, 4e-12)
    with pytest.raises(ValueError, match="dtime"):
        bad = np.zeros(1, T3_DTYPE)
        bad["channel"], bad["dtime"] = 1, 5000
        write_ptu(tmp_path / "w.ptu", bad, ptu.RT_PICOHARP_T3, 1e-8, 4e-12)
    with pytest.raises(ValueError, match="record_type"):
        PtuWriter(tmp_path / "w.ptu", 0x1234, 1e-12)


# ------------------------------------------------------------------------------------------ raw format
tag_lists = st.lists(st.tuples(st.integers(0, 10**9), st.integers(-(2**31), 2**31 - 1)), max_size=300)


@settings(max_examples=40, deadline=None)
@given(tag_lists, st.integers(1, 50))
def test_raw_round_trip_property(tmp_path_factory, items, chunk):
    p = tmp_path_factory.mktemp("raw") / "p.qtag"
    gaps = np.array([g for g, _ in items], np.int64)
    tags = make_tags(np.cumsum(gaps) if items else gaps, np.array([c for _, c in items], np.int64))
    write_raw_tags(p, tags)
    assert p.stat().st_size == 16 + 12 * tags.size
    back = list(RawTagReader(p, chunk_records=chunk))
    assert all(b.size <= chunk for b in back)
    got = np.concatenate(back) if back else np.empty(0, TAG_DTYPE)
    np.testing.assert_array_equal(got, tags)


def test_raw_errors(tmp_path):
    p = tmp_path / "a.qtag"
    write_raw_tags(p, make_tags([1, 2, 3, 4, 5], 1))
    raw = bytearray(p.read_bytes())
    (tmp_path / "trunc.qtag").write_bytes(bytes(raw[:-5]))
    with pytest.raises(TimeTagError, match="trunc.qtag: record 4: file truncated"):
        RawTagReader(tmp_path / "trunc.qtag")
    v2 = bytearray(raw)
    v2[8:10] = struct.pack("<H", 2)
    (tmp_path / "v2.qtag").write_bytes(bytes(v2))
    with pytest.raises(TimeTagError, match="version 2"):
        RawTagReader(tmp_path / "v2.qtag")
    (tmp_path / "magic.qtag").write_bytes(b"X" * 40)
    with pytest.raises(TimeTagError, match="magic"):
        RawTagReader(tmp_path / "magic.qtag")
    back = bytearray(raw)
    back[16 + 3 * 12:16 + 3 * 12 + 8] = struct.pack("<q", 1)  # record 3 goes back to t = 1
    (tmp_path / "back.qtag").write_bytes(bytes(back))
    with pytest.raises(TimeTagError, match="record 3: timestamp goes backwards"):
        RawTagReader(tmp_path / "back.qtag", chunk_records=3).read_all()
    with pytest.raises(ValueError, match="non-decreasing"):
        write_raw_tags(tmp_path / "w.qtag", make_tags([2, 1], 1))


# ---------------------------------------------------------------------------------------- Swabian Dump
def test_swabian_round_trip_and_anomaly_report(tmp_path):
    rng = np.random.default_rng(15)
    tags = random_tags(rng, 1000, 10_000, channels=(-4, 5))
    ev = np.zeros(4, SWABIAN_DTYPE)
    ev["type"] = [2, 3, 4, 1]
    ev["time_ps"] = [tags["time_ps"][100], tags["time_ps"][200], tags["time_ps"][300], tags["time_ps"][400]]
    ev["channel"] = [0, 0, 3, 0]
    ev["missed_events"] = [0, 0, 17, 0]
    p = tmp_path / "d.dump"
    n = write_swabian_dump(p, tags, ev)
    assert n == 1004 and p.stat().st_size == 16 * 1004
    r = SwabianDumpReader(p, chunk_records=128)
    with pytest.warns(TimeTagWarning):
        back = r.read_all()
    np.testing.assert_array_equal(back, tags)
    assert r.stats.overflow_intervals_ps == [(int(ev["time_ps"][0]), int(ev["time_ps"][1]))]
    assert r.stats.missed_events == {3: 17}
    assert r.stats.error_records == 1
    with pytest.raises(TimeTagError, match=r"record 101: OverflowBegin record at \d+ ps \(strict mode\)"):
        SwabianDumpReader(p, strict=True).read_all()


def test_swabian_errors(tmp_path):
    recs = np.zeros(3, SWABIAN_DTYPE)
    recs["time_ps"] = [1, 2, 3]
    recs["type"][2] = 9
    p = tmp_path / "bad.dump"
    recs.tofile(p)
    with pytest.raises(TimeTagError, match="record 2: unknown Swabian record type 9"):
        SwabianDumpReader(p).read_all()
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(TimeTagError, match="truncated"):
        SwabianDumpReader(p)
    recs["type"][2] = 0
    recs["time_ps"][2] = 0
    recs.tofile(p)
    with pytest.raises(TimeTagError, match="record 2: timestamp goes backwards"):
        SwabianDumpReader(p).read_all()


def test_swabian_clean_file_gives_no_warning(tmp_path):
    p = tmp_path / "c.dump"
    write_swabian_dump(p, make_tags([1, 2, 3], [1, -1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = SwabianDumpReader(p).read_all()
    assert back["channel"].tolist() == [1, -1, 2]


# ------------------------------------------------------------------------------------------------ CSV
def test_csv_round_trip_and_comments(tmp_path):
    rng = np.random.default_rng(16)
    tags = random_tags(rng, 300, 1000)
    p = tmp_path / "t.csv"
    write_csv_tags(p, tags)
    np.testing.assert_array_equal(read_csv_tags(p), tags)
    p.write_text("# hand-made\ntime_ps, channel\n10,1\n\n# gap\n20,2\n")
    got = np.concatenate(list(CsvTagReader(p, chunk_records=1)))
    assert got["time_ps"].tolist() == [10, 20] and got["channel"].tolist() == [1, 2]


@pytest.mark.parametrize("text, match", [
    ("t,c\n1,1\n", "record 1: header must be"),
    ("time_ps,channel\n1,1\n2\n", "record 3: expected 2 fields"),
    ("time_ps,channel\n1,1\nx,2\n", "record 3: fields must be integers"),
    ("time_ps,channel\n5,1\n4,2\n", "record 3: timestamp goes backwards"),
    ("", "missing header"),
])
def test_csv_errors(tmp_path, text, match):
    p = tmp_path / "e.csv"
    p.write_text(text)
    with pytest.raises(TimeTagError, match=match):
        read_csv_tags(p)


def test_format_detection(tmp_path):
    tags = make_tags([1, 5, 9], [1, 2, 3])
    write_ptu(tmp_path / "a.ptu", tags)
    write_raw_tags(tmp_path / "a.qtag", tags)
    write_csv_tags(tmp_path / "a.csv", tags)
    write_swabian_dump(tmp_path / "a.dump", tags)
    for name in ("a.ptu", "a.qtag", "a.csv"):
        np.testing.assert_array_equal(np.concatenate(list(iter_tags(tmp_path / name))), tags)
    np.testing.assert_array_equal(open_tag_reader(tmp_path / "a.dump", "swabian").read_all(), tags)
    with pytest.raises(TimeTagError, match="cannot detect"):
        open_tag_reader(tmp_path / "a.dump")
