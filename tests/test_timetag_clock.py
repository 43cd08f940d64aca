"""Clock recovery, slot assignment and Alice/Bob offset finding on synthetic 1 GHz time tags."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow.streams import CLICK_DTYPE
from qkdflow.timetag import (
    ChannelMap,
    ClockError,
    ClockModel,
    StreamingSlotAssigner,
    assign_slots,
    clock_from_detections,
    clock_from_sync,
    estimate_channel_delay,
    find_slot_offset,
    make_tags,
)
from qkdflow.timetag.slots import apply_dead_time

PERIOD_PS = 1000.0          # 1 GHz
CMAP4 = ChannelMap({1: (0, 0), 2: (0, 1), 3: (1, 0), 4: (1, 1)}, sync_channel=0)


def synth(n_det: int, seed: int, ppm: float = 1.0, jitter_ps: float = 50.0, sync_every: int = 1000,
          p_missing_sync: float = 0.1, p_click: float = 1e-3, wander_ps: float = 20.0,
          delays_ps: tuple[float, ...] = (0.0, 130.0, -170.0, 260.0), t0_ps: int = 987_654_321):
    """Detections of random slots on 4 detectors + a sync every ``sync_every`` slots (some missing).

    True slot s is emitted at t0 + s * T * (1 + ppm) + wander(s) (slow sinusoid), each detector adds its
    delay, every event its Gaussian jitter. Returns (time-sorted tags, true slot of each detection in time
    order, true slots of the sync events kept).
    """
    rng = np.random.default_rng(seed)
    slots = np.cumsum(rng.geometric(p_click, n_det)).astype(np.int64)

    def t_of(s):
        return t0_ps + s * PERIOD_PS * (1 + ppm * 1e-6) + wander_ps * np.sin(2 * np.pi * s / 3e8)

    ch = rng.integers(1, 5, n_det)
    t_det = np.rint(t_of(slots) + np.asarray(delays_ps)[ch - 1] + rng.normal(0, jitter_ps, n_det)).astype(np.int64)
    ks = np.arange(0, slots[-1] + sync_every, sync_every)
    ks = ks[rng.random(ks.size) > p_missing_sync]
    t_sync = np.rint(t_of(ks) + rng.normal(0, jitter_ps, ks.size)).astype(np.int64)
    t = np.concatenate([t_det, t_sync])
    c = np.concatenate([ch, np.zeros(ks.size, np.int64)])
    order = np.argsort(t, kind="stable")
    det_order = np.argsort(t_det, kind="stable")
    return make_tags(t[order], c[order]), slots[det_order], ks


# ------------------------------------------------------------------------------------- the main claim
def test_sync_clock_assigns_1e6_tags_with_zero_wrong_slots():
    """1 GHz, 50 ps RMS jitter, 1 ppm offset, sync every 1000 slots with 10 % missing: a wrong slot needs a
    10-sigma excursion, so none of 1e6 detections may land in the wrong slot."""
    tags, true_slots, ks = synth(1_000_000, seed=1)
    sync = tags["time_ps"][tags["channel"] == 0]
    clock = clock_from_sync(sync, PERIOD_PS, slots_per_sync=1000, first_sync_slot=int(ks[0]))
    assert clock.period_ps == pytest.approx(PERIOD_PS * (1 + 1e-6), rel=1e-9)
    assert 40 < clock.rms_residual_ps < 60   # the 50 ps sync jitter, nothing more
    det = tags[tags["channel"] > 0]
    delays = {c: estimate_channel_delay(det["time_ps"][det["channel"] == c], clock) for c in range(1, 5)}
    for c, d in zip(range(1, 5), (0.0, 130.0, -170.0, 260.0)):
        assert delays[c] == pytest.approx(d, abs=2.0)
    clicks, stats = assign_slots(tags, clock, CMAP4, channel_delay_ps=delays)
    assert clicks.dtype == CLICK_DTYPE
    assert stats.n_sync == ks.size and stats.n_outside_window == 0 and stats.n_dead_time == 0
    assert clicks.size == true_slots.size
    assert np.count_nonzero(clicks["slot"] != true_slots) == 0


def test_wrong_slots_appear_when_delays_are_ignored():
    """Guard for the test above: an uncompensated 420 ps delay (80 ps = 1.6 sigma from the slot edge) must
    misassign a few percent of that detector's tags, so the zero above is not vacuous."""
    tags, true_slots, ks = synth(200_000, seed=2, delays_ps=(0.0, 0.0, 0.0, 420.0))
    clock = clock_from_sync(tags["time_ps"][tags["channel"] == 0], PERIOD_PS, 1000, first_sync_slot=int(ks[0]))
    det = tags[tags["channel"] > 0]
    slot, _ = clock.slot_and_phase(det["time_ps"])
    wrong = slot != true_slots
    assert not wrong[det["channel"] != 4].any()
    frac = np.count_nonzero(wrong) / np.count_nonzero(det["channel"] == 4)
    assert 0.03 < frac < 0.08     # one-sided Gaussian tail at 1.6 sigma: 5.5 %


def test_sync_recovery_survives_missing_spurious_and_duplicate_events():
    rng = np.random.default_rng(3)
    ks = np.arange(0, 2_000_000, 100)
    ks = ks[rng.random(ks.size) > 0.3]                        # 30 % missing
    ks = np.concatenate([ks[:50], ks[50:60][::5], ks[60:]])  # plus a long run of missing events
    t = 5_000 + ks * PERIOD_PS * (1 - 3e-6) + rng.normal(0, 30, ks.size)
    spurious = rng.uniform(t[10], t[-10], 40)                 # stray pulses off the grid
    spurious = spurious[np.abs(((spurious - 5_000) / 100_000 + 0.5) % 1 - 0.5) > 0.3]
    dup = t[200:203] + 40                                       # reflections right after a sync
    all_t = np.sort(np.rint(np.concatenate([t, spurious, dup])).astype(np.int64))
    clock = clock_from_sync(all_t, PERIOD_PS, slots_per_sync=100, first_sync_slot=int(ks[0]))
    assert clock.n_events == ks.size
    assert clock.period_ps == pytest.approx(PERIOD_PS * (1 - 3e-6), rel=1e-8)
    slot, phase = clock.slot_and_phase(np.rint(t).astype(np.int64))
    np.testing.assert_array_equal(slot, ks)


def test_no_sync_recovery_from_detections():
    tags, true_slots, _ = synth(300_000, seed=4, ppm=-7.0, delays_ps=(0.0, 0.0, 0.0, 0.0))
    det = tags[tags["channel"] > 0]
    clock = clock_from_detections(det["time_ps"], PERIOD_PS, max_offset_ppm=50)
    assert clock.period_ps == pytest.approx(PERIOD_PS * (1 - 7e-6), rel=2e-8)
    clicks, stats = assign_slots(det, clock, ChannelMap(CMAP4.detectors))
    assert clicks.size == true_slots.size
    offset = true_slots - clicks["slot"]
    assert np.unique(offset).size == 1   # same slots up to the arbitrary numbering


def test_detection_clock_needs_periodic_data():
    rng = np.random.default_rng(5)
    t = np.sort(rng.integers(0, 10**10, 20_000))
    with pytest.raises(ClockError, match="no clock found"):
        clock_from_detections(t, PERIOD_PS)
    with pytest.raises(ClockError, match="no detection events"):
        clock_from_detections(np.empty(0, np.int64), PERIOD_PS)


def test_empty_or_broken_sync_channel_is_a_clear_error():
    with pytest.raises(ClockError, match="sync channel has no events"):
        clock_from_sync(np.empty(0, np.int64), PERIOD_PS)
    with pytest.raises(ClockError, match="single event"):
        clock_from_sync(np.array([5]), PERIOD_PS)
    # a 4 ns phase jump on a 10 ns sync grid cannot be explained by missing events
    t = np.concatenate([np.arange(0, 100) * 10_000, 4_000 + np.arange(100, 200) * 10_000])
    with pytest.raises(ClockError, match="phase jump between events 99 and 100"):
        clock_from_sync(t, PERIOD_PS, slots_per_sync=10)
    # a 900 ps jump is on the sync grid but would shift slots: caught by the fit residual
    t = np.concatenate([np.arange(0, 100) * 10_000, 900 + np.arange(100, 200) * 10_000])
    with pytest.raises(ClockError, match="off the fitted clock"):
        clock_from_sync(t, PERIOD_PS, slots_per_sync=10)
    with pytest.raises(ValueError, match="slot_period_ps"):
        clock_from_sync(np.arange(10) * 1000, -1.0)


def test_clock_model_inverse_and_extrapolation():
    clock = ClockModel(time_ref_ps=10**12, slot_ref=5_000_000, knot_time_ps=[0.0, 1e6, 2e6],
                       knot_slot=[0.0, 1000.0, 2000.0])
    s = np.array([4_999_000, 5_000_500, 5_003_000])
    t = clock.time_of_slot(s)
    np.testing.assert_allclose(t, 10**12 + np.array([-1e6, 5e5, 3e6]))
    slot, phase = clock.slot_and_phase(np.rint(t).astype(np.int64) + 300)
    np.testing.assert_array_equal(slot, s)
    np.testing.assert_allclose(phase, 0.3)


# ------------------------------------------------------------------------------------- slot assignment
def simple_clock() -> ClockModel:
    return ClockModel(time_ref_ps=0, slot_ref=0, knot_time_ps=[0.0, 1e9], knot_slot=[0.0, 1e6])


def test_window_gating_counts_and_drops():
    # slot centres at multiples of 1000 ps; offsets -400, -100, 0, 149, 150, 420 ps
    t = np.array([1000 - 400, 2000 - 100, 3000, 4000 + 149, 5000 + 150, 6000 + 420])
    tags = make_tags(t, [1, 1, 2, 3, 4, 1])
    clicks, stats = assign_slots(tags, simple_clock(), CMAP4, window_ps=(-150.0, 150.0))
    assert clicks["slot"].tolist() == [2, 3, 4]
    assert stats.n_outside_window == 3 and stats.outside_window_by_channel == {1: 2, 4: 1}
    assert stats.n_detections == 3
    with pytest.raises(ValueError, match="window_ps"):
        assign_slots(tags, simple_clock(), CMAP4, window_ps=(100.0, -100.0))


def test_double_clicks_merge_with_all_detector_bits():
    # slot 7: Z0 at +10 then X1 at -5 (earlier); slot 9: Z0 and Z1
    tags = make_tags([7005 - 10, 7010, 9000, 9001, 12000], [4, 1, 1, 2, 3])
    clicks, stats = assign_slots(tags, simple_clock(), CMAP4)
    assert clicks["slot"].tolist() == [7, 9, 12]
    assert clicks["mask"].tolist() == [0b1001, 0b0011, 0b0100]
    assert clicks["basis"].tolist() == [1, 0, 1]          # basis of the earliest detection in the slot
    assert clicks["time_ps"].tolist() == [6995, 9000, 12000]
    assert stats.n_multi_detector_clicks == 2 and stats.n_cross_basis_clicks == 1


def test_channel_delays_reorder_into_slot_order():
    # channel 2 arrives 900 ps late: its tag at 1950 is slot 1, after channel 1's slot-2 tag at 1900
    tags = make_tags([1900, 1950, 2950], [1, 2, 2])
    clicks, _ = assign_slots(tags, simple_clock(), CMAP4, channel_delay_ps={2: 900.0})
    assert clicks["slot"].tolist() == [1, 2]
    assert clicks["mask"].tolist() == [0b0010, 0b0011]
    assert clicks["time_ps"].tolist() == [1950, 1900]


def test_dead_time_per_channel_and_unmapped_channels():
    tags = make_tags([0, 6000, 11000, 17000, 23000, 23000, 40000], [1, 1, 1, 1, 1, 2, 1])
    clicks, stats = assign_slots(tags, simple_clock(), CMAP4, dead_time_ps={1: 10_000})
    # channel 1 kept at 0, 11000 (>= 10 ns after 0), 23000; 6000 and 17000 fall in dead time
    assert clicks["slot"].tolist() == [0, 11, 23, 40]
    assert clicks["mask"].tolist() == [1, 1, 0b11, 1]
    assert stats.n_dead_time == 2
    with pytest.raises(ValueError, match=r"unmapped channel\(s\) \[7\]"):
        assign_slots(make_tags([1, 2], [1, 7]), simple_clock(), CMAP4)
    _, st2 = assign_slots(make_tags([1, 2], [1, 7]), simple_clock(),
                          ChannelMap(CMAP4.detectors, sync_channel=0, ignore=frozenset({7})))
    assert st2.n_ignored == 1
    with pytest.raises(ValueError, match="sync_channel"):
        ChannelMap({0: (0, 0)}, sync_channel=0)
    with pytest.raises(ValueError, match=r"detectors\[1\]"):
        ChannelMap({1: (2, 0)})


def dead_time_reference(t: list[int], dead: int) -> list[bool]:
    keep, last = [], None
    for x in t:
        ok = last is None or x - last >= dead
        keep.append(ok)
        if ok:
            last = x
    return keep


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=80), st.integers(1, 40))
def test_dead_time_matches_sequential_reference(gaps, dead):
    t = np.cumsum(np.array(gaps, np.int64))
    assert apply_dead_time(t, dead).tolist() == dead_time_reference(t.tolist(), dead)


# -------------------------------------------------------------------------------------- offset finding
def test_offset_found_from_decoy_pattern():
    rng = np.random.default_rng(6)
    n_alice = 1 << 21
    mu = np.array([0.5, 0.1, 0.0])[rng.choice(3, n_alice, p=[0.7, 0.2, 0.1])]   # signal/decoy/vacuum
    p_click = 1 - np.exp(-mu * 0.02) + 1e-5                                     # 2 % transmittance + dark
    clicked = np.flatnonzero(rng.random(n_alice) < p_click)
    true_offset = 123_457                      # alice_slot = bob_slot + offset
    window = clicked[(clicked >= 400_000) & (clicked < 400_000 + (1 << 18))]
    bob = window - true_offset + 7_000_000     # Bob numbers slots differently ...
    alice_start = 7_000_000                    # ... and Alice's record starts at her slot 7e6
    res = find_slot_offset(bob, mu, alice_start_slot=alice_start)
    assert res.offset_slots == true_offset
    assert res.z_score > 10 and res.second_z < 6
    # no correlation: shuffled pattern gives no confident peak
    res0 = find_slot_offset(bob, rng.permutation(mu), alice_start_slot=alice_start)
    assert res0.z_score < 7


def test_offset_range_and_errors():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2, 5000).astype(float)
    bob = np.flatnonzero(a[1000:3000] > 0) + 1000 - 250      # offset +250
    res = find_slot_offset(bob, a, offset_range=(200, 300))
    assert res.offset_slots == 250 and res.n_candidates == 101
    with pytest.raises(ValueError, match="no clicks"):
        find_slot_offset(np.empty(0, np.int64), a)
    with pytest.raises(ValueError, match="shorter than the span"):
        find_slot_offset(np.array([0, 10_000]), a)


# ------------------------------------------------------------------------------------ streaming assigner
def run_streaming(tags: np.ndarray, chunk_sizes: np.ndarray, **kwargs) -> tuple[np.ndarray, StreamingSlotAssigner]:
    sa = StreamingSlotAssigner(**kwargs)
    parts, i = [], 0
    for n in chunk_sizes:
        parts.append(sa.push(tags[i:i + n]))
        i += n
    parts.append(sa.push(tags[i:]))
    parts.append(sa.finish())
    return np.concatenate(parts), sa


def test_streaming_matches_truth_across_epochs_and_chunks():
    tags, true_slots, ks = synth(300_000, seed=8, delays_ps=(0.0, 120.0, -150.0, 200.0))
    rng = np.random.default_rng(9)
    chunks = rng.integers(1, 40_000, 40)
    delays = {1: 0.0, 2: 120.0, 3: -150.0, 4: 200.0}
    clicks, sa = run_streaming(tags, chunks, channel_map=CMAP4, slot_period_ps=PERIOD_PS, slots_per_sync=1000,
                               channel_delay_ps=delays, epoch_syncs=5000, first_sync_slot=int(ks[0]))
    assert sa.stats.n_tags == tags.size and sa.stats.n_sync == ks.size
    assert clicks.size == true_slots.size
    np.testing.assert_array_equal(clicks["slot"], true_slots)
    batch, bstats = assign_slots(tags, clock_from_sync(tags["time_ps"][tags["channel"] == 0], PERIOD_PS, 1000,
                                                       first_sync_slot=int(ks[0])), CMAP4, channel_delay_ps=delays)
    np.testing.assert_array_equal(clicks, batch)
    assert sa.stats.n_clicks == bstats.n_clicks


def test_streaming_merges_slots_split_between_pushes_and_carries_dead_time():
    # sync every 10 slots; in every 7th slot two detectors fire 30 ps apart; ch 1 also re-fires 3 ns later
    # (inside its 5 ns dead time) -> pushes of single tags split every double click and every dead-time pair
    s = np.arange(3, 20_000, 7)
    t_det = np.concatenate([s * 1000, s * 1000 + 30, s * 1000 + 3000])
    c_det = np.concatenate([np.full(s.size, 1), np.full(s.size, 4), np.full(s.size, 1)])
    ks = np.arange(0, 20_010, 10)
    t = np.concatenate([t_det, ks * 1000 - 200])
    c = np.concatenate([c_det, np.zeros(ks.size, int)])
    o = np.argsort(t, kind="stable")
    tags = make_tags(t[o], c[o])
    kw = dict(channel_map=CMAP4, slot_period_ps=PERIOD_PS, slots_per_sync=10, dead_time_ps={1: 5000})
    clicks, sa = run_streaming(tags, np.ones(3000, int), epoch_syncs=64, **kw)
    ref, rstats = assign_slots(tags, clock_from_sync(ks * 1000 - 200, PERIOD_PS, 10), CMAP4, dead_time_ps={1: 5000})
    np.testing.assert_array_equal(clicks, ref)
    assert clicks["mask"].tolist() == [0b1001] * s.size
    assert sa.stats.n_dead_time == rstats.n_dead_time == s.size
    assert sa.stats.n_multi_detector_clicks == s.size == sa.stats.n_cross_basis_clicks


def test_streaming_errors():
    with pytest.raises(ValueError, match="needs a sync_channel"):
        StreamingSlotAssigner(ChannelMap(CMAP4.detectors), PERIOD_PS)
    sa = StreamingSlotAssigner(CMAP4, PERIOD_PS)
    sa.push(make_tags([100, 200], [1, 2]))
    with pytest.raises(ClockError, match="no events"):
        sa.finish()
    sa = StreamingSlotAssigner(CMAP4, PERIOD_PS)
    sa.push(make_tags([100, 200], [1, 2]))
    with pytest.raises(ValueError, match="non-decreasing"):
        sa.push(make_tags([150], [1]))
