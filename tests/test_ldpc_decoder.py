"""The C sum-product decoder's SIMD kernels against its scalar reference (qkdflow.distill._ldpc.decode_many).

The streaming kernels (1: float16 check messages, 2: float32; lane refill, packed hard decisions, prefix/suffix phi
sums) and the earlier group kernel (3) must decode the same frames as the scalar frame-by-frame kernel (Gallager's
phi form of layered sum-product, see _ldpc.c), whatever the batch size, order or composition, and resume from saved
check messages (blind reconciliation's warm restarts).
"""
from __future__ import annotations

import numpy as np
import pytest

from qkdflow.distill import ldpc
from qkdflow.distill.ldpc_codes import build_code

_c = ldpc._cldpc
needs_stream = pytest.mark.skipif(_c is None or not getattr(_c, "HAVE_SIMD_STREAM", 0),
                                  reason="C extension without the AVX-512 streaming kernel on this CPU")
STREAM_KERNELS = (1, 2)
MAX_ITER = 60
# per frame: BSC crossover probability; 0.0 decodes at iteration 0, 0.13 is above the rate-1/2 threshold (fails)
QBERS = [0.0, 0.03, 0.06, 0.07, 0.13] * 8 + [0.06, 0.07]       # 42 frames: more than two rounds of 16 lanes


@pytest.fixture(scope="module")
def frames():
    """Seeded frames of one rate-1/2 code: (code, truth words, LLRs, syndromes)."""
    code = build_code(8192, 0.5, 21)
    x, llr, syn = _bsc_frames(code.check_ptr, code.edge_var, code.n, QBERS, np.random.default_rng(2024))
    return code, x, llr, syn


def _bsc_frames(check_ptr, edge_var, n: int, qbers, rng):
    """Random words x, their syndromes, and Bob's LLRs after a BSC(q) per frame (q = 0: LLR magnitude of 1 %)."""
    x = rng.integers(0, 2, (len(qbers), n), dtype=np.uint8)
    syn = np.bitwise_xor.reduceat(x[:, edge_var], check_ptr[:-1], axis=1).astype(np.uint8)
    llr = np.empty((len(qbers), n))
    for i, q in enumerate(qbers):
        y = x[i] ^ (rng.random(n) < q).astype(np.uint8)
        mag = np.log((1 - 0.01) / 0.01) if q == 0.0 else np.log((1 - q) / q)
        llr[i] = np.where(y == 0, mag, -mag)
    return x, llr, syn


def _decode(code, llr, syn, simd, kernel=0, max_iter=MAX_ITER, state=None, warm=False):
    f = llr.shape[0]
    words = np.empty((f, code.n), np.uint8)
    iters = np.zeros(f, np.int64)
    ok = np.zeros(f, np.uint8)
    name = _c.decode_many(code.check_ptr, code.edge_var, np.ascontiguousarray(llr), np.ascontiguousarray(syn),
                          max_iter, words, iters, ok, simd, state, warm, kernel)
    return words, ok.astype(bool), iters, name


@pytest.fixture(scope="module")
def scalar(frames):
    code, _, llr, syn = frames
    return _decode(code, llr, syn, False)


@needs_stream
@pytest.mark.parametrize("kernel", STREAM_KERNELS + (3,))
def test_simd_kernels_decode_the_frames_the_scalar_kernel_decodes(frames, scalar, kernel):
    code, x, llr, syn = frames
    w0, ok0, it0, name0 = scalar
    w, ok, it, name = _decode(code, llr, syn, True, kernel)
    assert name0 == "scalar" and name.startswith("avx512x16")
    assert ok0.sum() >= 30 and not ok0.all()             # the set-up has both outcomes
    assert np.array_equal(ok, ok0)
    assert np.array_equal(w[ok], x[ok]) and np.array_equal(w0[ok0], x[ok0])
    assert np.all(it[~ok] == MAX_ITER)
    assert np.all(it[np.array(QBERS) == 0.0] == 0)     # hard decision already satisfies the syndrome
    assert np.all(np.abs(it - it0) <= np.maximum(3, it0 // 5))


@needs_stream
@pytest.mark.parametrize("kernel", STREAM_KERNELS)
def test_stream_result_of_a_frame_does_not_depend_on_its_batch(frames, kernel):
    """Lanes are independent: a frame decodes bit-identically alone, in another order or batch size."""
    code, _, llr, syn = frames
    w, ok, it, _ = _decode(code, llr, syn, True, kernel)
    sub = np.random.default_rng(5).permutation(len(QBERS))[:21]
    w2, ok2, it2, _ = _decode(code, llr[sub], syn[sub], True, kernel)
    assert np.array_equal(w2, w[sub]) and np.array_equal(ok2, ok[sub]) and np.array_equal(it2, it[sub])
    trio = sub[:3]                                         # smallest batch that still runs the SIMD kernel
    w3, ok3, it3, name = _decode(code, llr[trio], syn[trio], True, kernel)
    assert name.startswith("avx512x16-stream")
    assert np.array_equal(w3, w[trio]) and np.array_equal(it3, it[trio])


@needs_stream
def test_float16_messages_change_no_outcome_and_few_iterations(frames):
    code, _, llr, syn = frames
    w16, ok16, it16, n16 = _decode(code, llr, syn, True, 1)
    w32, ok32, it32, n32 = _decode(code, llr, syn, True, 2)
    assert (n16, n32) == ("avx512x16-stream-f16", "avx512x16-stream")
    assert np.array_equal(ok16, ok32) and np.array_equal(w16[ok16], w32[ok32])
    assert np.abs(it16[ok16] - it32[ok32]).max() <= 2


@needs_stream
@pytest.mark.parametrize("kernel", STREAM_KERNELS)
def test_stream_warm_restart_resumes_from_saved_messages(frames, kernel):
    code, x, llr, syn = frames
    sel = np.flatnonzero(np.isin(QBERS, (0.06, 0.07)))[:10]
    _, ok_cold, it_cold, _ = _decode(code, llr[sel], syn[sel], True, kernel)
    assert ok_cold.all() and it_cold.min() > 4
    state = np.zeros((sel.size, code.n_edges), np.float32)
    _, ok1, it1, _ = _decode(code, llr[sel], syn[sel], True, kernel, max_iter=4, state=state)
    assert not ok1.any() and np.all(it1 == 4)
    assert np.count_nonzero(state) > 0.9 * state.size     # every unconverged frame's messages written back
    if kernel == 1:                                        # stored as float16: exactly representable there
        assert np.array_equal(state.astype(np.float16).astype(np.float32), state)
    w2, ok2, it2, _ = _decode(code, llr[sel], syn[sel], True, kernel, max_iter=MAX_ITER, state=state, warm=True)
    assert ok2.all() and np.array_equal(w2, x[sel])
    assert np.all(np.abs(4 + it2 - it_cold) <= 3)          # the restart continues, it does not start over


@pytest.mark.skipif(_c is None, reason="C extension not built")
def test_kernel_argument_is_checked(frames):
    code, _, llr, syn = frames
    with pytest.raises(ValueError, match="kernel"):
        _decode(code, llr[:4], syn[:4], True, 7)
    w, ok, _, name = _decode(code, llr[:4], syn[:4], False, 0)    # simd off: the scalar kernel, any CPU
    assert name == "scalar" and ok[0] and ok[1]


# ---------------------------------------------------------------------------------------------------------------
# Streaming kernel internals (_ldpc.c): the 16-lane pass (update loop run backwards with the suffix sums folded in,
# or forward when a check lists a variable twice), the 8-lane tail layout (at most 8 frames left and no queue:
# rows repacked to lanes 0-7, two edges per vector) and the syndrome test that first revisits the checks the
# last pass left unsatisfied. All of them must give every frame the same bits whatever batch it runs in.

class _Graph:
    """Bare Tanner graph in the CSR form decode_many takes (check_ptr, edge_var, n)."""

    def __init__(self, check_ptr: np.ndarray, edge_var: np.ndarray, n: int):
        self.check_ptr = np.ascontiguousarray(check_ptr, np.int64)
        self.edge_var = np.ascontiguousarray(edge_var, np.int32)
        self.n = n
        self.m = self.check_ptr.size - 1
        self.n_edges = self.edge_var.size


def _random_graph(n: int, dv: int, dc_choices, seed: int, double_edges: bool, unused: int = 0) -> _Graph:
    """Random socket matching with irregular check degrees; with double_edges some checks list a variable twice
    (kept, as a multigraph), else repeated variables are replaced. `unused` more variables in no check (their
    decoded bits are their channel hard decisions)."""
    rng = np.random.default_rng(seed)
    sockets = np.repeat(np.arange(n, dtype=np.int32), dv)
    rng.shuffle(sockets)
    degs, s = [], 0
    while s < sockets.size:
        d = min(int(rng.choice(dc_choices)), sockets.size - s)
        degs.append(d)
        s += d
    ptr = np.concatenate([[0], np.cumsum(degs)]).astype(np.int64)
    ev = sockets.copy()
    for c in range(len(degs)):
        row = ev[ptr[c]:ptr[c + 1]]
        if double_edges:
            if c % 7 == 0 and row.size >= 3:
                row[-1] = row[0]                           # a double edge
        else:
            _, first = np.unique(row, return_index=True)
            dup = np.setdiff1d(np.arange(row.size), first)
            row[dup] = rng.choice(np.setdiff1d(np.arange(n), row), dup.size, replace=False)
    return _Graph(ptr, ev, n + unused)


def _graph_frames(g: _Graph, qbers, seed: int):
    """Frames at the given BSC crossover probabilities, scaled by m / (n / 2) (the graph's redundancy against
    rate 1/2) so that every graph sees both outcomes."""
    qbers = [q * g.m / (g.n / 2) for q in qbers]
    return _bsc_frames(g.check_ptr, g.edge_var, g.n, qbers, np.random.default_rng(seed))


def _syndrome(g: _Graph, w: np.ndarray) -> np.ndarray:
    return np.bitwise_xor.reduceat(w[:, g.edge_var], g.check_ptr[:-1], axis=1).astype(np.uint8)


GRAPHS = {
    "rate-1/2 code": lambda: build_code(4096, 0.5, 7),
    "irregular checks": lambda: _random_graph(3000, 3, [9, 10, 12, 13], 11, False, unused=40),
    "double edges": lambda: _random_graph(2000, 3, [5, 6, 7], 12, True),
    "tiny": lambda: _random_graph(60, 3, [4, 6], 13, True, unused=9),
}
TAIL_QBERS = [0.0, 0.02, 0.05, 0.07, 0.09, 0.12] * 4          # 24 frames: 16-lane passes, refills, 8-lane tail


@needs_stream
@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("kernel", STREAM_KERNELS)
def test_stream_tail_layout_and_batches_give_identical_bits(graph, kernel):
    """Bit-identical per frame: in one batch of 24 (16-lane passes, then the 8-lane tail after lanes are moved),
    in batches of 3-8 (8-lane layout from the second pass on), and in batches of 9-12 (16 lanes, then the tail)."""
    g = GRAPHS[graph]()
    x, llr, syn = _graph_frames(g, TAIL_QBERS, 100)
    w, ok, it, name = _decode(g, llr, syn, True, kernel, max_iter=40)
    assert name.startswith("avx512x16-stream")
    assert ok.any() and it.max() > 2
    assert np.array_equal(_syndrome(g, w[ok]), syn[ok])        # converged = the syndrome is satisfied
    for start, size in ((0, 3), (3, 8), (11, 5), (16, 8), (0, 9), (5, 12), (12, 12)):
        sel = np.arange(start, start + size)
        w2, ok2, it2, _ = _decode(g, llr[sel], syn[sel], True, kernel, max_iter=40)
        assert np.array_equal(w2, w[sel]) and np.array_equal(ok2, ok[sel]) and np.array_equal(it2, it[sel]), (start, size)
    rev = np.arange(len(TAIL_QBERS))[::-1]                     # other lanes, other tail
    w3, ok3, it3, _ = _decode(g, llr[rev], syn[rev], True, kernel, max_iter=40)
    assert np.array_equal(w3, w[rev]) and np.array_equal(it3, it[rev])


@needs_stream
@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_stream_stops_at_the_first_iteration_that_satisfies_the_syndrome(graph):
    """The syndrome test (last pass's unsatisfied checks first, then all) is exact: a frame that converged at
    iteration k is not converged when capped at k - 1, and its word at k satisfies the syndrome."""
    g = GRAPHS[graph]()
    x, llr, syn = _graph_frames(g, TAIL_QBERS[:12], 200)
    w, ok, it, _ = _decode(g, llr, syn, True, 1, max_iter=40)
    assert np.all(it[np.array(TAIL_QBERS[:12]) == 0.0] == 0)
    sel = np.flatnonzero(ok & (it > 0))
    assert sel.size >= 3
    assert np.array_equal(_syndrome(g, w[sel]), syn[sel])
    for i in sel:
        wc, okc, itc, _ = _decode(g, llr[[i] * 3], syn[[i] * 3], True, 1, max_iter=int(it[i]) - 1)
        assert not okc.any() and np.all(itc == it[i] - 1)
        assert np.any(_syndrome(g, wc[:1]) != syn[i])


@needs_stream
@pytest.mark.parametrize("graph", ["rate-1/2 code", "double edges"])
@pytest.mark.parametrize("kernel", STREAM_KERNELS)
def test_stream_saved_messages_and_warm_restarts_do_not_depend_on_the_batch(graph, kernel):
    """Blind reconciliation's round trip: messages written back by unconverged frames (from the 16-lane or the
    8-lane layout) and the warm restart from them are bit-identical per frame whatever the batch."""
    g = GRAPHS[graph]()
    qb = [0.07, 0.08, 0.09, 0.10] * 5                         # 20 frames, none converges within 3 iterations
    x, llr, syn = _graph_frames(g, qb, 300)
    st = np.zeros((len(qb), g.n_edges), np.float32)
    _, ok, it, _ = _decode(g, llr, syn, True, kernel, max_iter=3, state=st)
    assert not ok.any() and np.all(it == 3) and np.count_nonzero(st) > 0.9 * st.size
    for sel in (np.arange(4), np.arange(4, 20, 2), np.arange(3, 14)):
        st2 = np.zeros((sel.size, g.n_edges), np.float32)
        _decode(g, llr[sel], syn[sel], True, kernel, max_iter=3, state=st2)
        assert np.array_equal(st2, st[sel])
    ref = _decode(g, llr, syn, True, kernel, max_iter=30, state=st.copy(), warm=True)
    for sel in (np.arange(5), np.arange(5, 20)):
        st3 = st[sel].copy()
        w3, ok3, it3, _ = _decode(g, llr[sel], syn[sel], True, kernel, max_iter=30, state=st3, warm=True)
        assert np.array_equal(w3, ref[0][sel]) and np.array_equal(ok3, ref[1][sel]) and np.array_equal(it3, ref[2][sel])
    assert ref[1].any()


@needs_stream
@pytest.mark.parametrize("graph", ["irregular checks", "double edges"])
def test_stream_matches_the_scalar_reference_on_random_graphs(graph):
    """Same outcomes as the scalar kernel (its own phi table and double sums: iteration counts may differ a little)."""
    g = GRAPHS[graph]()
    x, llr, syn = _graph_frames(g, TAIL_QBERS, 400)
    w0, ok0, it0, _ = _decode(g, llr, syn, False, max_iter=60)
    w, ok, it, _ = _decode(g, llr, syn, True, 1, max_iter=60)
    agree = ok == ok0
    assert agree.mean() >= 0.9 and ok0.sum() >= 8
    both = ok & ok0
    assert np.array_equal(w[both], w0[both])
    assert np.all(np.abs(it[both] - it0[both]) <= np.maximum(3, it0[both] // 5))


def _decode_stall(code, llr, syn, simd, stall, kernel=0, state=None, warm=False):
    f = llr.shape[0]
    words = np.empty((f, code.n), np.uint8)
    iters = np.zeros(f, np.int64)
    ok = np.zeros(f, np.uint8)
    _c.decode_many(code.check_ptr, code.edge_var, np.ascontiguousarray(llr), np.ascontiguousarray(syn),
                   MAX_ITER, words, iters, ok, simd, state, warm, kernel, stall)
    return words, ok.astype(bool), iters


@pytest.mark.skipif(_c is None, reason="C extension not built")
@pytest.mark.parametrize("simd", [False, True])
def test_stall_rule_gives_up_hopeless_frames_early_and_keeps_the_rest(frames, scalar, simd):
    """stall = K: a frame above threshold stops once K iterations bring no new minimum of failing checks; a
    decodable frame decodes to the same word (the rule only ever stops frames that have not converged)."""
    if simd and not getattr(_c, "HAVE_SIMD_STREAM", 0):
        pytest.skip("no AVX-512 streaming kernel on this CPU")
    code, x, llr, syn = frames
    w0, ok0, it0, _ = _decode(code, llr, syn, simd)
    w, ok, it = _decode_stall(code, llr, syn, simd, stall=4)
    hopeless = np.array(QBERS) == 0.13
    assert not ok0[hopeless].any() and np.all(it0[hopeless] == MAX_ITER)
    assert not ok[hopeless].any() and np.all(it[hopeless] < MAX_ITER // 2)
    # no frame decodes with the rule that did not without it, and every decoded word is the truth
    assert not (ok & ~ok0).any() and np.array_equal(w[ok], x[ok])
    easy = np.isin(np.array(QBERS), [0.0, 0.03])
    assert ok[easy].all() and np.array_equal(it[easy], it0[easy])
    # stall = 0 is the plain decoder
    w1, ok1, it1 = _decode_stall(code, llr, syn, simd, stall=0)
    assert np.array_equal(w1, w0) and np.array_equal(it1, it0)


@pytest.mark.skipif(_c is None, reason="C extension not built")
def test_stall_must_not_be_negative(frames):
    code, _, llr, syn = frames
    with pytest.raises(ValueError, match="stall"):
        _decode_stall(code, llr[:2], syn[:2], False, stall=-1)


# ---------------------------------------------------------------------------------------------------------------
# Blind mode's plumbing: posteriors of unconverged frames (post_out) and messages kept in place (state_rows).

ALL_KERNELS = [(False, 0), (True, 1), (True, 2), (True, 3)]     # (simd, kernel): scalar, stream f16/f32, group


def _decode_io(code, llr, syn, simd, kernel, max_iter, state=None, warm=False, post=None, rows=None, stride=0,
               post_in=None, post_ok=None):
    f = llr.shape[0]
    words = np.empty((f, code.n), np.uint8)
    iters = np.zeros(f, np.int64)
    ok = np.zeros(f, np.uint8)
    args = [code.check_ptr, code.edge_var, np.ascontiguousarray(llr), np.ascontiguousarray(syn), max_iter, words,
            iters, ok, simd, state, warm, kernel, 0, post]
    if rows is not None or post_in is not None or post_ok is not None:
        args += [None if rows is None else np.ascontiguousarray(rows, np.int64), stride, post_in, post_ok]
    _c.decode_many(*args)
    return words, ok.astype(bool), iters


@needs_stream
@pytest.mark.parametrize("simd,kernel", ALL_KERNELS)
def test_post_out_holds_the_posteriors_of_the_frames_that_did_not_converge(frames, simd, kernel):
    """The a-posteriori LLRs written for a failed frame are llr + the sum of its saved check messages (up to the
    float16 rounding of stored messages in kernel 1); converged frames' rows are left as they were."""
    code, x, llr, syn = frames
    sel = np.flatnonzero(np.isin(QBERS, (0.0, 0.06, 0.13)))[:12]
    state = np.zeros((sel.size, code.n_edges), np.float32)
    post = np.full((sel.size, code.n), np.nan, np.float32)
    _, ok, _ = _decode_io(code, llr[sel], syn[sel], simd, kernel, 5, state=state, post=post)
    assert ok.any() and not ok.all()
    assert np.isnan(post[ok]).all()
    tol = 0.05 if kernel == 1 else 1e-3
    for j in np.flatnonzero(~ok):
        ref = llr[sel[j]] + np.bincount(code.edge_var, weights=state[j], minlength=code.n)
        assert np.max(np.abs(post[j] - ref) / np.maximum(1.0, np.abs(ref))) < tol


@needs_stream
@pytest.mark.parametrize("simd,kernel", ALL_KERNELS)
def test_state_rows_keep_each_frames_messages_in_place(frames, simd, kernel):
    """Messages read from and written to rows of a wider (R, S) array, in any row order, give bit-identical words,
    iterations and messages to the packed (F, E) state, for the first attempt and the warm restart; the columns
    past E and the rows of other frames are never touched."""
    code, _, llr, syn = frames
    sel = np.flatnonzero(np.isin(QBERS, (0.06, 0.07, 0.13)))[:20]
    packed = np.zeros((sel.size, code.n_edges), np.float32)
    ref1 = _decode_io(code, llr[sel], syn[sel], simd, kernel, 4, state=packed)
    ref_state = packed.copy()
    ref2 = _decode_io(code, llr[sel], syn[sel], simd, kernel, MAX_ITER, state=packed, warm=True)
    rows = np.random.default_rng(5).permutation(sel.size + 7)[:sel.size]
    stride = code.n_edges + 33
    store = np.zeros((sel.size + 7, stride), np.float32)
    store[:, code.n_edges:] = 7.0                          # sentinels: never read, never written
    unused = np.setdiff1d(np.arange(store.shape[0]), rows)
    store[unused] = 9.0
    got1 = _decode_io(code, llr[sel], syn[sel], simd, kernel, 4, state=store, rows=rows, stride=stride)
    assert all(np.array_equal(a, b) for a, b in zip(ref1, got1))
    assert np.array_equal(store[rows, :code.n_edges], ref_state)
    got2 = _decode_io(code, llr[sel], syn[sel], simd, kernel, MAX_ITER, state=store, warm=True, rows=rows,
                      stride=stride)
    assert all(np.array_equal(a, b) for a, b in zip(ref2, got2))
    assert np.array_equal(store[rows, :code.n_edges], packed)
    assert np.all(store[rows, code.n_edges:] == 7.0) and np.all(store[unused] == 9.0)


@pytest.mark.skipif(_c is None, reason="C extension not built")
def test_state_rows_and_post_out_are_checked(frames):
    code, _, llr, syn = frames
    st = np.zeros((4, code.n_edges), np.float32)
    for rows, stride, match in (([0, 1, 2, 4], code.n_edges, "out of range"), ([0, 1, 2, 3], code.n_edges - 1, "stride"),
                                ([0, 1, 2], code.n_edges, "stride")):
        with pytest.raises(ValueError, match=match):
            _decode_io(code, llr[:4], syn[:4], True, 0, 3, state=st, rows=rows, stride=stride)
    with pytest.raises(ValueError, match="without a state"):
        _decode_io(code, llr[:4], syn[:4], True, 0, 3, rows=[0, 1, 2, 3], stride=code.n_edges)
    with pytest.raises(ValueError, match="post_out"):
        _decode_io(code, llr[:4], syn[:4], True, 0, 3, post=np.zeros((3, code.n), np.float32))


@needs_stream
@pytest.mark.parametrize("kernel", STREAM_KERNELS)
def test_warm_restart_from_posteriors_matches_the_restart_from_messages(frames, kernel):
    """post_in: a warm frame resumes from its last attempt's posteriors (post_out) instead of llr + the sum of its
    saved messages. Equal up to float rounding, so the same frames converge, to the same words, in about as many
    iterations; frames without the flag take the sum."""
    code, x, llr, syn = frames
    sel = np.flatnonzero(np.isin(QBERS, (0.06, 0.07)))[:12]
    state = np.zeros((sel.size, code.n_edges), np.float32)
    post = np.zeros((sel.size, code.n), np.float32)
    _, ok1, _ = _decode_io(code, llr[sel], syn[sel], True, kernel, 4, state=state, post=post)
    assert not ok1.any()
    ref = _decode_io(code, llr[sel], syn[sel], True, kernel, MAX_ITER, state=state.copy(), warm=True)
    flags = np.arange(sel.size) % 3 != 0                  # a third of the frames take the sum
    w, ok, it = _decode_io(code, llr[sel], syn[sel], True, kernel, MAX_ITER, state=state.copy(), warm=True,
                           post_in=post, post_ok=flags.astype(np.uint8))
    assert ok.all() and ref[1].all() and np.array_equal(w, x[sel]) and np.array_equal(ref[0], w)
    assert np.array_equal(it[~flags], ref[2][~flags])     # the sum path is untouched
    assert np.all(np.abs(it - ref[2]) <= 2)
    with pytest.raises(ValueError, match="post_in and post_ok"):
        _decode_io(code, llr[sel], syn[sel], True, kernel, 3, state=state.copy(), warm=True, post_in=post)
    with pytest.raises(ValueError, match="post_in must hold"):
        _decode_io(code, llr[sel], syn[sel], True, kernel, 3, state=state.copy(), warm=True, post_in=post[:3],
                   post_ok=flags.astype(np.uint8)[:3])
