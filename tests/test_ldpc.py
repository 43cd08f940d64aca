"""Tests for rate-adaptive LDPC reconciliation (qkdflow.distill.ldpc / ldpc_codes)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdflow.distill import ldpc, ldpc_codes
from qkdflow.distill.ldpc import (
    DECODER,
    LdpcAlice,
    LdpcBob,
    SyndromeMessage,
    _numba_available,
    binary_entropy,
    decode_syndrome,
    decode_syndromes,
    plan_frame,
    reconcile,
)
from qkdflow.distill.ldpc_codes import TABLE_RATES, build_code, extended_code, extension_rows, load_or_build_code

N = 8192


@pytest.fixture(scope="module")
def pool():
    return [build_code(N, r, 11) for r in TABLE_RATES]


# use_numba: False = numpy reference, None = default path (the C extension when built), True = numba
DECODERS = [False, None] + ([True] if _numba_available() else [])
needs_c = pytest.mark.skipif(ldpc._cldpc is None, reason="C extension qkdflow.distill._ldpc not built")


def _frame(rng, bits, q):
    a = rng.integers(0, 2, bits, dtype=np.uint8)
    e = (rng.random(bits) < q).astype(np.uint8)
    return a, a ^ e


# ------------------------------------------------------------------------------------------ codes
def test_degree_distribution_tables_are_normalised_and_have_their_rate():
    for rate, (lam, rho) in ldpc_codes.DEGREE_DISTRIBUTIONS.items():
        assert sum(lam.values()) == pytest.approx(1.0, abs=5e-5)
        assert sum(rho.values()) == pytest.approx(1.0, abs=5e-5)
        design = 1 - sum(v / k for k, v in rho.items()) / sum(v / k for k, v in lam.items())
        assert design == pytest.approx(rate, abs=1.5e-3)


def test_code_construction_is_deterministic_in_seed():
    a = build_code(2048, 0.6, 3)
    b = build_code(2048, 0.6, 3)
    c = build_code(2048, 0.6, 4)
    assert a.fingerprint == b.fingerprint
    assert np.array_equal(a.edge_var, b.edge_var)
    assert a.fingerprint != c.fingerprint


@pytest.mark.parametrize("rate", [0.5, 0.7, 0.9])
def test_code_structure(rate):
    code = build_code(4096, rate, 5)
    ev, ptr = code.edge_var, code.check_ptr
    # column degrees match the declared degree profile
    assert np.array_equal(np.bincount(ev, minlength=code.n), code.var_degree)
    # no parallel edges
    ce = np.repeat(np.arange(code.m), np.diff(ptr))
    keys = ev.astype(np.int64) * code.m + ce
    assert np.unique(keys).size == keys.size
    # node-perspective degree-2 fraction follows lambda: Lambda_2 = (lambda_2/2) / sum lambda_i/i,
    # capped at m - 1 nodes (surplus promoted to degree 3)
    lam = ldpc_codes.DEGREE_DISTRIBUTIONS[rate][0]
    frac2 = (lam[2] / 2) / sum(v / k for k, v in lam.items())
    assert code.m == pytest.approx(code.n * (1 - rate), rel=0.01)
    expect2 = min(frac2, (code.m - 1) / code.n)
    assert np.mean(code.var_degree == 2) == pytest.approx(expect2, abs=2e-3)
    # the degree-2 nodes form a forest (no cycle among them): edges = nodes - components on their checks
    deg2 = np.flatnonzero(code.var_degree == 2)
    is2 = np.zeros(code.n, bool)
    is2[deg2] = True
    sel = is2[ev]
    checks_of = {}
    for e in np.flatnonzero(sel):
        checks_of.setdefault(int(ev[e]), []).append(int(ce[e]))
    parent = list(range(code.m))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for c1, c2 in checks_of.values():
        r1, r2 = find(c1), find(c2)
        assert r1 != r2, "cycle among degree-2 variable nodes"
        parent[r1] = r2


def test_punctured_symbols_own_private_checks_so_columns_are_independent():
    code = build_code(1024, 0.5, 2)
    P = code.puncture_order
    assert P.size > 0.1 * code.n
    ce = np.repeat(np.arange(code.m), np.diff(code.check_ptr))
    is_p = np.zeros(code.n, bool)
    is_p[P] = True
    n_punct_per_check = np.bincount(ce, weights=is_p[code.edge_var], minlength=code.m)
    for v in P:
        checks = ce[code.edge_var == v]
        assert np.any(n_punct_per_check[checks] == 1)
    # and directly: GF(2) rank of the punctured columns equals their number
    H = np.zeros((code.m, P.size), dtype=np.uint8)
    col = {v: i for i, v in enumerate(P)}
    for e in np.flatnonzero(is_p[code.edge_var]):
        H[ce[e], col[code.edge_var[e]]] = 1
    assert _gf2_rank(H) == P.size


def _gf2_rank(M: np.ndarray) -> int:
    M = M.copy()
    rank = 0
    for c in range(M.shape[1]):
        rows = np.flatnonzero(M[rank:, c]) + rank
        if rows.size == 0:
            continue
        r = rows[0]
        M[[rank, r]] = M[[r, rank]]
        others = np.flatnonzero(M[:, c])
        others = others[others != rank]
        M[others] ^= M[rank]
        rank += 1
    return rank


def test_cache_round_trip_and_corrupt_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QKDFLOW_CACHE_DIR", str(tmp_path))
    a = load_or_build_code(1024, 0.55, 9)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = load_or_build_code(1024, 0.55, 9)
    assert a.fingerprint == b.fingerprint and np.array_equal(a.edge_var, b.edge_var)
    files[0].write_bytes(b"garbage")
    c = load_or_build_code(1024, 0.55, 9)
    assert c.fingerprint == a.fingerprint


def test_bad_code_parameters():
    with pytest.raises(ValueError, match="rate"):
        build_code(4096, 0.52, 1)
    with pytest.raises(ValueError, match="n:"):
        build_code(10, 0.5, 1)
    with pytest.raises(ValueError, match="seed"):
        build_code(4096, 0.5, -1)


# ------------------------------------------------------------------------------------- protocol
@pytest.mark.parametrize("use_numba", DECODERS)
@pytest.mark.parametrize("q, f", [(0.01, 1.5), (0.03, 1.3), (0.06, 1.25), (0.08, 1.2)])
def test_frames_decode_to_alices_key(pool, q, f, use_numba):
    # short test codes (n = 8192) need more margin than the n >= 1e5 operating points (see bench_ldpc)
    rng = np.random.default_rng(int(q * 1000) + 17)
    alice = LdpcAlice(pool, seed=1, efficiency=f)
    bob = LdpcBob(pool, max_iterations=150, use_numba=use_numba)
    for i in range(2):
        a, b = _frame(rng, alice.frame_bits, q)
        assert np.count_nonzero(a != b) > 0
        msg = SyndromeMessage.from_bytes(alice.encode(a, q, frame_id=i).to_bytes())
        res = bob.decode(b, msg)
        assert res.converged
        assert np.array_equal(res.corrected, a)
        assert res.iterations > 0


def test_leak_is_syndrome_minus_punctured(pool):
    rng = np.random.default_rng(2)
    for q, f in [(0.02, 1.2), (0.05, 1.1), (0.09, 1.15)]:
        alice = LdpcAlice(pool, seed=3, efficiency=f)
        a, b = _frame(rng, alice.frame_bits, q)
        msg = alice.encode(a, q)
        code, p, s = plan_frame(pool, q, f)
        d = round(0.1 * N)
        assert (msg.punctured, msg.shortened) == (p, s) and p + s == d
        assert msg.key_bits == N - d == alice.frame_bits
        assert msg.leak_bits == code.m - p
        res = LdpcBob(pool).decode(b, msg)
        assert res.leak_bits == code.m - p
        # leak / (key bits * h(q)) is the targeted efficiency up to the integer rounding of s
        f_actual = msg.leak_bits / (msg.key_bits * binary_entropy(q))
        assert f <= f_actual < f + 2.0 / (msg.key_bits * binary_entropy(q))


def test_syndrome_matches_parity_of_alices_word(pool):
    # Bob decoding with Alice's own key must return it at iteration 0 only if the punctured values are
    # irrelevant -- they are not, so the syndrome must depend on the secret punctured bits.
    rng = np.random.default_rng(4)
    a1 = LdpcAlice(pool, seed=1)
    a2 = LdpcAlice(pool, seed=2)
    key = rng.integers(0, 2, a1.frame_bits, dtype=np.uint8)
    m1, m2 = a1.encode(key, 0.03), a2.encode(key, 0.03)
    assert m1.punctured > 0
    assert not np.array_equal(m1.syndrome, m2.syndrome)


@pytest.mark.parametrize("use_numba", DECODERS)
def test_nonconvergence_is_reported(pool, use_numba):
    rng = np.random.default_rng(5)
    alice = LdpcAlice(pool, seed=1)
    a, b = _frame(rng, alice.frame_bits, 0.15)        # true QBER far above the estimate's code
    msg = alice.encode(a, 0.02)
    res = LdpcBob(pool, max_iterations=30, use_numba=use_numba).decode(b, msg)
    assert not res.converged
    assert res.corrected is None
    assert res.iterations == 30
    assert res.leak_bits == msg.m - msg.punctured


def test_numpy_decoder_converges_to_a_syndrome_solution():
    code = build_code(2048, 0.5, 8)
    rng = np.random.default_rng(8)
    x = rng.integers(0, 2, code.n, dtype=np.uint8)
    y = x ^ (rng.random(code.n) < 0.03).astype(np.uint8)
    llr = np.where(y == 0, 1.0, -1.0) * math.log(0.97 / 0.03)
    word, ok, it = decode_syndrome(code, llr, code.syndrome(x), 100, use_numba=False)
    assert ok and np.array_equal(code.syndrome(word), code.syndrome(x))
    assert np.array_equal(word, x)


def test_bad_protocol_inputs(pool):
    alice = LdpcAlice(pool, seed=1)
    key = np.zeros(alice.frame_bits, np.uint8)
    with pytest.raises(ValueError, match="key"):
        alice.encode(key[:-1], 0.03)
    with pytest.raises(ValueError, match="0 or 1"):
        alice.encode(key + 2, 0.03)
    with pytest.raises(ValueError, match="qber_estimate"):
        alice.encode(key, 0.6)
    with pytest.raises(ValueError, match="outside the range"):
        LdpcAlice(pool[:1], seed=1).encode(key, 0.002)     # rate-0.5 code alone cannot reach R = 0.98
    msg = alice.encode(key, 0.03)
    with pytest.raises(ValueError, match="fingerprint"):
        LdpcBob([build_code(N, 0.5, 99)]).decode(key, msg)
    with pytest.raises(ValueError, match="key"):
        LdpcBob(pool).decode(key[:-3], msg)


# -------------------------------------------------------------------------------- serialisation
@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 300), extra=st.integers(1, 500), p=st.integers(0, 50), s=st.integers(0, 50),
       q=st.floats(1e-6, 0.499), fid=st.integers(0, 2**64 - 1), data=st.data())
def test_message_round_trip(m, extra, p, s, q, fid, data):
    n = m + extra + p + s
    bits = np.array(data.draw(st.lists(st.integers(0, 1), min_size=m, max_size=m)), dtype=np.uint8)
    msg = SyndromeMessage(b"abcdefgh", fid, n, m, p, s, q, bits)
    back = SyndromeMessage.from_bytes(msg.to_bytes())
    assert (back.code_fingerprint, back.frame_id, back.n, back.m, back.punctured, back.shortened) == \
        (b"abcdefgh", fid, n, m, p, s)
    assert back.qber_estimate == q
    assert np.array_equal(back.syndrome, bits)


def test_message_strict_decoding():
    msg = SyndromeMessage(b"12345678", 3, 100, 13, 2, 3, 0.02, np.ones(13, np.uint8))
    raw = msg.to_bytes()
    for bad in (raw[:-1], raw + b"\x00", raw[:10], b"", b"XXXX" + raw[4:]):
        with pytest.raises(ValueError):
            SyndromeMessage.from_bytes(bad)
    padded = bytearray(raw)
    padded[-1] |= 0x01                                   # a padding bit set (13 bits -> 3 pad bits)
    with pytest.raises(ValueError, match="padding"):
        SyndromeMessage.from_bytes(bytes(padded))
    for q in (0.0, 0.5, float("nan")):
        bad = SyndromeMessage(b"12345678", 3, 100, 13, 2, 3, q, np.ones(13, np.uint8)).to_bytes()
        with pytest.raises(ValueError, match="qber"):
            SyndromeMessage.from_bytes(bad)
    with pytest.raises(ValueError, match="version"):
        SyndromeMessage.from_bytes(raw[:4] + b"\x07" + raw[5:])


# ---------------------------------------------------------------------------------- convenience
def test_reconcile_splits_frames_and_reports_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("QKDFLOW_CACHE_DIR", str(tmp_path))
    n = 2048
    frame = n - round(0.1 * n)
    rng = np.random.default_rng(6)
    a, b = _frame(rng, 3 * frame + 100, 0.03)          # estimate 0.04 > true 0.03: margin at n = 2048
    res = reconcile(a, b, 0.04, n, seed=1, efficiency=1.4)
    assert res.frame_bits == frame and res.unreconciled_tail_bits == 100
    assert len(res.frames) == 3 and res.all_converged
    assert np.array_equal(res.corrected, a[: 3 * frame])
    assert res.leak_bits == sum(r.syndrome_bits - r.punctured for r in res.frames)
    with pytest.raises(ValueError, match="bob_key"):
        reconcile(a, b[:-1], 0.04, n, seed=1)


def test_phi_table_used_by_the_numba_kernel_is_accurate():
    from qkdflow.distill.ldpc import _PHI_FRAC_BITS, _phi_table

    tab, base, lo, hi = _phi_table()
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(np.log(lo), np.log(20.0), 100_000)).astype(np.float32)
    u = x.view(np.int32).astype(np.int64) - base
    i = u >> _PHI_FRAC_BITS
    fr = (u & ((1 << _PHI_FRAC_BITS) - 1)) / (1 << _PHI_FRAC_BITS)
    approx = tab[i] + fr * (tab[i + 1] - tab[i])
    exact = -np.log(np.tanh(0.5 * x.astype(np.float64)))
    assert np.max(np.abs(approx - exact)) < 3e-6
    small = x <= 1.0
    assert np.max(np.abs(approx - exact)[small] / exact[small]) < 2e-6


# ---------------------------------------------------------------------------------------- C decoder
def _channel(code, rng, q, n_frames):
    x = rng.integers(0, 2, (n_frames, code.n), dtype=np.uint8)
    y = x ^ (rng.random((n_frames, code.n)) < q).astype(np.uint8)
    llr = np.where(y == 0, 1.0, -1.0) * math.log((1 - q) / q)
    return x, llr, np.stack([code.syndrome(r) for r in x])


@needs_c
def test_c_decoder_agrees_with_numpy_reference():
    assert DECODER == "c"
    code = build_code(4096, 0.7, 12)
    rng = np.random.default_rng(12)
    x, llr, syn = _channel(code, rng, 0.035, 6)
    for i in range(x.shape[0]):
        wc, okc, itc = decode_syndrome(code, llr[i], syn[i], 100)                 # C (default)
        wn, okn, itn = decode_syndrome(code, llr[i], syn[i], 100, use_numba=False)  # numpy flooding
        assert okc and okn
        assert np.array_equal(wc, x[i]) and np.array_equal(wn, x[i])
        assert 0 < itc <= itn          # layered schedule needs no more iterations than flooding
    # an undecodable frame (QBER far above the code's threshold) is reported as such by both
    xb, llrb, synb = _channel(code, rng, 0.2, 1)
    for use_numba in (None, False):
        w, ok, it = decode_syndrome(code, llrb[0], synb[0], 25, use_numba=use_numba)
        assert not ok and it == 25
        assert not np.array_equal(code.syndrome(w), synb[0])


@needs_c
@pytest.mark.parametrize("simd", [True, False])
def test_multi_frame_kernel_matches_single_frame_and_handles_partial_groups(simd):
    code = build_code(N, 0.6, 13)
    rng = np.random.default_rng(13)
    x, llr, syn = _channel(code, rng, 0.05, 19)          # 19 frames: one full group of 16 + 3 lanes
    llr[7] = np.where(rng.random(code.n) < 0.2, -1.0, 1.0) * (1 - 2.0 * x[7]) * math.log(0.8 / 0.2)  # hopeless
    words, ok, iters = decode_syndromes(code, llr, syn, 60, simd=simd)
    assert not ok[7] and iters[7] == 60
    others = np.flatnonzero(np.arange(19) != 7)
    assert ok[others].all()
    assert np.array_equal(words[others], x[others])
    for i in others:                       # each lane's count is its own, not the group's maximum
        w1, ok1, it1 = decode_syndrome(code, llr[i], syn[i], 60)
        assert ok1 and np.array_equal(w1, x[i])
        assert abs(int(iters[i]) - it1) <= max(3, it1 // 5)
    assert iters[others].max() < 60


@needs_c
def test_bob_decode_many_equals_decode(pool):
    rng = np.random.default_rng(14)
    alice = LdpcAlice(pool, seed=4, efficiency=1.3)
    bob = LdpcBob(pool)
    keys, msgs, truth = [], [], []
    for i, q in enumerate([0.03, 0.03, 0.06, 0.03, 0.06]):     # two codes, interleaved
        a, b = _frame(rng, alice.frame_bits, q)
        msgs.append(SyndromeMessage.from_bytes(alice.encode(a, q, frame_id=i).to_bytes()))
        keys.append(b)
        truth.append(a)
    assert len({m.code_fingerprint for m in msgs}) == 2
    many = bob.decode_many(keys, msgs)
    for r, k, m, a in zip(many, keys, msgs, truth):
        one = bob.decode(k, m)
        assert r.converged and one.converged
        assert np.array_equal(r.corrected, a) and np.array_equal(one.corrected, a)
        assert r.leak_bits == one.leak_bits == m.m - m.punctured
        assert r.frame_id == m.frame_id
    with pytest.raises(ValueError, match="keys"):
        bob.decode_many(keys[:2], msgs)


@needs_c
def test_c_phi_approximations_are_accurate():
    from qkdflow.distill import _ldpc

    x = np.geomspace(2.0 ** -23, 60.0, 3000)
    exact = -np.log(np.tanh(0.5 * x))
    table = np.array([_ldpc.phi(v) for v in x])
    poly = np.array([_ldpc.phi_poly(v) for v in x])
    assert np.max(np.abs(table - exact)) < 6e-4          # 2^-10 log-spaced table (scalar kernel)
    assert np.max(np.abs(poly - exact)) < 3e-4           # per-octave quartic (SIMD kernel)
    assert _ldpc.phi(0.0) == pytest.approx(-math.log(math.tanh(2.0 ** -25)), rel=1e-3)   # clamp at 2^-24


def test_fallback_without_c_extension_decodes(tmp_path):
    """QKDFLOW_NO_CEXT=1 forces the numba/numpy path; it must still reconcile correctly."""
    import os
    import subprocess
    import sys

    prog = (
        "import numpy as np\n"
        "from qkdflow.distill import ldpc\n"
        "assert ldpc._cldpc is None and ldpc.DECODER in ('numba', 'numpy'), ldpc.DECODER\n"
        "rng = np.random.default_rng(3)\n"
        "n = 2048; fb = n - round(0.1 * n)\n"
        "a = rng.integers(0, 2, 2 * fb, dtype=np.uint8); b = a ^ (rng.random(a.size) < 0.03).astype(np.uint8)\n"
        "r = ldpc.reconcile(a, b, 0.04, n, seed=1, efficiency=1.4)\n"
        "assert r.all_converged and np.array_equal(r.corrected, a)\n"
        "assert r.leak_bits == sum(f.syndrome_bits - f.punctured for f in r.frames)\n"
        "print('ok', ldpc.DECODER)\n"
    )
    env = dict(os.environ, QKDFLOW_NO_CEXT="1", QKDFLOW_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


# ------------------------------------------------------------------------------------------- blind mode
from qkdflow.distill.ldpc import (  # noqa: E402
    BlindDecoder,
    RevealMessage,
    decode_positions,
    encode_positions,
    plan_blind,
    reconcile_blind,
)


def _blind_batch(pool, q, frames, seed, **kw):
    rng = np.random.default_rng(seed)
    alice = LdpcAlice(pool, seed=seed, **kw)
    a = rng.integers(0, 2, (frames, alice.frame_bits), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < q).astype(np.uint8)
    sent = [alice.encode_blind(a[i], q, frame_id=100 + i) for i in range(frames)]
    msgs = [SyndromeMessage.from_bytes(m.to_bytes()) for m, _ in sent]
    return alice, a, b, msgs, [f for _, f in sent]


def test_plan_blind_picks_highest_rate_code_reaching_max_and_starts_at_start_efficiency(pool):
    q = 0.05
    h = binary_entropy(q)
    code, p0, s0, step = plan_blind(pool, q, start=1.0, step=0.02, max_efficiency=1.15)
    d = round(0.1 * N)
    k = N - d
    # the ceiling covers a frame 3 standard deviations of its error count above the estimate
    ceiling = 1.15 * binary_entropy(q + ldpc.BLIND_MARGIN_SIGMAS * math.sqrt(q * (1 - q) / k)) / h
    assert 1.15 * 1.05 < ceiling < 1.15 * 1.5
    assert p0 + s0 == d and 0 < p0 <= min(d, code.puncture_order.size)
    assert code.m >= ceiling * k * h
    assert all(c.m < ceiling * k * h for c in pool if c.m < code.m)          # no higher-rate code qualifies
    # with no margin a higher-rate code would have been chosen: the margin matters at this frame size
    assert any(1.15 * k * h <= c.m < code.m for c in pool)
    assert (code.m - p0) / (k * h) == pytest.approx(1.0, abs=1.0 / (k * h)) or p0 == min(d, code.puncture_order.size)
    assert step == math.ceil(0.02 * k * h)


def test_plan_blind_for_reliability_reveals_punctures_nothing_and_starts_just_below_capacity(pool):
    d = round(0.1 * N)
    k = N - d
    for q in (0.05, 0.08, 0.1):
        kh = k * binary_entropy(q)
        code, p0, s0, step = plan_blind(pool, q, start=1.0, step=0.01, reveal="reliability")
        assert code.m >= ldpc.RELIABILITY_MIN_CHECKS
        assert (p0, s0) == (0, d) and step == math.ceil(0.01 * kh)
        below = [c for c in pool if c.m <= kh]
        if below and max(c.m for c in below) >= ldpc.RELIABILITY_FLOOR * kh:
            assert code.m == max(c.m for c in below)             # the lowest rate whose first attempt is <= 1
    # a short code with few checks (here rate 0.9 at QBER 0.8 %, m = 819): the order-mode plan, punctured
    code, p0, s0, _ = plan_blind(pool, 0.008, reveal="reliability")
    assert code.m < ldpc.RELIABILITY_MIN_CHECKS and p0 > 0 and p0 + s0 == d
    assert (code, p0, s0) == plan_blind(pool, 0.008, reveal="order")[:3]
    with pytest.raises(ValueError, match="reveal"):
        plan_blind(pool, 0.02, reveal="sideways")
    # frames with secret punctured values are never asked for positions (the request could unmask them)
    _, a, b, msgs, frames = _blind_batch(pool, 0.05, 2, seed=3, blind_reveal="order")
    assert all(m.punctured for m in msgs)
    dec = BlindDecoder(LdpcBob(pool), list(b), msgs, reveal="reliability")
    assert dec.modes == ["order", "order"]
    failing = dec.decode()
    assert failing and all(dec.requests[i] is None for i in failing)
    while failing:
        dec.add_reveals([frames[i].reveal() for i in failing])
        failing = dec.decode()
    assert dec.done and all(np.array_equal(r.corrected, a[i]) for i, r in enumerate(dec.results))


def test_blind_converges_where_oneshot_at_the_starting_rate_fails(pool):
    q = 0.05
    alice, a, b, msgs, frames = _blind_batch(pool, q, 6, seed=21, blind_start=1.0, blind_step=0.03,
                                             blind_reveal="order")
    bob = LdpcBob(pool, max_iterations=200)
    # the same syndromes decoded one-shot (no reveals, full iteration budget, cold): rate too high, all fail
    cold = bob.decode_many(list(b), msgs)
    assert not any(r.converged for r in cold)
    dec = BlindDecoder(bob, list(b), msgs, round_iterations=30, reveal="order")
    failing = dec.decode()
    assert failing == list(range(6))
    while failing:
        assert not any(dec.exhausted(i) for i in failing)
        dec.add_reveals([RevealMessage.from_bytes(frames[i].reveal().to_bytes()) for i in failing])
        failing = dec.decode()
    assert dec.rounds >= 2
    for i, r in enumerate(dec.results):
        assert r.converged and np.array_equal(r.corrected, a[i])
    # exact leak: m - p0 + revealed per frame, equal at both ends and in the per-frame results
    assert dec.leak_bits == sum(m.m - m.punctured + t for m, t in zip(msgs, dec.revealed))
    assert dec.leak_bits == sum(f.leak_bits for f in frames)
    assert [r.leak_bits for r in dec.results] == [f.leak_bits for f in frames]
    assert [f.revealed for f in frames] == dec.revealed
    assert all(r.syndrome_bits - r.punctured == r.leak_bits for r in dec.results)
    f_eff = dec.leak_bits / (6 * alice.frame_bits * binary_entropy(q))
    assert 1.0 < f_eff < 1.0 + 0.03 * dec.rounds + 0.01


def _run_blind(bob, b, msgs, frames, **kw):
    dec = BlindDecoder(bob, list(b), msgs, reveal="order", **kw)
    failing = dec.decode()
    while failing:
        dec.add_reveals([frames[i].reveal() for i in failing])
        failing = dec.decode()
    return dec


def test_blind_round_stall_cuts_iterations_and_still_decodes_every_frame(pool):
    """round_stall: attempts with values left to reveal stop when they stop progressing; the messages are kept,
    so every frame still converges to Alice's word, with fewer BP iterations than without the rule."""
    runs = []
    for rs in (0, 3):
        _, a, b, msgs, frames = _blind_batch(pool, 0.05, 6, seed=23, blind_start=1.0, blind_step=0.02,
                                             blind_reveal="order")
        dec = _run_blind(LdpcBob(pool, max_iterations=200), b, msgs, frames, round_iterations=60, round_stall=rs)
        assert not dec.failed
        assert all(r.converged and np.array_equal(r.corrected, a[i]) for i, r in enumerate(dec.results))
        runs.append(dec)
    assert runs[1].iterations < runs[0].iterations
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="round_stall"):
            BlindDecoder(LdpcBob(pool), list(b), msgs, round_stall=bad)


def test_blind_reliability_reveals_decode_every_frame_with_less_leak_than_order_reveals(pool):
    """Bob asks for Alice's values where his BP is least sure; every frame converges to Alice's word, the leak is
    m - p0 + revealed at both ends, each request names reveal_step unknown symbols, and the same frames leak less
    than with values disclosed in puncturing order."""
    leaks = {}
    for mode in ("order", "reliability"):
        _, a, b, msgs, frames = _blind_batch(pool, 0.05, 6, seed=31, blind_start=1.0, blind_step=0.02,
                                             blind_reveal=mode)
        bob = LdpcBob(pool, max_iterations=200)
        dec = BlindDecoder(bob, list(b), msgs, reveal=mode)
        failing = dec.decode()
        assert failing
        while failing:
            got = []
            for i in failing:
                if mode == "reliability":
                    pos = dec.requests[i]
                    code = bob.codes[msgs[i].code_fingerprint]
                    short = code.shorten_order[:msgs[i].shortened]
                    earlier = [r.positions for r in dec.reveals[i]]
                    assert pos.size == min(msgs[i].reveal_step, dec.limits[i] - dec.revealed[i])
                    assert np.all(np.diff(pos) > 0) and not np.isin(pos, short).any()
                    assert not any(np.isin(pos, e).any() for e in earlier)
                    got.append(frames[i].reveal_at(decode_positions(encode_positions(pos))))
                else:
                    got.append(frames[i].reveal())
            dec.add_reveals([RevealMessage.from_bytes(r.to_bytes()) for r in got])
            failing = dec.decode()
        assert dec.done
        assert all(np.array_equal(r.corrected, a[i]) for i, r in enumerate(dec.results))
        assert dec.leak_bits == sum(f.leak_bits for f in frames) == sum(
            m.m - m.punctured + t for m, t in zip(msgs, dec.revealed))
        leaks[mode] = dec.leak_bits
    assert leaks["reliability"] < leaks["order"]


@pytest.mark.skipif(ldpc._cldpc is None, reason="C extension not built")
@pytest.mark.parametrize("mode", ["reliability", "order"])
def test_blind_messages_kept_in_place_give_the_same_rounds_as_per_frame_copies(pool, mode, monkeypatch):
    """BlindDecoder keeps every frame's messages in one array (rows resumed in place by the C kernel; order-mode
    rows with room for the extension edges). The rounds, requests, iterations, leak and words are those of the
    per-frame copies it used before. Resuming from the last posteriors instead (the default) decodes every frame
    too, within a round and 1 % of the leak."""
    runs = []
    for in_place, resume in ((True, False), (False, False), (True, True)):
        monkeypatch.setattr(LdpcBob, "uses_store", property(lambda self, v=in_place: v and self.use_numba is None))
        _, a, b, msgs, frames = _blind_batch(pool, 0.05, 8, seed=41, blind_start=1.0, blind_step=0.02,
                                             blind_reveal=mode)
        dec = BlindDecoder(LdpcBob(pool, max_iterations=200), list(b), msgs, reveal=mode, resume_posteriors=resume)
        assert (dec._store is not None) == in_place
        asked, failing = [], dec.decode()
        while failing:
            asked.append([None if dec.requests.get(i) is None else dec.requests[i].tolist() for i in failing])
            dec.add_reveals([frames[i].answer(dec.requests.get(i)) for i in failing])
            failing = dec.decode()
        assert dec.done and all(np.array_equal(r.corrected, a[i]) for i, r in enumerate(dec.results))
        runs.append((asked, dec.iterations, dec.attempts, dec.leak_bits, [r.iterations for r in dec.results]))
    assert runs[0] == runs[1] and len(runs[0][0]) >= 2
    if mode == "order":                 # no posteriors collected in order mode: nothing to resume from
        assert runs[2] == runs[0]
    else:
        assert abs(len(runs[2][0]) - len(runs[0][0])) <= 1 and abs(runs[2][3] - runs[0][3]) < 0.01 * runs[0][3]


def test_reveal_at_checks_positions_and_never_discloses_a_symbol_twice(pool):
    _, a, b, msgs, frames = _blind_batch(pool, 0.03, 2, seed=32)
    fr, m = frames[0], msgs[0]
    code = next(c for c in pool if c.fingerprint == m.code_fingerprint)
    short = np.sort(code.shorten_order[:m.shortened])
    key_pos = np.setdiff1d(np.arange(code.n), np.concatenate([short, code.puncture_order[:m.punctured]]))
    for bad, why in (([5, 3], "ascending"), ([-1, 2], "ascending"), ([0, code.n], "ascending"),
                     ([int(short[0])], "shortened"), (np.arange(fr.limit + 1), "exceed")):
        with pytest.raises(ValueError, match=why):
            fr.reveal_at(np.asarray(bad))
    assert fr.revealed == 0                              # a refused request discloses nothing
    r = fr.reveal_at(key_pos[:10])
    assert np.array_equal(r.values, frames[0]._word[key_pos[:10]]) and fr.leak_bits == m.m - m.punctured + 10
    with pytest.raises(ValueError, match="disclosed before"):
        fr.reveal_at(key_pos[5:15])
    with pytest.raises(ValueError, match="reliability mode"):
        fr.reveal()                                      # a frame never mixes the two modes
    ordered = _blind_batch(pool, 0.03, 1, seed=33, blind_reveal="order")[4][0]
    ordered.reveal()
    with pytest.raises(ValueError, match="order mode"):
        ordered.reveal_at(key_pos[:3])
    # Bob refuses values that are not where he asked
    bob = LdpcBob(pool)
    dec = BlindDecoder(bob, [b[0]], [m])
    assert dec.decode() == [0]
    fr2 = _blind_batch(pool, 0.03, 1, seed=32)[4][0]
    other = dec.requests[0] + 1 if dec.requests[0][-1] + 1 < code.n else dec.requests[0] - 1
    with pytest.raises(ValueError, match="positions asked for"):
        dec.add_reveals([RevealMessage(m.code_fingerprint, m.frame_id, 0, fr2._word[other], other)])


@settings(max_examples=60, deadline=None)
@given(pos=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300, unique=True), data=st.data())
def test_positions_and_position_reveal_round_trip(pos, data):
    p = np.sort(np.array(pos, dtype=np.int64))
    raw = encode_positions(p)
    assert len(raw) == 4 * p.size and np.array_equal(decode_positions(raw), p)
    vals = np.array(data.draw(st.lists(st.integers(0, 1), min_size=p.size, max_size=p.size)), dtype=np.uint8)
    msg = RevealMessage(b"abcdefgh", 7, 3, vals, p)
    back = RevealMessage.from_bytes(msg.to_bytes())
    assert np.array_equal(back.positions, p) and np.array_equal(back.values, vals) and back.count == p.size
    for bad in (msg.to_bytes()[:-1], msg.to_bytes() + b"\x00"):
        with pytest.raises(ValueError):
            RevealMessage.from_bytes(bad)
    if p.size > 1:
        with pytest.raises(ValueError, match="ascending"):
            decode_positions(raw[4:8] + raw[:4] + raw[8:])
        with pytest.raises(ValueError, match="ascending"):
            encode_positions(p[::-1])
    with pytest.raises(ValueError, match="multiple of 4"):
        decode_positions(raw[:-1])


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_reveal_message_decoder_never_fails_other_than_with_value_error(data):
    """Corrupted or truncated reveal messages (either version) raise ValueError, never anything else."""
    msg = RevealMessage(b"abcdefgh", 9, 4, np.array([1, 0, 1, 1, 0], np.uint8),
                        np.array([3, 17, 400, 9000, 2**32 - 1], np.int64))
    v1 = RevealMessage(b"abcdefgh", 9, 4, msg.values).to_bytes()
    raw = bytearray(data.draw(st.sampled_from([msg.to_bytes(), v1])))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "add"]))
        if op == "flip" and raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            raw = raw[:data.draw(st.integers(0, len(raw)))]
        else:
            raw += bytes(data.draw(st.lists(st.integers(0, 255), max_size=8)))
    try:
        back = RevealMessage.from_bytes(bytes(raw))
    except ValueError:
        return
    assert back.count == back.values.size and (back.positions is None or back.positions.size == back.count)


def test_blind_reveal_values_are_alices_punctured_bits(pool):
    alice, a, b, msgs, frames = _blind_batch(pool, 0.03, 1, seed=22, blind_reveal="order")
    code = next(c for c in pool if c.fingerprint == msgs[0].code_fingerprint)
    p0 = msgs[0].punctured
    r1, r2 = frames[0].reveal(), frames[0].reveal()
    assert (r1.revealed_before, r2.revealed_before) == (0, r1.count) and r1.count == msgs[0].reveal_step
    # Bob decoding with Alice's exact key and every value revealed gets her word back at iteration 0
    while frames[0].revealed < p0:
        assert frames[0].reveal() is not None
    assert frames[0].revealed == p0 and not frames[0].exhausted and frames[0].leak_bits == code.m
    # then the extension rows' syndrome, to the last one
    e = extension_rows(code)
    while frames[0].reveal() is not None:
        pass
    assert frames[0].exhausted and frames[0].leak_bits == code.m + e
    rest = []
    fr2 = LdpcAlice(pool, seed=22, blind_reveal="order").encode_blind(a[0], 0.03, frame_id=100)[1]   # same secret values
    while (r := fr2.reveal()) is not None:
        rest.append(r)
    assert all(r.revealed_before + r.count <= p0 or r.revealed_before >= p0 for r in rest)   # never mixed
    res = LdpcBob(pool).decode(a[0], msgs[0], rest)
    assert res.converged and res.iterations == 0 and np.array_equal(res.corrected, a[0])
    assert res.leak_bits == code.m + e and res.punctured == 0 and res.shortened == round(0.1 * N)
    assert res.syndrome_bits == code.m + e
    assert p0 > 0


def test_extension_syndrome_is_alices_word_under_the_extended_code(pool):
    """The extension bits Alice reveals are H_E x+ of her word: Bob holding her key decodes the extended code
    at iteration 0, and a single flipped extension bit makes that word fail."""
    alice, a, b, msgs, frames = _blind_batch(pool, 0.03, 1, seed=31, blind_reveal="order")
    code = next(c for c in pool if c.fingerprint == msgs[0].code_fingerprint)
    got = []
    while (r := frames[0].reveal()) is not None and len(got) < 200:
        got.append(r)
    assert frames[0].revealed > msgs[0].punctured            # some extension bits among them
    res = LdpcBob(pool).decode(a[0], msgs[0], got)
    assert res.converged and res.iterations == 0
    last = got[-1]
    bad = RevealMessage(last.code_fingerprint, last.frame_id, last.revealed_before, last.values ^ 1)
    res = LdpcBob(pool, max_iterations=5).decode(a[0], msgs[0], got[:-1] + [bad])
    assert res.iterations > 0 or not res.converged
    ext = extended_code(code, frames[0].revealed - msgs[0].punctured)
    assert ext.m == res.syndrome_bits and ext.n_edges > code.n_edges
    assert np.array_equal(ext.edge_var[:code.n_edges], code.edge_var)   # a prefix: warm states stay valid


def test_blind_extension_rescues_frames_the_punctured_values_cannot(pool):
    """QBER estimate 2 % on a 2.8 % channel: for some frames every punctured value revealed is not enough; the
    extension syndrome bits are, and the leak counts each of them exactly at both ends."""
    rng = np.random.default_rng(41)
    alice = LdpcAlice(pool, seed=41, blind_reveal="order")
    a = rng.integers(0, 2, (4, alice.frame_bits), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < 0.028).astype(np.uint8)
    sent = [alice.encode_blind(a[i], 0.02, frame_id=i) for i in range(4)]
    msgs = [SyndromeMessage.from_bytes(m.to_bytes()) for m, _ in sent]
    dec = BlindDecoder(LdpcBob(pool), list(b), msgs, reveal="order")
    failing = dec.decode()
    while failing:
        dec.add_reveals([RevealMessage.from_bytes(sent[i][1].reveal().to_bytes()) for i in failing])
        failing = dec.decode()
    assert dec.done and not dec.failed
    assert any(t > m.punctured for m, t in zip(msgs, dec.revealed))          # some needed extension bits
    for i, r in enumerate(dec.results):
        assert r.converged and np.array_equal(r.corrected, a[i])
        assert r.syndrome_bits == msgs[i].m + max(0, dec.revealed[i] - msgs[i].punctured)
    assert dec.leak_bits == sum(fr.leak_bits for _, fr in sent) == sum(
        m.m - m.punctured + t for m, t in zip(msgs, dec.revealed))


def test_blind_frame_lost_only_with_the_whole_extension_revealed(pool):
    rng = np.random.default_rng(42)
    alice = LdpcAlice(pool, seed=42, blind_reveal="order")
    a = rng.integers(0, 2, (1, alice.frame_bits), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < 0.2).astype(np.uint8)                  # far beyond any code of the plan
    m0, fr = alice.encode_blind(a[0], 0.01, frame_id=7)
    dec = BlindDecoder(LdpcBob(pool, max_iterations=20), [b[0]], [m0], round_iterations=5, reveal="order")
    rounds = 0
    while dec.decode():
        dec.add_reveals([fr.reveal()])
        rounds += 1
    assert dec.failed == [0] and fr.exhausted and fr.reveal() is None
    code = next(c for c in pool if c.fingerprint == m0.code_fingerprint)
    assert dec.revealed[0] == m0.punctured + extension_rows(code) == fr.limit
    assert dec.leak_bits == fr.leak_bits == code.m + extension_rows(code)


def test_extension_rows_partition_the_variables(pool):
    code = pool[0]
    full = extended_code(code, extension_rows(code))
    added = full.edge_var[code.n_edges:]
    assert np.array_equal(np.sort(added), np.arange(code.n))   # every variable in exactly one extension row
    assert np.array_equal(full.var_degree, code.var_degree + 1)
    with pytest.raises(ValueError, match="rows"):
        extended_code(code, extension_rows(code) + 1)
    assert extended_code(code, 0) is code


def test_blind_reveal_validation(pool):
    _, a, b, msgs, frames = _blind_batch(pool, 0.03, 2, seed=23, blind_reveal="order")
    bob = LdpcBob(pool)
    r0 = frames[0].reveal()
    r0b = frames[0].reveal()
    with pytest.raises(ValueError, match="starts after"):
        bob.decode(b[0], msgs[0], [r0b])                         # skips the first chunk
    with pytest.raises(ValueError, match="expected frame"):
        bob.decode(b[1], msgs[1], [r0])                          # another frame's values
    dec = BlindDecoder(bob, list(b), msgs, reveal="order")
    dec.decode()
    with pytest.raises(ValueError, match="do not follow"):
        dec.add_reveals([r0b])
    oneshot = LdpcAlice(pool, seed=1).encode(a[0], 0.03, frame_id=100)
    with pytest.raises(ValueError, match="one-shot"):
        bob.decode(b[0], oneshot, [r0])
    with pytest.raises(ValueError, match="blind"):
        BlindDecoder(bob, [b[0]], [oneshot])


def test_reconcile_blind_long_key_and_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("QKDFLOW_CACHE_DIR", str(tmp_path))
    n = 2048
    frame = n - round(0.1 * n)
    rng = np.random.default_rng(24)
    a, b = _frame(rng, 4 * frame + 7, 0.04)
    res = reconcile_blind(a, b, 0.04, n, seed=1, blind_max=1.6)
    assert res.all_converged and res.unreconciled_tail_bits == 7
    assert np.array_equal(res.corrected, a[:4 * frame])
    assert res.leak_bits == sum(r.leak_bits for r in res.frames)
    assert res.attempts >= 4 and res.rounds >= 1 and res.iterations >= res.attempts - 4


@needs_c
@pytest.mark.parametrize("frames", [8, 2])         # 8: the AVX-512 kernel (where present), 2: the scalar tail
def test_warm_start_resumes_from_saved_messages(frames):
    code = build_code(N, 0.6, 25)
    rng = np.random.default_rng(25)
    x, llr, syn = _channel(code, rng, 0.06, frames)
    _, ok_cold, it_cold = decode_syndromes(code, llr, syn, 200)
    assert ok_cold.all()
    state = np.zeros((frames, code.n_edges), np.float32)
    _, ok1, it1 = decode_syndromes(code, llr, syn, 6, state=state, warm=False)
    assert not ok1.any() and (it1 == 6).all() and np.abs(state).max() > 0
    w2, ok2, it2 = decode_syndromes(code, llr, syn, 200, state=state, warm=True)
    assert ok2.all() and np.array_equal(w2, x)
    assert (it2 <= it_cold - 3).all()                 # progress kept: resumed, not restarted
    with pytest.raises(ValueError, match="state"):
        decode_syndromes(code, llr, syn, 5, state=np.zeros((frames, 3), np.float32))


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 400), before=st.integers(0, 2**32 - 1), fid=st.integers(0, 2**64 - 1), data=st.data())
def test_reveal_message_round_trip(count, before, fid, data):
    vals = np.array(data.draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)), dtype=np.uint8)
    msg = RevealMessage(b"abcdefgh", fid, before, vals)
    raw = msg.to_bytes()
    assert len(raw) == 4 + 1 + 8 + 8 + 4 + 4 + (count + 7) // 8          # exact size: header + packed values
    back = RevealMessage.from_bytes(raw)
    assert (back.code_fingerprint, back.frame_id, back.revealed_before, back.count, back.leak_bits) == \
        (b"abcdefgh", fid, before, count, count)
    assert np.array_equal(back.values, vals)
    for bad in (raw[:-1], raw + b"\x00", raw[:12], b"QLDP" + raw[4:], raw[:4] + b"\x09" + raw[5:]):
        with pytest.raises(ValueError):
            RevealMessage.from_bytes(bad)
    if count % 8:
        padded = bytearray(raw)
        padded[-1] |= 1
        with pytest.raises(ValueError, match="padding"):
            RevealMessage.from_bytes(bytes(padded))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 200), extra=st.integers(1, 300), p=st.integers(0, 40), s=st.integers(0, 40),
       step=st.integers(1, 2**32 - 1), data=st.data())
def test_blind_syndrome_message_round_trip(m, extra, p, s, step, data):
    bits = np.array(data.draw(st.lists(st.integers(0, 1), min_size=m, max_size=m)), dtype=np.uint8)
    msg = SyndromeMessage(b"abcdefgh", 5, m + extra + p + s, m, p, s, 0.03, bits, reveal_step=step)
    raw = msg.to_bytes()
    assert raw[4] == 2 and len(raw) == SyndromeMessage(b"abcdefgh", 5, m + extra + p + s, m, p, s, 0.03,
                                                       bits).to_bytes().__len__() + 4
    back = SyndromeMessage.from_bytes(raw)
    assert back.blind and back.reveal_step == step and back.punctured == p and back.shortened == s
    assert np.array_equal(back.syndrome, bits) and back.leak_bits == m - p
    with pytest.raises(ValueError):
        SyndromeMessage.from_bytes(raw[:-1])
    zero = bytearray(raw)
    zero[_hdr_size():_hdr_size() + 4] = b"\x00\x00\x00\x00"
    with pytest.raises(ValueError, match="reveal_step"):
        SyndromeMessage.from_bytes(bytes(zero))


def _hdr_size() -> int:
    return ldpc._HEADER.size


# ------------------------------------------------------------------- PEG construction and min-sum decoder
needs_peg = pytest.mark.skipif(ldpc._cldpc is None or not hasattr(ldpc._cldpc, "peg"),
                               reason="C extension with the PEG helper not built")


def _four_cycle_pairs(code) -> int:
    """Independent 4-cycle check: pairs of columns of H sharing >= 2 rows (sparse H^T H)."""
    from scipy import sparse

    rows = np.repeat(np.arange(code.m), np.diff(code.check_ptr))
    h = sparse.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, code.edge_var)), shape=(code.m, code.n))
    overlap = sparse.triu(h.T @ h, k=1).tocoo()
    return int(np.count_nonzero(overlap.data >= 2))


@needs_peg
@pytest.mark.parametrize("rate", [0.5, 0.9])
def test_peg_graph_has_the_degree_profile_no_parallel_edges_and_no_four_cycles(rate):
    code = build_code(20000, rate, 21, construction="peg")
    ref = build_code(20000, rate, 21)                      # same node-degree profile and m as the random build
    assert code.construction == "peg" and code.m == ref.m
    assert np.array_equal(np.sort(code.var_degree), np.sort(ref.var_degree))
    assert np.array_equal(np.bincount(code.edge_var, minlength=code.n), code.var_degree)
    cdeg = np.diff(code.check_ptr)
    assert cdeg.max() - cdeg.min() <= 3                    # lowest-degree rule: check-concentrated
    keys = np.repeat(np.arange(code.m), cdeg).astype(np.int64) * code.n + code.edge_var
    assert np.unique(keys).size == keys.size              # simple graph
    # PEG's first search level is always complete, so a 4-cycle appears only where every check is already within
    # distance 2 of the variable (n = 3000 has thousands: its degree-57 columns see every check): none at n = 2e4
    assert _four_cycle_pairs(code) == 0 == code.four_cycles
    small = build_code(3000, rate, 21, construction="peg")
    assert _four_cycle_pairs(small) > 0 and small.four_cycles >= _four_cycle_pairs(small)   # the check can fail
    again = build_code(20000, rate, 21, construction="peg")
    assert again.fingerprint == code.fingerprint           # deterministic in the seed
    assert build_code(20000, rate, 22, construction="peg").fingerprint != code.fingerprint


@needs_peg
def test_peg_code_reconciles_and_is_cached_separately(tmp_path, monkeypatch):
    monkeypatch.setenv("QKDFLOW_CACHE_DIR", str(tmp_path))
    peg = load_or_build_code(4096, 0.6, 5, construction="peg")
    rnd = load_or_build_code(4096, 0.6, 5)
    assert peg.fingerprint != rnd.fingerprint
    assert load_or_build_code(4096, 0.6, 5, construction="peg").fingerprint == peg.fingerprint
    assert len(list(tmp_path.glob("*_peg_*.npz"))) == 1
    rng = np.random.default_rng(5)
    alice, bob = LdpcAlice([peg], seed=1, efficiency=1.4), LdpcBob([peg])
    for i in range(3):
        a, b = _frame(rng, alice.frame_bits, 0.04)
        r = bob.decode(b, alice.encode(a, 0.04, frame_id=i))
        assert r.converged and np.array_equal(r.corrected, a)
    with pytest.raises(ValueError, match="construction"):
        build_code(4096, 0.6, 5, construction="bogus")


needs_ms = pytest.mark.skipif(ldpc._cldpc is None or not hasattr(ldpc._cldpc, "decode_many_ms"),
                              reason="C extension with the min-sum kernels not built")


@needs_ms
def test_min_sum_decodes_and_simd_equals_scalar_bit_for_bit():
    code = build_code(N, 0.6, 31)
    rng = np.random.default_rng(31)
    x, llr, syn = _channel(code, rng, 0.035, 35)          # 35 frames: one 32-lane group + a scalar tail of 3
    llr[4] = np.where(rng.random(code.n) < 0.2, -1.0, 1.0) * (1 - 2.0 * x[4]) * math.log(0.8 / 0.2)  # hopeless
    llr[9, :200] = np.where(x[9, :200] == 0, 1e3, -1e3)   # shortened symbols (saturated LLRs)
    llr[10, code.puncture_order[:300]] = 0.0              # punctured symbols (untainted order)
    out = {}
    for simd in (True, False):
        out[simd] = decode_syndromes(code, llr, syn, 80, simd=simd, algorithm="min-sum")
    w, ok, it = out[True]
    others = np.flatnonzero(np.arange(35) != 4)
    assert ok[others].all() and np.array_equal(w[others], x[others])
    assert not ok[4] and it[4] == 80
    for a, b in zip(out[True], out[False]):
        assert np.array_equal(a, b)                       # same integer arithmetic in both kernels


@needs_ms
def test_min_sum_agrees_with_sum_product_on_converged_frames_and_stall_stops_early():
    code = build_code(N, 0.7, 32)
    rng = np.random.default_rng(32)
    x, llr, syn = _channel(code, rng, 0.03, 6)
    ws, oks, _ = decode_syndromes(code, llr, syn, 100)
    wm, okm, itm = decode_syndromes(code, llr, syn, 100, algorithm="min-sum")
    assert oks.all() and okm.all()
    assert np.array_equal(ws, wm) and np.array_equal(wm, x)
    xb, llrb, synb = _channel(code, rng, 0.2, 2)          # far above threshold
    _, ok_b, it_b = decode_syndromes(code, llrb, synb, 150, algorithm="min-sum", stall=5)
    assert not ok_b.any() and (it_b < 150).all()


@needs_ms
def test_min_sum_self_correction_is_what_makes_it_converge_here():
    """Plain normalised min-sum oscillates on the high-degree table codes; self-corrected min-sum does not."""
    code = build_code(N, 0.7, 33)
    rng = np.random.default_rng(33)
    x, llr, syn = _channel(code, rng, 0.03, 8)
    _, ok_sc, _ = decode_syndromes(code, llr, syn, 100, algorithm="min-sum")
    _, ok_plain, _ = decode_syndromes(code, llr, syn, 100, algorithm="min-sum", self_correct=False, beta=0.0)
    assert ok_sc.all()
    assert ok_sc.sum() > ok_plain.sum()


@needs_ms
def test_min_sum_blind_reconciliation_with_warm_states(pool):
    rng = np.random.default_rng(34)
    alice = LdpcAlice(pool, seed=6, blind_max=1.4, blind_reveal="order")        # min-sum needs more room in f than sum-product
    bob = LdpcBob(pool, algorithm="min-sum")
    keys, msgs, frames, truth = [], [], [], []
    for i in range(4):
        a, b = _frame(rng, alice.frame_bits, 0.03)
        m, fr = alice.encode_blind(a, 0.03, frame_id=i)
        keys.append(b), msgs.append(m), frames.append(fr), truth.append(a)
    dec = ldpc.BlindDecoder(bob, keys, msgs, round_iterations=20, reveal="order")
    failing = dec.decode()
    rounds = 1
    while failing:
        dec.add_reveals([frames[i].reveal() for i in failing])
        failing = dec.decode()
        rounds += 1
    assert rounds > 1                                     # the first attempt (f = 1.0) cannot succeed
    assert dec.done
    for r, a in zip(dec.results, truth):
        assert np.array_equal(r.corrected, a)
    assert dec.leak_bits == sum(f.leak_bits for f in frames)
    with pytest.raises(ValueError, match="algorithm"):
        LdpcBob(pool, algorithm="bp")


# ------------------------------------------------------------- density evolution and the "de" code family
from qkdflow.distill import ldpc_design  # noqa: E402


def _normalised(lam, rho):
    return ({k: v / sum(lam.values()) for k, v in lam.items()}, {k: v / sum(rho.values()) for k, v in rho.items()})


def test_discretised_de_reproduces_the_regular_3_6_bsc_threshold():
    # (3,6) regular ensemble, sum-product on the BSC: p* = 0.084 (Richardson & Urbanke, "The capacity of LDPC
    # codes under message-passing decoding", IEEE T-IT 47, 599 (2001)). A node-update bug moves it far more.
    lam, rho = {3: 1.0}, {6: 1.0}
    assert ldpc_design.DensityEvolution(0.0815, 3).run(lam, rho)[0]
    assert not ldpc_design.DensityEvolution(0.0865, 3).run(lam, rho)[0]


def test_de_with_punctured_and_shortened_nodes_moves_the_threshold_the_right_way():
    """Random puncturing (erased channel) lowers the (3,6) BSC threshold, random shortening (known values) raises
    it; with both at zero the channel density is the plain BSC's."""
    lam, rho = {3: 1.0}, {6: 1.0}
    plain = ldpc_design.DensityEvolution(0.08, 3)
    mixed = ldpc_design.DensityEvolution(0.08, 3, punctured=0.0, shortened=0.0)
    assert np.array_equal(plain.channel, mixed.channel)
    assert ldpc_design.DensityEvolution(0.0815, 3).run(lam, rho)[0]
    assert not ldpc_design.DensityEvolution(0.0815, 3, punctured=0.05).run(lam, rho)[0]
    assert not ldpc_design.DensityEvolution(0.0865, 3).run(lam, rho)[0]
    assert ldpc_design.DensityEvolution(0.0865, 3, shortened=0.1).run(lam, rho)[0]
    with pytest.raises(ValueError, match="punctured"):
        ldpc_design.DensityEvolution(0.08, 3, punctured=0.6, shortened=0.5)


def test_adaptive_efficiency_is_the_least_leak_at_which_de_converges():
    lam, rho, q, delta = {3: 1.0}, {6: 1.0}, 0.08, 0.1
    f = ldpc_design.adaptive_efficiency(lam, rho, q, delta, tol=1e-3)
    kh = (1 - delta) * ldpc.binary_entropy(q)
    pi = 0.5 - f * kh                                  # punctured fraction at that efficiency (1 - R = 0.5)
    assert 0.0 < pi < delta and f > 1.0
    assert ldpc_design.DensityEvolution(q, 3, punctured=pi, shortened=delta - pi).run(lam, rho)[0]
    assert not ldpc_design.DensityEvolution(q, 3, punctured=pi + 2e-3, shortened=delta - pi - 2e-3).run(lam, rho)[0]
    # above the fully shortened code's threshold nothing converges
    assert ldpc_design.adaptive_efficiency(lam, rho, 0.11, delta) == math.inf


@pytest.mark.parametrize("rate", [0.80, 0.85, 0.90])
def test_discretised_de_reproduces_elkouss_thresholds_within_2_percent(rate):
    # Elkouss et al. ISIT 2009 Table I print p* = 0.0298 / 0.0199 / 0.0109 for their rate 0.80 / 0.85 / 0.90 rows
    # (our DE: 0.02979 / 0.01999 / 0.01088).
    lam, rho = _normalised(*ldpc_codes.DEGREE_DISTRIBUTIONS[rate])
    p_pub = ldpc_codes.DE_THRESHOLDS[rate]
    assert ldpc_design.DensityEvolution(0.98 * p_pub, max(lam)).run(lam, rho)[0]
    assert not ldpc_design.DensityEvolution(1.02 * p_pub, max(lam)).run(lam, rho)[0]


def test_de_family_distributions_are_normalised_check_concentrated_and_near_capacity():
    fam = ldpc_codes.FAMILIES["de"]
    designed = set(ldpc_codes._DE_HIGH)
    assert designed >= {0.85, 0.90, 0.95} and set(ldpc_codes.FAMILY_RATES["de"]) == set(TABLE_RATES) | designed
    for rate, (lam, rho) in fam.items():
        assert sum(lam.values()) == pytest.approx(1.0, abs=5e-5)
        assert sum(rho.values()) == pytest.approx(1.0, abs=5e-5)
        if rate not in designed:
            assert (lam, rho) == ldpc_codes.DEGREE_DISTRIBUTIONS[rate]
            continue
        assert sum(lam.values()) == pytest.approx(1.0, abs=1e-9)
        assert ldpc_design.design_rate(lam, rho) == pytest.approx(rate, abs=2e-5)
        assert len(rho) <= 2 and max(rho) - min(rho) <= 1            # check-concentrated
        assert min(lam.values()) > 0 and max(lam) <= 60
        p_star = ldpc_codes.FAMILY_THRESHOLDS["de"][rate]
        assert 1.0 < ldpc_design.efficiency_at_threshold(rate, p_star) <= 1.065    # 1.03-1.045; 1.064 at 0.95
        # stability lambda_2 rho'(1) 2 sqrt(p(1-p)) < 1 at the threshold, and fewer degree-2 nodes than checks
        # (so the builders place them all on a cycle-free staircase instead of converting some to degree 3)
        rho_p1 = sum(v * (k - 1) for k, v in rho.items())
        assert lam.get(2, 0.0) * rho_p1 * 2 * math.sqrt(p_star * (1 - p_star)) < 1.0
        assert lam.get(2, 0.0) / 2 < sum(v / k for k, v in rho.items())
    # the designed rows beat Elkouss et al.'s f* = (1 - R)/h(p*) (1.069 at 0.85, 1.156 at 0.90) clearly
    f_de = {r: ldpc_design.efficiency_at_threshold(r, ldpc_codes.FAMILY_THRESHOLDS["de"][r])
            for r in (0.84, 0.85, 0.875, 0.9)}
    assert f_de[0.85] < 1.04 and f_de[0.9] < 1.05
    assert f_de[0.84] < 1.04 and f_de[0.875] < 1.04                  # the gap-filling rows (1.032 / 1.034)


def test_blind_plan_at_n_1e5_uses_the_gap_filling_rows():
    # With a 3-sigma margin plan_blind takes the highest rate whose fully shortened efficiency reaches
    # 1.15 h(q + 3 sigma)/h(q): at n = 1e5 that is R <= 0.848 at QBER 2 % and R <= 0.889 / 0.876 at 1.3 / 1.5 %.
    # Without rows 0.84 / 0.875 it fell back to 0.80 / 0.85 and punctured 3-6 % of n (measured blind f 1.147 /
    # 1.140 / 1.125); at 2.5 % (R <= 0.817) row 0.815 replaces the Elkouss 0.80 row (f 1.116 -> 1.093). From
    # n = 1e5 on the default margin is 0 (the extension rows rescue the tail): higher rates at 0.5-2 %. Stand-ins
    # carry the sizes plan_blind reads (building the n = 1e5 PEG pool takes ~35 s).
    n = 100_000

    def pool(rates):
        return [SimpleNamespace(n=n, m=round((1 - r) * n), rate=r, puncture_order=np.arange(n // 10),
                                shorten_order=np.arange(n)) for r in rates]

    rates = ldpc_codes.FAMILY_RATES["de"]
    old = [r for r in rates if r not in (0.815, 0.84, 0.875)]
    for q, new_rate, old_rate in ((0.013, 0.875, 0.85), (0.015, 0.875, 0.85), (0.02, 0.84, 0.80),
                                  (0.025, 0.815, 0.80)):
        code, p0, s0, _ = plan_blind(pool(rates), q, margin_sigmas=3)
        assert code.rate == new_rate
        assert plan_blind(pool(old), q, margin_sigmas=3)[0].rate == old_rate
        assert p0 < plan_blind(pool(old), q, margin_sigmas=3)[1]     # fewer punctured symbols to start with
    for q, rate in ((0.005, 0.95), (0.01, 0.915), (0.02, 0.85)):       # default at n = 1e5: no margin
        assert plan_blind(pool(rates), q)[0].rate == rate > plan_blind(pool(rates), q, margin_sigmas=3)[0].rate
    small = [SimpleNamespace(**{**vars(c), "n": 10_000, "m": c.m // 10}) for c in pool(rates)]
    assert plan_blind(small, 0.01)[0].rate == plan_blind(small, 0.01, margin_sigmas=ldpc.BLIND_MARGIN_SIGMAS)[0].rate


@pytest.mark.parametrize("rate", sorted(ldpc_codes._DE_HIGH))
def test_de_family_thresholds_are_the_stored_ones(rate):
    lam, rho = ldpc_codes.FAMILIES["de"][rate]
    p_star = ldpc_codes.FAMILY_THRESHOLDS["de"][rate]
    assert ldpc_design.DensityEvolution(0.98 * p_star, max(lam)).run(lam, rho)[0]
    assert not ldpc_design.DensityEvolution(1.02 * p_star, max(lam)).run(lam, rho)[0]
    if rate in ldpc_codes.DEGREE_DISTRIBUTIONS:
        # above the Elkouss threshold of the same rate (0.0199 at 0.85, 0.0109 at 0.90), whose ensemble fails there
        assert p_star > 1.03 * ldpc_codes.DE_THRESHOLDS[rate]
        e_lam, e_rho = _normalised(*ldpc_codes.DEGREE_DISTRIBUTIONS[rate])
        assert not ldpc_design.DensityEvolution(0.98 * p_star, max(e_lam)).run(e_lam, e_rho)[0]
    if rate == 0.90:
        assert 0.98 * p_star > 1.10 * 0.0109            # rate 0.9: 13 % above Elkouss et al.'s 0.0109


def test_lp_optimiser_raises_the_rate_and_keeps_convergence():
    rho = {6: 1.0}
    lam = ldpc_design.optimise_lambda(rho, 0.07, {3: 1.0}, range(2, 9), rounds=6)
    assert sum(lam.values()) == pytest.approx(1.0)
    assert ldpc_design.design_rate(lam, rho) > 0.5 + 0.01
    assert ldpc_design.DensityEvolution(0.07, max(lam)).run(lam, rho)[0]


def test_lp_optimiser_respects_the_degree_2_caps():
    # (3,6) start at p = 0.06: the LP wants many degree-2 nodes; the node cap (0.15 m of them) binds
    rho = {6: 1.0}
    cap_nodes = ldpc_design.lambda2_cap(rho, 0.06, 0.15)
    cap_stab = ldpc_design.lambda2_cap(rho, 0.06, None)
    assert cap_nodes == pytest.approx(2 * 0.15 / 6) and cap_stab == pytest.approx(1 / (5 * 2 * math.sqrt(0.06 * 0.94)))
    lam = ldpc_design.optimise_lambda(rho, 0.06, {3: 1.0}, range(2, 9), rounds=4, deg2_per_check=0.15)
    assert 0 < lam.get(2, 0.0) <= cap_nodes + 1e-9
    free = ldpc_design.optimise_lambda(rho, 0.06, {3: 1.0}, range(2, 9), rounds=4, deg2_per_check=None)
    assert cap_nodes < free.get(2, 0.0) <= cap_stab + 1e-9


def test_starting_lambda_adds_the_tail_and_caps_lambda_2():
    rho = {64: 0.5, 65: 0.5}
    lam = ldpc_design.starting_lambda(dict(ldpc_codes.DEGREE_DISTRIBUTIONS[0.90][0]), rho, 60, 0.012, tail=0.3)
    assert sum(lam.values()) == pytest.approx(1.0) and lam[60] == pytest.approx(0.3)
    assert lam[2] <= ldpc_design.lambda2_cap(rho, 0.012) + 1e-12 < 0.07689 * 0.7


def test_rho_for_rate_and_rationalise():
    lam = ldpc_design.rationalise({2: 0.123456, 3: 0.3, 12: 0.576544, 30: 1e-5})
    assert 30 not in lam and sum(lam.values()) == pytest.approx(1.0, abs=1e-12)
    rho = ldpc_design.rho_for_rate(lam, 0.9)
    assert max(rho) - min(rho) == 1
    assert ldpc_design.design_rate(lam, rho) == pytest.approx(0.9, abs=1e-5)


def test_de_family_codes_build_cache_and_decode(tmp_path, monkeypatch):
    monkeypatch.setenv("QKDFLOW_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="family"):
        build_code(4096, 0.9, 1, family="bogus")
    with pytest.raises(ValueError, match="rate"):
        build_code(4096, 0.95, 1, family="elkouss2009")
    code = load_or_build_code(20000, 0.95, 3, family="de")
    assert code.construction == "peg" and code.family == "de"
    assert len(list(tmp_path.glob("*_de*_n20000_*.npz"))) == 1
    assert load_or_build_code(20000, 0.95, 3, family="de").fingerprint == code.fingerprint
    assert code.m == pytest.approx(code.n * (1 - 0.95), abs=2)
    lam = ldpc_codes.FAMILIES["de"][0.95][0]
    frac = np.array([lam[d] / d for d in sorted(lam)])
    counts = np.array([np.count_nonzero(code.var_degree == d) for d in sorted(lam)])
    assert np.allclose(counts / code.n, frac / frac.sum(), atol=2e-4)   # no degree-2 surplus converted
    # designed rows by PEG; the Elkouss rows of the family by the random matching: the very same graphs as family
    # elkouss2009's (so reconciliation at QBER >= 5 %, which uses rates <= 0.75, is unchanged)
    assert [ldpc_codes.default_construction("de", r) for r in (0.7, 0.8, 0.9, 0.95)] == ["random", "random", "peg",
                                                                                          "peg"]
    assert ldpc_codes.default_construction("elkouss2009", 0.9) == "random"
    assert build_code(4096, 0.7, 3, family="de").fingerprint == build_code(4096, 0.7, 3, family="elkouss2009"
                                                                           ).fingerprint
    rng = np.random.default_rng(8)
    pool = ldpc_codes.load_or_build_codes(20000, 3, rates=(0.90, 0.95), family="de")
    assert pool[1].fingerprint == code.fingerprint            # from the cache
    alice, bob = LdpcAlice(pool, seed=2, efficiency=1.25), LdpcBob(pool)
    for i, q in enumerate((0.004, 0.009)):
        a, b = _frame(rng, alice.frame_bits, q)
        msg = alice.encode(a, q, frame_id=i)
        assert msg.m == pool[1 - i].m                          # 0.4 % -> rate 0.95, 0.9 % -> rate 0.90
        r = bob.decode(b, msg)
        assert r.converged and np.array_equal(r.corrected, a)


def test_small_frames_leave_out_rows_whose_degrees_do_not_fit():
    # the designed rows reach variable degree 60: a 1024-bit frame has too few checks for the high rates
    lam_max = {r: max(ldpc_codes.FAMILIES["de"][r][0]) for r in ldpc_codes.FAMILY_RATES["de"]}
    fits = [r for r in ldpc_codes.FAMILY_RATES["de"] if round((1 - r) * 1024) >= 2 * lam_max[r]]
    assert 0 < len(fits) < len(ldpc_codes.FAMILY_RATES["de"])
    assert [r for r in ldpc_codes.FAMILY_RATES["de"] if ldpc_codes.buildable(1024, r, "de")] == fits
    assert all(ldpc_codes.buildable(100_000, r, "de") for r in ldpc_codes.FAMILY_RATES["de"])
    pool = ldpc_codes.load_or_build_codes(1024, 3, family="de", cache=False)
    assert sorted(round(c.rate, 3) for c in pool) == sorted(round(r, 3) for r in fits)
    assert ldpc.DEFAULT_CODE_FAMILY == "de"


def test_lifted_code_is_a_z_cover_of_its_base(tmp_path, monkeypatch):
    """Construction "lift" (codes longer than LIFT_BASE_N): every lifted edge projects onto a base edge, degree
    profiles are the base's Z times, lifted punctured symbols each own a check no earlier one touches (the
    triangular structure that makes rank(H_P) = p), base 4-cycles survive with probability 1/Z, and it decodes."""
    monkeypatch.setenv("QKDFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ldpc_codes, "LIFT_BASE_N", 4096)
    base = load_or_build_code(4096, 0.7, 5)
    lifted = load_or_build_code(3 * 4096, 0.7, 5)
    assert lifted.construction == "lift" and ldpc_codes.default_construction("elkouss2009", 0.7, 12288) == "lift"
    z = 3
    assert lifted.n == z * base.n and lifted.m == z * base.m and np.array_equal(
        lifted.var_degree, np.repeat(base.var_degree, z))
    chk = np.repeat(np.arange(lifted.m), np.diff(lifted.check_ptr))
    base_chk = np.repeat(np.arange(base.m), np.diff(base.check_ptr))
    base_edges = set(zip(base_chk.tolist(), base.edge_var.tolist()))
    assert set(zip((chk // z).tolist(), (lifted.edge_var // z).tolist())) == base_edges
    assert np.array_equal(np.bincount(lifted.edge_var, minlength=lifted.n), lifted.var_degree)
    assert all(np.all(np.diff(lifted.edge_var[lifted.check_ptr[c]:lifted.check_ptr[c + 1]]) > 0)
               for c in range(0, lifted.m, 7))
    # punctured symbols in order: each has a check with no earlier punctured symbol
    order = np.full(lifted.n, -1)
    order[lifted.puncture_order] = np.arange(lifted.puncture_order.size)
    rank_in_check = order[lifted.edge_var]
    for i, v in enumerate(lifted.puncture_order[:400]):
        checks = chk[lifted.edge_var == v]
        assert any(not np.any((rank_in_check[chk == c] >= 0) & (rank_in_check[chk == c] < i)) for c in checks)
    # a base 4-cycle survives (as Z lifted ones) iff its shifts sum to 0 mod Z: Z times a subset of the base's
    four, four0 = ldpc_codes.count_four_cycles(lifted), ldpc_codes.count_four_cycles(base)
    assert four % z == 0 and four0 / z / 2 < four / z < 2 * four0 / z
    assert np.intersect1d(lifted.puncture_order, lifted.shorten_order).size == 0
    assert lifted.puncture_order.size + lifted.shorten_order.size == lifted.n
    # deterministic, and a different code from another seed
    assert build_code(3 * 4096, 0.7, 5).fingerprint == lifted.fingerprint
    assert build_code(3 * 4096, 0.7, 6).fingerprint != lifted.fingerprint
    # it decodes: one-shot at QBER 3 %, f = 1.3
    rng = np.random.default_rng(9)
    alice, bob = LdpcAlice([lifted], seed=1, efficiency=1.3), LdpcBob([lifted])
    a = rng.integers(0, 2, (4, alice.frame_bits), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < 0.03).astype(np.uint8)
    res = bob.decode_many(list(b), [alice.encode(a[i], 0.03, frame_id=i) for i in range(4)])
    assert all(r.converged and np.array_equal(r.corrected, a[i]) for i, r in enumerate(res))
    with pytest.raises(ValueError, match="not a multiple"):
        build_code(3 * 4096 + 1, 0.7, 5)


def test_blind_padded_last_frame_is_planned_for_its_real_bits(pool):
    """A key block's last frame, 15 % public zero padding: the first attempt is planned for the real bits (the code
    choice too: a smaller first syndrome leak), Bob decodes the padding as known zeros, and the leak per
    real bit stays that of a full frame."""
    rng = np.random.default_rng(51)
    alice = LdpcAlice(pool, seed=51, blind_reveal="order")
    k = alice.frame_bits
    pad = int(0.15 * k)
    q = 0.03
    a = rng.integers(0, 2, (3, k), dtype=np.uint8)
    a[:, k - pad:] = 0
    b = a ^ (rng.random(a.shape) < q).astype(np.uint8)
    b[:, k - pad:] = 0
    full = [alice.encode_blind(a[i], q, frame_id=i) for i in range(3)]
    part = [alice.encode_blind(a[i], q, frame_id=10 + i, pad_bits=pad) for i in range(3)]
    # the same or a higher-rate mother code, and a smaller first syndrome leak
    assert all(pm.m <= fm.m and pm.leak_bits < fm.leak_bits for (pm, _), (fm, _) in zip(part, full))
    h = binary_entropy(q)
    code = next(c for c in pool if c.fingerprint == part[0][0].code_fingerprint)
    p_cap = min(round(0.1 * N), code.puncture_order.size)
    # f = blind_start on the real bits, as far as the punctured symbols allow
    assert part[0][0].leak_bits == max(code.m - p_cap, math.ceil(1.0 * (k - pad) * h - 1e-9))
    msgs = [m for m, _ in part]
    dec = BlindDecoder(LdpcBob(pool), list(b), msgs, pads=[pad] * 3, reveal="order")
    failing = dec.decode()
    while failing:
        dec.add_reveals([part[i][1].reveal() for i in failing])
        failing = dec.decode()
    assert dec.done
    for i, r in enumerate(dec.results):
        assert np.array_equal(r.corrected, a[i])
    f_real = dec.leak_bits / (3 * (k - pad) * h)
    assert 1.0 <= f_real < 1.35
    with pytest.raises(ValueError, match="padding"):
        alice.encode_blind(np.ones(k, dtype=np.uint8), q, pad_bits=pad)
    with pytest.raises(ValueError, match="padding"):
        LdpcBob(pool).decode_many([np.ones(k, dtype=np.uint8)], [msgs[0]], pads=[pad])
    with pytest.raises(ValueError, match="pads"):
        BlindDecoder(LdpcBob(pool), list(b), msgs, pads=[pad], reveal="order")
