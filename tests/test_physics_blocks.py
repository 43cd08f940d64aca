"""Unit tests of the photon stream, the counter-based generator and the physical-layer blocks."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from scipy import stats

from qkdflow import photons, prng
from qkdflow.runtime.block import Frame
from qkdflow.runtime.graph import FlowgraphError, load_flowgraph
from qkdflow.streams import PHOTON_DTYPE

from blocks.detector import Detector
from blocks.fibre import Fibre
from blocks.pns_attack import PnsAttack
from blocks.beam_splitter import BeamSplitter


def desc(seed=3, probs=(0.8, 0.15, 0.05), bias=0.5):
    return prng.prep_descriptor(seed, probs, bias)


def photon_frame(start, stop, events=None, fields=()):
    return Frame(start, stop, photons.empty_events() if events is None else events, meta={"fields": list(fields)})


# ---- prng --------------------------------------------------------------------------------------
def test_prng_uniform_chi_square():
    u = prng.uniform(123, 0, np.arange(1_000_000))
    counts = np.bincount((u * 100).astype(int), minlength=100)
    assert stats.chisquare(counts).pvalue > 1e-4
    # every output bit is balanced
    w = prng.random_u64(123, 0, np.arange(200_000))
    bits = ((w[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).sum(axis=0).astype(float)
    z = (bits - 100_000) / np.sqrt(50_000)
    assert np.abs(z).max() < 5.0


def test_prng_streams_and_seeds_independent():
    s = np.arange(500_000)
    pairs = [(prng.uniform(5, 0, s), prng.uniform(5, 1, s)), (prng.uniform(5, 0, s), prng.uniform(6, 0, s)),
             (prng.uniform(5, 0, s), prng.uniform(5, 0, s + 1))]  # neighbouring slots
    for a, b in pairs:
        table = np.histogram2d(a, b, bins=10)[0]
        assert stats.chi2_contingency(table).pvalue > 1e-4
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(s.size)


def test_prep_choices_frequencies_and_recomputable():
    d = desc(seed=9, probs=(0.6, 0.3, 0.1), bias=0.8)
    slots = np.arange(2_000_000)
    i, b, x = prng.prep_choices(d, slots)
    assert stats.chisquare(np.bincount(i, minlength=3), 2e6 * np.array([0.6, 0.3, 0.1])).pvalue > 1e-4
    assert abs((b == 0).mean() - 0.8) < 5 * np.sqrt(0.16 / 2e6)
    assert abs(x.mean() - 0.5) < 5 * np.sqrt(0.25 / 2e6)
    pick = np.array([17, 5, 1_999_999, 17])
    i2, b2, x2 = prng.prep_choices(d, pick)  # any slot, any order, same answer
    assert np.array_equal(i2, i[pick]) and np.array_equal(b2, b[pick]) and np.array_equal(x2, x[pick])


# ---- photons -----------------------------------------------------------------------------------
def test_thinning_is_binomial():
    rng = np.random.default_rng(1)
    ev = np.zeros(200_000, dtype=PHOTON_DTYPE)
    ev["slot"] = np.arange(ev.size)
    ev["n"] = 3
    out = photons.thin_events(ev, 0.3, rng)
    hist = np.bincount(out["n"], minlength=4)[1:]
    expect = ev.size * stats.binom.pmf([1, 2, 3], 3, 0.3)
    assert stats.chisquare(hist, expect * hist.sum() / expect.sum()).pvalue > 1e-4
    assert abs(ev.size - out.size - ev.size * 0.7**3) < 5 * np.sqrt(ev.size * 0.343 * 0.657)
    assert np.all(out["n"] > 0)


def test_lazy_thinning_matches_poisson_statistics():
    """A source field attenuated twice, materialised: per-slot photon numbers are Poisson(mu t1 t2) per class."""
    rng = np.random.default_rng(2)
    d = desc(seed=4, probs=(0.5, 0.5, 0.0))
    f = photon_frame(0, 2_000_000, fields=[photons.source_field(d, [0.8, 0.2, 0.0])])
    f = photons.attenuate(photons.attenuate(f, 0.5, rng), 0.5, rng)
    ev = photons.materialise(f, rng).data
    assert not photons.fields_of(photons.materialise(f, rng))
    cls, _, _ = prng.prep_choices(d, ev["slot"])
    all_cls, _, _ = prng.prep_choices(d, np.arange(2_000_000))
    for k, mu in ((0, 0.2), (1, 0.05)):
        n_slots = int((all_cls == k).sum())
        counts = np.bincount(ev["n"][cls == k], minlength=5)[1:5]
        expect = n_slots * stats.poisson.pmf([1, 2, 3, 4], mu)
        ok = expect > 5
        z = (counts[ok] - expect[ok]) / np.sqrt(expect[ok])
        assert np.abs(z).max() < 5, (k, counts, expect)


def test_noise_field_materialise_rate_and_unpolarised():
    rng = np.random.default_rng(3)
    f = photon_frame(100, 5_000_100, fields=[photons.noise_field(0.004, origin=photons.ORIGIN_RAMAN, name="x")])
    ev = photons.materialise(f, rng, extra_t=0.5, gate_width_ns=2.0).data  # mean 0.004 per slot
    m = 5e6 * 0.004
    assert abs(ev["n"].sum() - m) < 5 * np.sqrt(m)
    assert ev["slot"].min() >= 100 and ev["slot"].max() < 5_000_100
    assert np.all(ev["basis"] == photons.UNPOLARISED) and np.all(ev["origin"] == photons.ORIGIN_RAMAN)


def test_misalignment_composes_and_flips_bits():
    rng = np.random.default_rng(4)
    d = desc(seed=5, probs=(1.0, 0.0, 0.0))
    f = photon_frame(0, 1_000_000, fields=[photons.source_field(d, [0.5, 0.1, 0.0])])
    f = photons.misalign(photons.misalign(f, 0.1, rng), 0.2, rng)
    assert photons.fields_of(f)[0]["flip"] == pytest.approx(0.1 * 0.8 + 0.9 * 0.2)
    ev = photons.materialise(f, rng).data
    _, basis, bit = prng.prep_choices(d, ev["slot"])
    flipped = (ev["n"] * (ev["bit"] != bit)).sum() / ev["n"].sum()
    assert abs(flipped - 0.26) < 5 * np.sqrt(0.26 * 0.74 / ev["n"].sum())
    assert np.array_equal(basis, ev["basis"])


def test_zero_truncated_poisson_distribution():
    rng = np.random.default_rng(5)
    for lam in (1e-4, 0.3, 4.0):
        n = photons.zero_truncated_poisson(np.full(300_000, lam), rng)
        pk = stats.poisson.pmf(np.arange(1, 12), lam) / -np.expm1(-lam)
        counts = np.bincount(n, minlength=12)[1:12]
        ok = pk * n.size > 5
        assert np.abs((counts[ok] - n.size * pk[ok]) / np.sqrt(n.size * pk[ok])).max() < 5


def test_geometric_slots_is_bernoulli():
    rng = np.random.default_rng(6)
    s = photons.geometric_slots(10, 10 + 3_000_000, 0.01, rng)
    assert np.all(np.diff(s) > 0) and s[0] >= 10 and s[-1] < 3_000_010
    assert abs(s.size - 30_000) < 5 * np.sqrt(30_000)
    gaps = np.diff(s)
    assert stats.kstest(gaps, stats.geom(0.01).cdf).statistic < 0.02


# ---- detector ----------------------------------------------------------------------------------
def make_detector(**kw):
    d = Detector("det", **kw)
    assert d.validate() == []
    d.start()
    return d


def run_detector(det, n_frames, slots, fields=()):
    out = []
    for i in range(n_frames):
        out.append(det.work({"in": photon_frame(i * slots, (i + 1) * slots, fields=fields)})["out"].data)
    return np.concatenate(out)


def test_dark_counts_rate_and_double_clicks():
    det = make_detector(dark_count_per_gate=1e-3, efficiency=0.1, seed=4)
    clicks = run_detector(det, 4, 500_000)
    n = 2e6
    p_click = 1 - (1 - 1e-3) ** 2
    assert abs(clicks.size - n * p_click) < 5 * np.sqrt(n * p_click)
    assert abs(det.counters["double_clicks"] - n * 1e-6) < 5 * np.sqrt(n * 1e-6) + 1
    # the mask bits sit in Bob's basis: bits 0-1 for Z, 2-3 for X
    assert np.all((clicks["mask"] >> (2 * clicks["basis"])) & 3 > 0)
    assert np.all(clicks["mask"] & ~(3 << (2 * clicks["basis"])).astype(np.uint8) == 0)


def test_dead_time_suppresses_close_clicks():
    det = make_detector(dark_count_per_gate=0.02, efficiency=0.1, dead_time_ns=10.0, rate_hz=1e9, seed=5)
    clicks = run_detector(det, 3, 100_000)
    for d in (0, 1):
        own = clicks[((clicks["mask"] >> (2 * clicks["basis"])) >> d) & 1 == 1]["slot"]
        assert np.diff(own).min() >= 10  # 10 ns = 10 gates at 1 GHz, also across frame boundaries
    # non-paralysable dead time: kept rate = p / (1 + p (D - 1)) per detector (gated, D = 10 gates)
    p, D = 0.02, 10
    kept_per_det = p / (1 + p * (D - 1))
    total = det.counters["photon_clicks"] + det.counters["dark_clicks"]
    assert abs(total - 2 * 3e5 * kept_per_det) < 5 * np.sqrt(2 * 3e5 * kept_per_det)
    assert det.counters["suppressed_dead_time"] > 0


def test_afterpulse_rate_and_delay():
    p_ap, tau = 0.05, 5.0
    det = make_detector(dark_count_per_gate=1e-3, efficiency=0.1, afterpulse_probability=p_ap,
                        afterpulse_time_ns=tau, rate_hz=1e9, seed=6)
    run_detector(det, 5, 400_000)
    primaries = det.counters["dark_clicks"]
    after = det.counters["afterpulses"]
    # each click (including afterpulses) triggers one with p_ap: after = primaries p_ap / (1 - p_ap)
    m = primaries * p_ap / (1 - p_ap)
    assert abs(after - m) < 5 * np.sqrt(m)
    # delay: the gate after the trigger in which an Exp(tau) delay ends -> clicks cluster right after others
    det0 = make_detector(dark_count_per_gate=1e-3, efficiency=0.1, rate_hz=1e9, seed=6)
    run_detector(det0, 5, 400_000)
    assert det0.counters["afterpulses"] == 0


def test_jitter_sets_time_tags():
    det = make_detector(dark_count_per_gate=1e-2, efficiency=0.1, jitter_ps=50.0, rate_hz=1e9, seed=7)
    c = run_detector(det, 1, 200_000)
    dt = c["time_ps"] - c["slot"] * 1000
    assert abs(dt.std() - 50.0) < 5 * 50.0 / np.sqrt(2 * c.size)
    assert abs(dt.mean()) < 5 * 50.0 / np.sqrt(c.size)
    det2 = make_detector(dark_count_per_gate=1e-2, efficiency=0.1, rate_hz=1e9, seed=7)
    c2 = run_detector(det2, 1, 10_000)
    assert np.array_equal(c2["time_ps"], c2["slot"] * 1000)


def test_ingaas_preset_couples_dark_count_and_afterpulse_to_efficiency():
    from qkdflow.physics.detector import ingaas_operating_point
    lo, hi = make_detector(preset="ingaas_gated", efficiency=0.1), make_detector(preset="ingaas_gated",
                                                                                 efficiency=0.3)
    assert hi.p.dark_count_per_gate > lo.p.dark_count_per_gate
    assert hi.p.afterpulse_probability > lo.p.afterpulse_probability
    dark, ap = ingaas_operating_point(0.3)
    assert hi.p.dark_count_per_gate == pytest.approx(float(dark)) and hi.p.afterpulse_probability == pytest.approx(
        float(ap))
    assert make_detector(preset="snspd").p.dead_time_ns == 40.0


# ---- eavesdroppers ---------------------------------------------------------------------------------
def test_beam_splitter_is_pure_loss_and_counts_eve():
    rng = np.random.default_rng(8)
    d = desc(seed=8, probs=(1.0, 0.0, 0.0))
    bs = BeamSplitter("bs", tap_fraction=0.25, seed=3)
    bs.start()
    f = photon_frame(0, 1_000_000, fields=[photons.source_field(d, [0.5, 0.1, 0.0])])
    out = bs.work({"in": f})["out"]
    assert photons.fields_of(out)[0]["t"] == pytest.approx(0.75)
    m = 1e6 * 0.5 * 0.25
    assert abs(bs.counters["photons_tapped"] - m) < 5 * np.sqrt(m)
    p2 = 1 - np.exp(-0.125) * (1 + 0.125)
    assert abs(bs.counters["signal_slots_tapped_multi"] - 1e6 * p2) < 5 * np.sqrt(1e6 * p2)
    del rng


def test_pns_keeps_one_photon_of_multiphoton_pulses():
    d = desc(seed=9, probs=(1.0, 0.0, 0.0))
    pns = PnsAttack("pns", block_single_fraction=1.0, seed=4)
    pns.start()
    f = photon_frame(0, 500_000, fields=[photons.source_field(d, [0.5, 0.1, 0.0])])
    ev = pns.work({"in": f})["out"].data
    mu = 0.5
    n_multi = 5e5 * (1 - np.exp(-mu) * (1 + mu))
    assert abs(pns.counters["multi_photon_pulses"] - n_multi) < 5 * np.sqrt(n_multi)
    # all singles blocked: what passes is the N-1 >= 1 photons of multi-photon pulses, Poisson-shifted
    assert np.unique(ev["slot"]).size == pns.counters["multi_photon_pulses"]
    m = 5e5 * (mu - (1 - np.exp(-mu)))  # E[N - 1; N >= 2] = mu - P(N >= 1)
    assert abs(ev["n"].sum() - m) < 5 * np.sqrt(m)


# ---- validation ----------------------------------------------------------------------------------
def graph_with(tmp_path, **blocks_over):
    blocks = {"prep": {"type": "preparation"}, "laser": {"type": "laser"}, "mux": {"type": "wdm_mux"},
              "fib": {"type": "fibre"}, "demux": {"type": "wdm_demux"}, "det": {"type": "detector"},
              "sink": {"type": "null_sink"}}
    for k, v in blocks_over.items():
        blocks[k] = {**blocks[k], **v}
    doc = {"blocks": blocks, "connections": [["prep.out", "laser.in"], ["laser.out", "mux.in"],
                                             ["mux.out", "fib.in"], ["fib.out", "demux.in"],
                                             ["demux.out", "det.in"], ["det.out", "sink.in"]]}
    p = tmp_path / "v.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


@pytest.mark.parametrize("over,needle", [
    ({"fib": {"length_km": -1}}, "blocks.fib.length_km: must be >= 0"),
    ({"det": {"efficiency": 1.5}}, "blocks.det.efficiency: must be <= 1"),
    ({"prep": {"probabilities": {"signal": 0.8, "decoy": 0.3, "vacuum": 0.05}}}, "must sum to 1"),
    ({"mux": {"quantum_wavelength_nm": 1550.12,
              "classical_channels": [{"name": "ul", "wavelength_nm": 1550.12, "launch_power_dbm": 0,
                                      "direction": "co"}]}}, "grid spacing"),
    ({"fib": {"loss_db_per_km": "fast"}}, "blocks.fib.loss_db_per_km"),
    ({"prep": {"intensities": {"signal": 0.1, "decoy": 0.5, "vacuum": 0.0}}}, "signal > decoy > vacuum"),
    ({"det": {"preset": "ingaas_gated", "efficiency": 0.9}}, "blocks.det"),
])
def test_bad_parameters_are_load_time_errors(tmp_path, over, needle):
    with pytest.raises(FlowgraphError) as e:
        load_flowgraph(graph_with(tmp_path, **over))
    assert needle in str(e.value), str(e.value)


def test_fibre_raman_spans_add_up_to_one_span():
    """Two spans of 10 + 15 km give the same Raman noise at the end as one 25 km span (fwd and bwd)."""
    from blocks.wdm_mux import WdmMux
    plan = {"quantum_wavelength_nm": 1550.12, "grid": "dwdm",
            "classical_channels": [{"name": "ul", "wavelength_nm": 1547.72, "launch_power_dbm": 0, "direction": "co"},
                                   {"name": "dl", "wavelength_nm": 1552.52, "launch_power_dbm": 0,
                                    "direction": "counter", "loss_db_per_km": 0.25}]}

    def through(lengths):
        mux = WdmMux("mux", **plan)
        mux.start()
        f = mux.work({"in": photon_frame(0, 10)})["out"]
        for i, L in enumerate(lengths):
            fb = Fibre(f"f{i}", length_km=L, loss_db_per_km=0.2)
            fb.start()
            f = fb.work({"in": f})["out"]
        tot = {}
        for fld in photons.fields_of(f):
            key = fld["name"].split(":")[0]
            tot[key] = tot.get(key, 0.0) + fld["flux_per_ns"] * fld["t"] * fld["pump"]
        return tot

    one, two = through([25.0]), through([10.0, 15.0])
    assert two["raman_fwd"] == pytest.approx(one["raman_fwd"], rel=1e-12)
    assert two["raman_bwd"] == pytest.approx(one["raman_bwd"], rel=1e-12)


def test_recorded_preparation_file_drives_the_laser(tmp_path):
    from blocks.laser import Laser
    from blocks.preparation import Preparation
    from qkdflow.streams import PREP_DTYPE

    rng = np.random.default_rng(10)
    rec = np.zeros(50_000, dtype=PREP_DTYPE)
    rec["intensity"] = rng.integers(0, 2, rec.size)
    rec["basis"] = rng.integers(0, 2, rec.size)
    rec["bit"] = rng.integers(0, 2, rec.size)
    path = tmp_path / "prep.npy"
    np.save(path, rec)
    prep = Preparation("prep", record_file=str(path), slots_per_frame=20_000)
    assert prep.validate() == []
    prep.start()
    laser = Laser("laser", materialise=True, seed=3)
    laser.start()
    frames = []
    while True:
        out = prep.work({})
        if not isinstance(out, dict):
            break
        assert np.array_equal(out["out"].data, rec[out["out"].start:out["out"].stop])
        frames.append(laser.work({"in": out["out"]})["out"].data)
    assert [f.size > 0 for f in frames] == [True, True, True]  # 20k + 20k + 10k slots
    ev = np.concatenate(frames)
    assert np.array_equal(ev["basis"], rec["basis"][ev["slot"]]) and np.array_equal(ev["bit"], rec["bit"][ev["slot"]])
    assert np.all(rec["intensity"][ev["slot"]] != 2)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(10, dtype=np.int32))
    assert "record_file" in Preparation("p", record_file=str(bad)).validate()[0]
