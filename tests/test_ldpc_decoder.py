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
    rng = np.random.default_rng(2024)
    x = rng.integers(0, 2, (len(QBERS), code.n), dtype=np.uint8)
    syn = np.bitwise_xor.reduceat(x[:, code.edge_var], code.check_ptr[:-1], axis=1).astype(np.uint8)
    llr = np.empty((len(QBERS), code.n))
    for i, q in enumerate(QBERS):
        y = x[i] ^ (rng.random(code.n) < q).astype(np.uint8)
        mag = np.log((1 - 0.01) / 0.01) if q == 0.0 else np.log((1 - q) / q)
        llr[i] = np.where(y == 0, mag, -mag)
    return code, x, llr, syn


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
