/* Layered sum-product syndrome decoder for binary LDPC codes (optional CPython extension qkdflow.distill._ldpc).
 *
 * Algorithm: belief propagation in the log domain with the check rule in Gallager's phi form,
 *     phi(x) = -ln tanh(x/2),  |L_{c->v}| = phi( sum_{v' != v} phi(|L_{v'->c}|) ),
 *     sign L_{c->v} = (-1)^{s_c} prod_{v' != v} sign L_{v'->c},
 * (Gallager 1963; Richardson & Urbanke, "Modern Coding Theory" (2008), Sec. 2.5.2), the syndrome bit s_c
 * flipping the sign of every outgoing message of check c (syndrome / Slepian-Wolf decoding).
 * Schedule: layered ("row-serial"): checks are processed one after another and the a-posteriori LLRs of their
 * variables are refreshed at once (Hocevar, IEEE SiPS 2004; Mansour & Shanbhag, IEEE TVLSI 11(6) 2003), which
 * converges in about half the iterations of the flooding schedule.
 * Early stopping: after every iteration the hard decision is checked against all m parity equations.
 *
 * Number formats: LLRs and messages are float32 (the a-posteriori sums and the per-check phi sums are
 * accumulated in double so that "total - own term" does not cancel catastrophically).  phi is read from a
 * table indexed by the float32 bit pattern of its argument (8 exponent + PHI_MANT mantissa bits, i.e. a
 * log-spaced grid with 2^-PHI_MANT relative spacing on [2^-24, 2^6], value at the bucket's geometric centre):
 * relative argument error <= 2^-(PHI_MANT+1) = 4.9e-4, so |phi error| <= 4.9e-4 * x |phi'(x)| (< 2.5e-4
 * absolute for x <= 1, checked against the exact function in tests/test_ldpc.py).  Arguments are clamped to
 * that range: a check message is capped at phi(2^-24) = 17.3.
 *
 * The default SIMD kernel (decode_stream16, below) differs in number formats only: check messages stored as float16,
 * exclusive phi sums as float32 prefix + suffix sums instead of a double total minus the own term.
 *
 * No global mutable state after module init (the table is written once, in PyInit); the decoding loop runs
 * with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SCALAR_TAIL 6                     /* group kernel: a last group this small runs frame by frame */
#define STREAM_MIN_FRAMES 3               /* streaming kernel: fewer frames run frame by frame */
#define PHI_MANT 10                       /* mantissa bits kept in the table index */
#define PHI_SHIFT (23 - PHI_MANT)
#define PHI_XMIN_EXP (-24)                /* table covers [2^-24, 2^6] */
#define PHI_XMAX_EXP 6
#define PF_CHECKS 2                       /* streaming kernel: prefetch distance in mean check degrees */
#define PF_EDGES_MIN 16                   /* ... clamped to [PF_EDGES_MIN, PF_EDGES_MAX] edges */
#define PF_EDGES_MAX 256
#define ROW_LANES 4                       /* streaming kernel: lanes loaded / saved together from which a whole-row
                                           * vector step beats element-by-element copies (measured at n = 1e5) */
#define MSG_PF_EDGES 256                  /* streaming kernel: message-stream prefetch distance in edges (64-1024:
                                           * the same speed, measured) */

static float *phi_tab = NULL;
static int32_t phi_base = 0;              /* (bits of 2^-24) >> PHI_SHIFT */
static float phi_xmin, phi_xmax;

static inline int32_t f2i(float x) { int32_t i; memcpy(&i, &x, 4); return i; }
static inline float i2f(int32_t i) { float x; memcpy(&x, &i, 4); return x; }

static int build_phi_table(void)
{
    phi_xmin = ldexpf(1.0f, PHI_XMIN_EXP);
    phi_xmax = ldexpf(1.0f, PHI_XMAX_EXP);
    phi_base = f2i(phi_xmin) >> PHI_SHIFT;
    int32_t top = f2i(phi_xmax) >> PHI_SHIFT;
    size_t len = (size_t)(top - phi_base + 1);
    phi_tab = (float *)malloc(len * sizeof(float));
    if (!phi_tab) return -1;
    for (size_t i = 0; i < len; i++) {
        int32_t lo = (int32_t)((phi_base + (int32_t)i) << PHI_SHIFT);
        double a = i2f(lo), b = i2f(lo + (1 << PHI_SHIFT));  /* bucket [a, b) */
        double x = sqrt(a * b);                              /* geometric centre */
        phi_tab[i] = (float)(-log(tanh(0.5 * x)));
    }
    return 0;
}

/* Branch-free clamp (minss/maxss; a NaN argument ends at x_min) and table read. */
/* SIMD kernel's phi: per octave [2^k, 2^(k+1)) (k = -24..5, segment k + 24; segment 30 = the clamp value
 * x = 2^6) a quartic in the mantissa fraction f = x / 2^k - 1, least-squares fitted at init on 257 points:
 * max |error| 2.4e-4 (same order as the scalar table's), evaluated with register permutes (vpermt2ps) and
 * FMAs: table gathers are slow on CPUs with the Gather Data Sampling mitigation. */
#define PHI_NSEG 32
#define PHI_DEG 4
static float phi_poly[PHI_DEG + 1][PHI_NSEG];

/* Least-squares quartic of phi over the octave [2^k, 2^(k+1)) (257 points), in the variable t = x / 2^k - 1 + t0
 * (t0 = 0: the fraction, t0 = 1: the mantissa); octave 30 and above hold the constant phi(64). */
static void fit_octave(int sgm, double t0, double coef[PHI_DEG + 1])
{
    double A[PHI_DEG + 1][PHI_DEG + 2];
    memset(A, 0, sizeof A);
    int k = sgm - 24;
    for (int i = 0; i <= 256; i++) {
        double f = i / 256.0, t = t0 + f, x = ldexp(1.0 + f, k);
        double y = sgm < 30 ? -log(tanh(0.5 * x)) : -log(tanh(32.0));
        double pw[PHI_DEG + 1];
        pw[0] = 1.0;
        for (int j = 1; j <= PHI_DEG; j++) pw[j] = pw[j - 1] * t;
        for (int r = 0; r <= PHI_DEG; r++) {
            for (int c = 0; c <= PHI_DEG; c++) A[r][c] += pw[r] * pw[c];
            A[r][PHI_DEG + 1] += pw[r] * y;
        }
    }
    for (int c = 0; c <= PHI_DEG; c++)          /* Gauss-Jordan (the normal matrix is SPD) */
        for (int r = 0; r <= PHI_DEG; r++) {
            if (r == c) continue;
            double q = A[r][c] / A[c][c];
            for (int j = c; j <= PHI_DEG + 1; j++) A[r][j] -= q * A[c][j];
        }
    for (int j = 0; j <= PHI_DEG; j++) coef[j] = A[j][PHI_DEG + 1] / A[j][j];
}

static void fit_phi_poly(void)
{
    for (int sgm = 0; sgm < PHI_NSEG; sgm++) {
        double coef[PHI_DEG + 1];
        fit_octave(sgm, 0.0, coef);
        for (int j = 0; j <= PHI_DEG; j++) phi_poly[j][sgm] = sgm <= 30 ? (float)coef[j] : 0.0f;
    }
}

/* The streaming kernel's phi: the same per-octave quartics refitted in the mantissa m = x / 2^k in [1, 2) itself
 * (vgetmantps gives m in one instruction) and stored at slot (biased exponent mod 32): the permute reads only the
 * low 5 index bits, so the shifted exponent indexes the table directly (31 octaves, 31 distinct slots). */
static float phi_polym[PHI_DEG + 1][PHI_NSEG];

static void fit_phi_polym(void)
{
    memset(phi_polym, 0, sizeof phi_polym);
    for (int sgm = 0; sgm <= 30; sgm++) {
        double coef[PHI_DEG + 1];
        fit_octave(sgm, 1.0, coef);
        int slot = (sgm - 24 + 127) & 31;
        for (int j = 0; j <= PHI_DEG; j++) phi_polym[j][slot] = (float)coef[j];
    }
}

static inline float phi_lookup(float x)
{
    const float lo = ldexpf(1.0f, PHI_XMIN_EXP), hi = ldexpf(1.0f, PHI_XMAX_EXP);
    x = x < hi ? x : hi;
    x = x > lo ? x : lo;
    return phi_tab[(f2i(x) >> PHI_SHIFT) - phi_base];
}

static inline uint32_t sign_bit(float x) { return (uint32_t)f2i(x) >> 31; }
static inline float with_sign(float mag, uint32_t neg) { return i2f(f2i(mag) ^ (int32_t)(neg << 31)); }

/* One frame.  Returns iterations used; *ok = 1 iff the hard decision satisfies the syndrome. */
/* Check a Tanner graph in CSR form (check c's edges are ptr[c]..ptr[c+1], edge e's variable is ev[e]): ascending
 * ptr, degrees <= max_deg, variables in [0, n). Sets *dmax to the largest check degree; on error sets a Python
 * ValueError naming `who` and returns -1. */
static int check_tanner(const int64_t *ptr, const int32_t *ev, int64_t m, int64_t n, int64_t max_deg, const char *who,
                        int *dmax) {
    *dmax = 0;
    for (int64_t c = 0; c < m; c++) {
        int64_t d = ptr[c + 1] - ptr[c];
        if (d < 0 || d > max_deg) {
            PyErr_Format(PyExc_ValueError, "%s: check_ptr not ascending or a check degree above %lld", who,
                         (long long)max_deg);
            return -1;
        }
        if (d > *dmax) *dmax = (int)d;
    }
    for (int64_t e = 0; e < ptr[m]; e++)
        if (ev[e] < 0 || ev[e] >= n) {
            PyErr_Format(PyExc_ValueError, "%s: edge_var out of range", who);
            return -1;
        }
    return 0;
}

static long decode_frame(const int64_t *ptr, const int32_t *ev, int64_t m, int64_t n, const double *llr,
                         const uint8_t *syn, long max_iter, uint8_t *word, float *post, float *c2v,
                         float *tmp, float *phs, int *ok, int warm, long stall)
{
    int64_t n_edges = ptr[m];
    if (warm) {            /* continue from the check messages of an earlier attempt: post = llr + sum c2v */
        double *acc = (double *)calloc((size_t)n, sizeof(double));
        if (acc) {
            for (int64_t e = 0; e < n_edges; e++) acc[ev[e]] += c2v[e];
            for (int64_t v = 0; v < n; v++) post[v] = (float)(llr[v] + acc[v]);
            free(acc);
        } else {
            warm = 0;
        }
    }
    if (!warm) {
        for (int64_t v = 0; v < n; v++) post[v] = (float)llr[v];
        memset(c2v, 0, (size_t)n_edges * sizeof(float));
    }
    long it = 0, best_it = 0;
    int64_t best_cnt = INT64_MAX;     /* stall rule, as in decode_stream16 */
    for (;;) {
        int good = 1;
        for (int64_t c = 0; c < m && good; c++) {
            unsigned par = syn[c];
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) par ^= sign_bit(post[ev[e]]);
            good = (par == 0);
        }
        if (good) { *ok = 1; break; }
        if (it >= max_iter || (stall > 0 && it - best_it >= stall)) { *ok = 0; break; }
        it++;
        int64_t cnt = 0;
        for (int64_t c = 0; c < m; c++) {
            const int64_t a = ptr[c];
            const int d = (int)(ptr[c + 1] - a);
            const int32_t *vs = ev + a;
            float *msg = c2v + a;
            uint32_t par = syn[c], hx = syn[c] & 1u;
            double total = 0.0;
            for (int k = 0; k < d; k++) {
                float t = post[vs[k]] - msg[k];
                tmp[k] = t;
                par ^= sign_bit(t);
                float ph = phi_lookup(fabsf(t));
                phs[k] = ph;
                total += ph;
            }
            for (int k = 0; k < d; k++) {
                float mag = phi_lookup((float)(total - (double)phs[k]));
                float o = with_sign(mag, par ^ sign_bit(tmp[k]));
                msg[k] = o;
                post[vs[k]] = tmp[k] + o;
                hx ^= sign_bit(post[vs[k]]);
            }
            cnt += hx;
        }
        if (cnt < best_cnt) { best_cnt = cnt; best_it = it; }
    }
    for (int64_t v = 0; v < n; v++) word[v] = (uint8_t)sign_bit(post[v]);
    return it;
}


/* ------------------------------------------------------------------------------------ multi-frame kernel
 * W = 16 frames of the same code decoded together, one frame per float32 lane of an AVX-512 register
 * (messages interleaved: post[v*16 + lane], c2v[e*16 + lane]).  Same layered schedule and check rule as
 * decode_frame, phi from the per-octave quartic (phi16); the phi sums are kept in double.  Each lane stops being
 * *recorded* at the first iteration at which its own hard decision satisfies its syndrome (the lanes keep
 * running in lock-step until all have converged or max_iter is reached), so its result and iteration count
 * are those of decode_frame run on that frame alone, up to float rounding order.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LDPC_HAVE_AVX512 1
#define W 16

__attribute__((target("avx512f")))
static void lane_result(const float *post, int64_t n, int l, uint8_t *word)
{
    for (int64_t v = 0; v < n; v++) word[v] = (uint8_t)sign_bit(post[v * W + l]);
}

typedef struct { __m512 lo[PHI_DEG + 1], hi[PHI_DEG + 1]; } phi_regs;

__attribute__((target("avx512f")))
static inline __m512 phi16(__m512 x, const phi_regs *P)
{
    __m512i b = _mm512_castps_si512(x);
    __m512i seg = _mm512_sub_epi32(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(127 + PHI_XMIN_EXP));
    __m512 f = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi32(0x7fffff)),
                                                                  _mm512_set1_epi32(0x3f800000))),
                             _mm512_set1_ps(1.0f));
    __m512 y = _mm512_permutex2var_ps(P->lo[PHI_DEG], seg, P->hi[PHI_DEG]);
    for (int j = PHI_DEG - 1; j >= 0; j--)
        y = _mm512_fmadd_ps(y, f, _mm512_permutex2var_ps(P->lo[j], seg, P->hi[j]));
    return _mm512_max_ps(y, _mm512_setzero_ps());
}

__attribute__((target("avx512f")))
static void decode_group16(const int64_t *ptr, const int32_t *ev, int64_t m, int64_t n, const double *llr,
                           const uint8_t *syn, int64_t f0, int nl, long max_iter, uint8_t *words,
                           int64_t *iters, uint8_t *oks, float *post, float *c2v, float *tmp, float *phs,
                           int32_t *synT, float *const *srow, int warm, float *post_out)
{
    const int64_t n_edges = ptr[m];
    for (int64_t v = 0; v < n; v++)
        for (int l = 0; l < W; l++) post[v * W + l] = l < nl ? (float)llr[(f0 + l) * n + v] : 30.0f;
    for (int64_t c = 0; c < m; c++)
        for (int l = 0; l < W; l++) synT[c * W + l] = (l < nl && syn[(f0 + l) * m + c]) ? INT32_MIN : 0;
    memset(c2v, 0, (size_t)n_edges * W * sizeof(float));
    if (srow && warm) {   /* warm start: interleave each lane's saved check messages, post += sum c2v */
        for (int l = 0; l < nl; l++) {
            const float *sf = srow[f0 + l];
            for (int64_t e = 0; e < n_edges; e++) c2v[e * W + l] = sf[e];
        }
        for (int64_t e = 0; e < n_edges; e++) {
            float *pv = post + (int64_t)ev[e] * W;
            _mm512_storeu_ps(pv, _mm512_add_ps(_mm512_loadu_ps(pv), _mm512_loadu_ps(c2v + e * W)));
        }
    }
    const __m512 lo = _mm512_set1_ps(ldexpf(1.0f, PHI_XMIN_EXP)), hi = _mm512_set1_ps(ldexpf(1.0f, PHI_XMAX_EXP));
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    const __m512i signmask = _mm512_set1_epi32(INT32_MIN);
    uint32_t done = nl < W ? (~((1u << nl) - 1u)) & 0xFFFFu : 0u;
    phi_regs P;
    for (int j = 0; j <= PHI_DEG; j++) {
        P.lo[j] = _mm512_loadu_ps(phi_poly[j]);
        P.hi[j] = _mm512_loadu_ps(phi_poly[j] + 16);
    }
    long it = 0;
    for (;;) {
        __m512i bad = _mm512_setzero_si512();
        for (int64_t c = 0; c < m; c++) {
            __m512i par = _mm512_load_si512((const void *)(synT + c * W));
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++)
                par = _mm512_xor_si512(par, _mm512_load_si512((const void *)(post + (int64_t)ev[e] * W)));
            bad = _mm512_or_si512(bad, par);
        }
        uint32_t unsat = (uint32_t)_mm512_cmplt_epi32_mask(bad, _mm512_setzero_si512());
        uint32_t newly = ~unsat & ~done & 0xFFFFu;
        for (int l = 0; l < nl; l++)
            if (newly >> l & 1u) {
                lane_result(post, n, l, words + (f0 + l) * n);
                iters[f0 + l] = it;
                oks[f0 + l] = 1;
            }
        done |= newly;
        if (done == 0xFFFFu || it >= max_iter) break;
        it++;
        for (int64_t c = 0; c < m; c++) {
            const int64_t a = ptr[c];
            const int d = (int)(ptr[c + 1] - a);
            const int32_t *vs = ev + a;
            float *msg = c2v + a * W;
            __m512i par = _mm512_load_si512((const void *)(synT + c * W));
            __m512d tlo = _mm512_setzero_pd(), thi = _mm512_setzero_pd();
            for (int k = 0; k < d; k++) {
                __m512 t = _mm512_sub_ps(_mm512_load_ps(post + (int64_t)vs[k] * W), _mm512_load_ps(msg + k * W));
                _mm512_store_ps(tmp + k * W, t);
                __m512i ti = _mm512_castps_si512(t);
                par = _mm512_xor_si512(par, ti);
                __m512 x = _mm512_castsi512_ps(_mm512_and_si512(ti, absmask));
                x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
                __m512 ph = phi16(x, &P);
                _mm512_store_ps(phs + k * W, ph);
                tlo = _mm512_add_pd(tlo, _mm512_cvtps_pd(_mm512_castps512_ps256(ph)));
                thi = _mm512_add_pd(thi, _mm512_cvtps_pd(_mm256_castsi256_ps(
                                              _mm512_extracti64x4_epi64(_mm512_castps_si512(ph), 1))));
            }
            par = _mm512_and_si512(par, signmask);
            for (int k = 0; k < d; k++) {
                __m512 ph = _mm512_load_ps(phs + k * W);
                __m256 ylo = _mm512_cvtpd_ps(_mm512_sub_pd(tlo, _mm512_cvtps_pd(_mm512_castps512_ps256(ph))));
                __m256 yhi = _mm512_cvtpd_ps(_mm512_sub_pd(thi, _mm512_cvtps_pd(_mm256_castsi256_ps(
                                              _mm512_extracti64x4_epi64(_mm512_castps_si512(ph), 1)))));
                __m512 y = _mm512_castsi512_ps(_mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_castps_si256(ylo)), _mm256_castps_si256(yhi), 1));
                y = _mm512_max_ps(_mm512_min_ps(y, hi), lo);
                __m512 mag = phi16(y, &P);
                __m512 t = _mm512_load_ps(tmp + k * W);
                __m512i sg = _mm512_and_si512(_mm512_xor_si512(par, _mm512_castps_si512(t)), signmask);
                __m512 o = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mag), sg));
                _mm512_store_ps(msg + k * W, o);
                _mm512_store_ps(post + (int64_t)vs[k] * W, _mm512_add_ps(t, o));
            }
        }
    }
    for (int l = 0; l < nl; l++)
        if (!(done >> l & 1u)) {
            lane_result(post, n, l, words + (f0 + l) * n);
            iters[f0 + l] = it;
            oks[f0 + l] = 0;
            if (srow) {        /* only unconverged frames need their messages for a later attempt */
                float *sf = srow[f0 + l];
                for (int64_t e = 0; e < n_edges; e++) sf[e] = c2v[e * W + l];
            }
            if (post_out)
                for (int64_t v = 0; v < n; v++) post_out[(f0 + l) * n + v] = post[v * W + l];
        }
}
/* ------------------------------------------------------------------------ streaming multi-frame kernel
 * Default SIMD kernel: the same layered sum-product schedule and check rule, 16 frames per AVX-512 pass, organised
 * so that memory traffic and finished frames cost less (measured 2.0-2.3x the throughput of decode_group16 at
 * n = 1e5, f = 1.10):
 *  - lane refill: the F frames form a queue; a lane whose frame has converged (or reached max_iter) takes the next
 *    frame at the following iteration boundary, so the passes follow the mean, not the group maximum, of the
 *    iteration counts. A refilled lane's old check messages are not cleared in memory: its first pass reads them
 *    as zero (the `fresh` lane mask).
 *  - packed hard decisions (hard[v] = the 16 lanes' sign bits, 2 B per variable, L2-resident): the syndrome test
 *    reads them instead of the 64-byte posterior rows and stops at the first check at which every running lane is
 *    still unsatisfied; the result words are read from them. It first visits the checks the last pass left
 *    unsatisfied (listed during the pass: parity of the new hard decisions right after each check's update), so
 *    a lane that still fails is usually found at once instead of after a scan over many satisfied checks; the
 *    outcome is the same for any visiting order.
 *  - software prefetch of the posterior row of the edge PF_CHECKS mean check degrees ahead, from inside the first
 *    edge loop: the rows are random (6.4 MB at n = 1e5, L2 misses) and one check's ~80 instructions per edge keep
 *    the next check's loads out of the reorder window. The message stream is prefetched too (MSG_PF_EDGES edges
 *    ahead): sequential, but the hardware prefetchers alone left 6-15 % on the table (measured).
 *  - exclusive phi sums as prefix + suffix sums in float32 (no "total - own term" cancellation, so no double
 *    arithmetic); phi16m (vgetmantps + exponent-indexed permutes); vrangeps for |t| clamped at 2^6. The first
 *    edge loop stores the prefix sums, the second runs backwards and adds the suffix sum as it goes (one loop and
 *    two memory passes fewer per check than a separate suffix loop; the float additions are the same, in the same
 *    order). Going backwards changes only the order in which the check's posteriors are written, so a check that
 *    lists a variable twice (a double edge: the later edge's write wins) is detected once per call and then the
 *    whole call runs the forward variant with a separate suffix loop: results are identical either way.
 *  - check-to-variable messages stored as float16 (vcvtps2ph, round to nearest even; 11 significant bits, the
 *    relative resolution of the phi approximation; signed zero keeps the sign of a message below 2^-24):
 *    halves the largest memory stream (E x 32 B instead of 64 B per pass). f16 = 0 keeps float32 messages.
 *  - 8-lane tail: at n = 1e5 a pass is bound by memory traffic (posterior rows and messages, ~25 MB, do not fit
 *    in cache), so once the queue is empty and at most 8 frames run (or F <= 8), the running lanes are moved to
 *    lanes 0-7 and the rows repacked to 8 lanes (compact_lanes, once per call): the remaining passes
 *    (stream_pass8) move half the bytes (measured ~0.7 of a 16-lane pass per iteration).
 * Per lane the arithmetic does not depend on the other lanes, so a frame's result does not depend on which
 * lane, pass or batch it runs in.
 * Evaluated and dropped (no gain measured, 2-core VM, n = 1e5): renumbering the variables (first appearance in the
 * check order, or by degree) so that a check's rows are close in memory (each row is one cache line already, so
 * only page / prefetcher locality could change), 2 MiB pages for the rows and messages, longer or two-level (L2)
 * prefetch distances, non-temporal prefetch of the low-degree variables' rows, the phi tables as memory operands.
 */
__attribute__((target("avx512f")))
static inline __m512 phi16m(__m512 x, const phi_regs *P)
{
    __m512i seg = _mm512_srli_epi32(_mm512_castps_si512(x), 23);          /* permute reads bits 4..0 only */
    __m512 mm = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __m512 y = _mm512_permutex2var_ps(P->lo[PHI_DEG], seg, P->hi[PHI_DEG]);
    for (int j = PHI_DEG - 1; j >= 0; j--)
        y = _mm512_fmadd_ps(y, mm, _mm512_permutex2var_ps(P->lo[j], seg, P->hi[j]));
    return _mm512_max_ps(y, _mm512_setzero_ps());
}

/* one message of lane l (float16 storage: rounded exactly as the kernel stores it) */
__attribute__((target("avx512f,f16c")))
static inline float c2v_get(const void *c2v, int64_t e, int l, int f16, int ws)
{
    if (f16) return _cvtsh_ss(((const uint16_t *)c2v)[e * ws + l]);
    return ((const float *)c2v)[e * ws + l];
}

__attribute__((target("avx512f,f16c")))
static inline void c2v_set(void *c2v, int64_t e, int l, int f16, float x)
{
    if (f16) ((uint16_t *)c2v)[e * W + l] = _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else ((float *)c2v)[e * W + l] = x;
}

/* One layered iteration over all checks for the 16 lanes (the streaming kernel's inner loops). f16, masked and
 * back are constants at every call (specialised copies): float16 / float32 messages; masked = some lanes are on
 * their first pass and read their messages as 0 (keep = the other lanes); back = no check lists a variable twice,
 * so the update loop may run backwards with the suffix sums folded in. Appends to unsat_list every check whose
 * parity, with the hard decisions right after its update, fails in a lane of `act`; returns the list length. */
__attribute__((target("avx512f,avx512dq,f16c"), always_inline))
static inline int64_t stream_pass(const int64_t *ptr, const int32_t *ev, int64_t m, int pfe, float *post, void *c2v,
                                  float *tmp, float *pre, float *phs, const uint16_t *synm, uint16_t *hard,
                                  __mmask16 keep, uint32_t act, int32_t *unsat_list, int32_t *lane_cnt,
                                  const phi_regs *P, const int f16, const int masked, const int back)
{
    __m512i cnt = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    const __m512 lo = _mm512_set1_ps(ldexpf(1.0f, PHI_XMIN_EXP)), hi = _mm512_set1_ps(ldexpf(1.0f, PHI_XMAX_EXP));
    const __m512i signmask = _mm512_set1_epi32(INT32_MIN);
    const int64_t n_edges = ptr[m];
    int64_t n_unsat = 0;
    for (int64_t c = 0; c < m; c++) {
        const int64_t a = ptr[c];
        const int d = (int)(ptr[c + 1] - a);
        const int32_t *vs = ev + a;
        const int32_t *pf = a + d + pfe <= n_edges ? vs + pfe : vs;   /* near the end: the check's own rows */
        __m512i par = _mm512_maskz_mov_epi32((__mmask16)synm[c], signmask);
        __m512 acc = _mm512_setzero_ps();
        for (int k = 0; k < d; k++) {      /* variable-to-check messages t, phi(|t|), prefix sums */
            _mm_prefetch((const char *)(post + (int64_t)pf[k] * W), _MM_HINT_T0);
            if (a + k + MSG_PF_EDGES < n_edges)
                _mm_prefetch((const char *)c2v + (a + k + MSG_PF_EDGES) * W * (f16 ? 2 : 4), _MM_HINT_T0);
            __m512 cv = f16 ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)((const uint16_t *)c2v + (a + k) * W)))
                            : _mm512_load_ps((const float *)c2v + (a + k) * W);
            if (masked) cv = _mm512_maskz_mov_ps(keep, cv);
            __m512 t = _mm512_sub_ps(_mm512_load_ps(post + (int64_t)vs[k] * W), cv);
            _mm512_store_ps(tmp + k * W, t);
            par = _mm512_xor_si512(par, _mm512_castps_si512(t));
            __m512 x = _mm512_max_ps(_mm512_range_ps(t, hi, 0x0A), lo);   /* min(|t|, 2^6), sign cleared */
            __m512 ph = phi16m(x, P);
            _mm512_store_ps(pre + k * W, acc);
            _mm512_store_ps(phs + k * W, ph);
            acc = _mm512_add_ps(acc, ph);
        }
        par = _mm512_and_si512(par, signmask);
        acc = _mm512_setzero_ps();
        if (!back)
            for (int k = d - 1; k >= 0; k--) {  /* + suffix sums: pre[k] = sum over the other edges */
                _mm512_store_ps(pre + k * W, _mm512_add_ps(_mm512_load_ps(pre + k * W), acc));
                acc = _mm512_add_ps(acc, _mm512_load_ps(phs + k * W));
            }
        uint32_t hx = synm[c];
        for (int j = 0; j < d; j++) {      /* check-to-variable messages, posterior and hard-decision update */
            const int k = back ? d - 1 - j : j;
            __m512 y;
            if (back) {                        /* prefix + suffix, the suffix accumulated here */
                y = _mm512_add_ps(_mm512_load_ps(pre + k * W), acc);
                acc = _mm512_add_ps(acc, _mm512_load_ps(phs + k * W));
            } else {
                y = _mm512_load_ps(pre + k * W);
            }
            y = _mm512_max_ps(_mm512_min_ps(y, hi), lo);
            __m512 mag = phi16m(y, P);
            __m512 t = _mm512_load_ps(tmp + k * W);
            __m512i sg = _mm512_and_si512(_mm512_xor_si512(par, _mm512_castps_si512(t)), signmask);
            __m512 o = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mag), sg));
            if (f16)
                _mm256_store_si256((__m256i *)((uint16_t *)c2v + (a + k) * W),
                                   _mm512_cvtps_ph(o, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            else
                _mm512_store_ps((float *)c2v + (a + k) * W, o);
            __m512 np = _mm512_add_ps(t, o);
            _mm512_store_ps(post + (int64_t)vs[k] * W, np);
            uint32_t h = (uint32_t)_mm512_cmplt_epi32_mask(_mm512_castps_si512(np), _mm512_setzero_si512());
            hard[vs[k]] = (uint16_t)h;
            hx ^= h;
        }
        unsat_list[n_unsat] = (int32_t)c;      /* kept only if some running lane fails the check */
        n_unsat += (hx & act) != 0;
        cnt = _mm512_mask_add_epi32(cnt, (__mmask16)hx, cnt, one);
    }
    _mm512_storeu_si512(lane_cnt, cnt);
    return n_unsat;
}

/* One layered iteration in the 8-lane layout (see compact_lanes: the queue is empty and at most 8 frames are left,
 * or F <= 8): half the memory traffic of a 16-lane pass, which is what limits a pass at n = 1e5 (the posterior
 * rows and messages do not fit in cache; measured ~0.7 of a 16-lane pass); two edges per vector (edge k in
 * elements 0-7, edge k+1 in elements 8-15). Per lane the same operations as stream_pass in the same order: t, phi
 * and the messages element-wise, prefix and suffix sums per edge in edge order, posteriors written in edge order.
 * No lane may be `fresh`. A check of odd degree pairs its last edge with itself; that half is never stored.
 * (A 4-lane layout for <= 4 frames was measured no faster: the pass is then bound by its per-edge overhead.)
 * The scratch rows tmp / pre / phs hold 8 floats per edge. */
__attribute__((target("avx512f,avx512dq,f16c"), always_inline))
static inline int64_t stream_pass8(const int64_t *ptr, const int32_t *ev, int64_t m, int pfe, float *post, void *c2v,
                                   float *tmp, float *pre, float *phs, const uint16_t *synm, uint16_t *hard,
                                   uint32_t act, int32_t *unsat_list, int32_t *lane_cnt, const phi_regs *P,
                                   const int f16)
{
    __m512i cnt = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    const __m512 lo = _mm512_set1_ps(ldexpf(1.0f, PHI_XMIN_EXP)), hi = _mm512_set1_ps(ldexpf(1.0f, PHI_XMAX_EXP));
    const __m512i signmask = _mm512_set1_epi32(INT32_MIN);
    const int64_t n_edges = ptr[m];
    uint16_t *c16 = (uint16_t *)c2v;
    float *c32 = (float *)c2v;
    int64_t n_unsat = 0;
    for (int64_t c = 0; c < m; c++) {
        const int64_t a = ptr[c];
        const int d = (int)(ptr[c + 1] - a);
        const int32_t *vs = ev + a;
        const int32_t *pf = a + d + pfe <= n_edges ? vs + pfe : vs;
        __m512i par = _mm512_maskz_mov_epi32((__mmask16)(synm[c] & 0xFFu), signmask);
        for (int k = 0; k < d; k += 2) {   /* t, phi(|t|) of edges k, k1 = k + 1 (or k again) */
            const int two = k + 1 < d, k1 = k + two;
            _mm_prefetch((const char *)(post + (int64_t)pf[k] * 8), _MM_HINT_T0);
            _mm_prefetch((const char *)(post + (int64_t)pf[k1] * 8), _MM_HINT_T0);
            if (a + k + MSG_PF_EDGES < n_edges)
                _mm_prefetch((const char *)c2v + (a + k + MSG_PF_EDGES) * 8 * (f16 ? 2 : 4), _MM_HINT_T0);
            __m512 pv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_load_ps(post + (int64_t)vs[k] * 8)),
                                           _mm256_load_ps(post + (int64_t)vs[k1] * 8), 1);
            __m512 cv;
            if (f16)
                cv = _mm512_cvtph_ps(_mm256_inserti128_si256(
                    _mm256_castsi128_si256(_mm_load_si128((const __m128i *)(c16 + (a + k) * 8))),
                    _mm_load_si128((const __m128i *)(c16 + (a + k1) * 8)), 1));
            else
                cv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_load_ps(c32 + (a + k) * 8)),
                                        _mm256_load_ps(c32 + (a + k1) * 8), 1);
            __m512 t = _mm512_sub_ps(pv, cv);
            _mm512_store_ps(tmp + k * 8, t);
            par = _mm512_mask_xor_epi32(par, two ? 0xFFFF : 0x00FF, par, _mm512_castps_si512(t));
            __m512 x = _mm512_max_ps(_mm512_range_ps(t, hi, 0x0A), lo);
            _mm512_store_ps(phs + k * 8, phi16m(x, P));
        }
        par = _mm512_xor_si512(par, _mm512_shuffle_i64x2(par, par, 0x4E));   /* both halves: the whole check */
        par = _mm512_and_si512(par, signmask);
        __m256 acc = _mm256_setzero_ps();
        for (int k = 0; k < d; k++) {          /* prefix sums */
            _mm256_store_ps(pre + k * 8, acc);
            acc = _mm256_add_ps(acc, _mm256_load_ps(phs + k * 8));
        }
        acc = _mm256_setzero_ps();
        for (int k = d - 1; k >= 0; k--) {     /* + suffix sums */
            _mm256_store_ps(pre + k * 8, _mm256_add_ps(_mm256_load_ps(pre + k * 8), acc));
            acc = _mm256_add_ps(acc, _mm256_load_ps(phs + k * 8));
        }
        uint32_t hx = synm[c] & 0xFFu;
        for (int k = 0; k < d; k += 2) {   /* messages, posteriors and hard decisions of edges k, k + 1 */
            const int two = k + 1 < d;
            __m512 y = _mm512_max_ps(_mm512_min_ps(_mm512_load_ps(pre + k * 8), hi), lo);
            __m512 mag = phi16m(y, P);
            __m512 t = _mm512_load_ps(tmp + k * 8);
            __m512i sg = _mm512_and_si512(_mm512_xor_si512(par, _mm512_castps_si512(t)), signmask);
            __m512 o = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(mag), sg));
            __m512 np = _mm512_add_ps(t, o);
            uint32_t h = (uint32_t)_mm512_cmplt_epi32_mask(_mm512_castps_si512(np), _mm512_setzero_si512());
            if (f16) {
                __m256i oh = _mm512_cvtps_ph(o, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                _mm_store_si128((__m128i *)(c16 + (a + k) * 8), _mm256_castsi256_si128(oh));
                if (two) _mm_store_si128((__m128i *)(c16 + (a + k + 1) * 8), _mm256_extracti128_si256(oh, 1));
            } else {
                _mm256_store_ps(c32 + (a + k) * 8, _mm512_castps512_ps256(o));
                if (two) _mm256_store_ps(c32 + (a + k + 1) * 8, _mm512_extractf32x8_ps(o, 1));
            }
            _mm256_store_ps(post + (int64_t)vs[k] * 8, _mm512_castps512_ps256(np));   /* edge order */
            hard[vs[k]] = (uint16_t)(h & 0xFFu);
            hx ^= h & 0xFFu;
            if (two) {
                _mm256_store_ps(post + (int64_t)vs[k + 1] * 8, _mm512_extractf32x8_ps(np, 1));
                hard[vs[k + 1]] = (uint16_t)(h >> 8);
                hx ^= h >> 8;
            }
        }
        unsat_list[n_unsat] = (int32_t)c;
        n_unsat += (hx & act) != 0;
        cnt = _mm512_mask_add_epi32(cnt, (__mmask16)(hx & 0xFFu), cnt, one);
    }
    _mm512_storeu_si512(lane_cnt, cnt);
    return n_unsat;
}

/* Narrow the layout from ws to nl lanes per row (the kernel uses 16 -> 8; at most nl lanes running, none fresh):
 * move the running lanes >= nl to free lanes < nl (posterior column, packed hard decision and syndrome bits, check
 * messages, frame and iteration count), then repack the posterior and message rows to lanes 0 .. nl - 1 in place
 * (row i moves down from ws i to nl i: ascending order only overwrites rows already moved). */
__attribute__((target("avx512f")))
static void compact_lanes(int64_t n, int64_t m, int64_t n_edges, int ws, int nl, float *post, void *c2v, int f16,
                          uint16_t *synm, uint16_t *hard, uint32_t *active, int64_t *lane_f, long *lane_it,
                          int32_t *best_cnt, long *best_it)
{
    int src[W], dst[W], k = 0;
    uint32_t freel = ~*active & ((1u << nl) - 1u);
    for (int l = nl; l < ws; l++)
        if (*active >> l & 1u) {
            int t = __builtin_ctz(freel);
            freel &= freel - 1;
            src[k] = l;
            dst[k++] = t;
            lane_f[t] = lane_f[l];
            lane_it[t] = lane_it[l];
            best_cnt[t] = best_cnt[l];
            best_it[t] = best_it[l];
            *active = (*active & ~(1u << l)) | (1u << t);
        }
    for (int64_t v = 0; v < n; v++) {
        uint32_t h = hard[v];
        for (int j = 0; j < k; j++) {
            post[v * ws + dst[j]] = post[v * ws + src[j]];
            h = (h & ~(1u << dst[j])) | ((h >> src[j] & 1u) << dst[j]);
        }
        hard[v] = (uint16_t)h;
    }
    for (int64_t c = 0; c < m; c++) {
        uint32_t s = synm[c];
        for (int j = 0; j < k; j++) s = (s & ~(1u << dst[j])) | ((s >> src[j] & 1u) << dst[j]);
        synm[c] = (uint16_t)s;
    }
    for (int64_t e = 0; e < n_edges; e++)
        for (int j = 0; j < k; j++) {
            if (f16) ((uint16_t *)c2v)[e * ws + dst[j]] = ((uint16_t *)c2v)[e * ws + src[j]];
            else ((float *)c2v)[e * ws + dst[j]] = ((float *)c2v)[e * ws + src[j]];
        }
    for (int64_t v = 0; v < n; v++) memmove(post + v * nl, post + v * ws, (size_t)nl * sizeof(float));
    for (int64_t e = 0; e < n_edges; e++) {
        if (f16) memmove((uint16_t *)c2v + e * nl, (uint16_t *)c2v + e * ws, (size_t)nl * sizeof(uint16_t));
        else memmove((float *)c2v + e * nl, (float *)c2v + e * ws, (size_t)nl * sizeof(float));
    }
}

/* prefetch distance in edges: PF_CHECKS mean check degrees */
static int stream_pf_edges(int64_t n_edges, int64_t m)
{
    int64_t pfe = PF_CHECKS * ((n_edges + m - 1) / m);
    return (int)(pfe < PF_EDGES_MIN ? PF_EDGES_MIN : (pfe > PF_EDGES_MAX ? PF_EDGES_MAX : pfe));
}

/* 1 if some check lists a variable twice (marks: the caller's n-entry scratch, left zeroed) */
static int has_double_edges(const int64_t *ptr, const int32_t *ev, int64_t m, uint16_t *marks)
{
    int dup = 0;
    for (int64_t c = 0; c < m && !dup; c++) {
        for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) {
            dup |= marks[ev[e]];
            marks[ev[e]] = 1;
        }
        for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) marks[ev[e]] = 0;
    }
    return dup;
}

/* Stall rule: a lane's fewest failing checks (counted during the pass, each check with the hard decisions right
 * after its own update) and the iteration that reached it. */
static inline void stall_update(uint32_t active, const int32_t *cnt, const long *it, int32_t *best_cnt,
                                long *best_it)
{
    for (int l = 0; l < W; l++)
        if ((active >> l & 1u) && cnt[l] < best_cnt[l]) {
            best_cnt[l] = cnt[l];
            best_it[l] = it[l];
        }
}

__attribute__((target("avx512f,avx512dq,f16c")))
static void decode_stream16(const int64_t *ptr, const int32_t *ev, int64_t m, int64_t n, const double *llr,
                            const uint8_t *syn, int64_t F, long max_iter, uint8_t *words, int64_t *iters,
                            uint8_t *oks, float *post, void *c2v, float *tmp, float *pre, float *phs,
                            uint16_t *synm, uint16_t *hard, float *const *srow, int warm, int f16, int32_t *unsat_list,
                            long stall, float *post_out, const float *post_in, const uint8_t *post_ok)
{
    const int64_t n_edges = ptr[m];
    const int pfe = stream_pf_edges(n_edges, m);
    memset(hard, 0, (size_t)n * 2);
    const int back = !has_double_edges(ptr, ev, m, hard);
    for (int64_t i = 0; i < n * W; i++) post[i] = 30.0f;      /* idle lanes: a calm all-zero word */
    memset(synm, 0, (size_t)m * 2);
    memset(c2v, 0, (size_t)n_edges * W * (f16 ? 2 : 4));
    phi_regs P;
    for (int j = 0; j <= PHI_DEG; j++) {
        P.lo[j] = _mm512_loadu_ps(phi_polym[j]);
        P.hi[j] = _mm512_loadu_ps(phi_polym[j] + 16);
    }
    int64_t lane_f[W];
    long lane_it[W], best_it[W];
    int32_t lane_cnt[W], best_cnt[W];    /* stall rule: checks failing per lane in the last pass, fewest so far */
    uint32_t active = 0, fresh = 0;   /* lane masks: running a frame; first pass (messages read as 0) */
    int64_t next = 0;                 /* next frame of the queue */
    int64_t n_unsat = 0;              /* checks the last pass left unsatisfied (unsat_list) */
    int ws = W;                       /* lanes per posterior / message row: 16, or 8 in the tail (no refill then) */
    for (;;) {
        uint32_t newl = 0;
        int nnew = 0, lanes[W];
        const double *src[W];
        const float *psrc[W];             /* warm lanes resuming from their last posteriors (post_in), else NULL */
        uint32_t pinl = 0;
        const uint8_t *ssrc[W];
        for (int l = 0; l < W && next < F; l++)
            if (!(active >> l & 1u)) {
                lane_f[l] = next++;
                lane_it[l] = 0;
                best_it[l] = 0;
                best_cnt[l] = INT32_MAX;
                newl |= 1u << l;
                lanes[nnew] = l;
                psrc[nnew] = (srow && warm && post_in && post_ok[lane_f[l]]) ? post_in + lane_f[l] * n : NULL;
                if (psrc[nnew]) pinl |= 1u << l;
                src[nnew] = llr + lane_f[l] * n;
                ssrc[nnew++] = syn + lane_f[l] * m;
            }
        if (newl) {
            /* per variable (per edge below): the new lanes' values gathered into one row, then one masked vector
             * store / add; the other lanes' entries of buf are stale and masked off */
            const __mmask16 nm = (__mmask16)newl;
            const int rows = nnew >= ROW_LANES;   /* few lanes (the usual refill): element by element is cheaper */
            float buf[W] __attribute__((aligned(64)));
            memset(buf, 0, sizeof buf);
            for (int64_t v = 0; v < n; v++) {
                if (!rows) {
                    uint32_t h = hard[v] & ~newl;
                    for (int j = 0; j < nnew; j++) {
                        float x = psrc[j] ? psrc[j][v] : (float)src[j][v];
                        post[v * W + lanes[j]] = x;
                        h |= sign_bit(x) << lanes[j];
                    }
                    hard[v] = (uint16_t)h;
                    continue;
                }
                for (int j = 0; j < nnew; j++) buf[lanes[j]] = psrc[j] ? psrc[j][v] : (float)src[j][v];
                __m512 x = _mm512_load_ps(buf);
                _mm512_mask_store_ps(post + v * W, nm, x);
                uint32_t sg = (uint32_t)_mm512_cmplt_epi32_mask(_mm512_castps_si512(x), _mm512_setzero_si512());
                hard[v] = (uint16_t)((hard[v] & ~newl) | (sg & newl));
            }
            for (int64_t c = 0; c < m; c++) {
                uint32_t s = synm[c] & ~newl;
                for (int j = 0; j < nnew; j++) s |= (uint32_t)(ssrc[j][c] & 1) << lanes[j];
                synm[c] = (uint16_t)s;
            }
            if (srow && warm) {    /* the lanes' saved messages (as stored), post += sum c2v in edge order; all new
                                    * lanes in one sweep (a sweep per lane re-read every message row per lane), a
                                    * row per edge: one float16 conversion and one masked add for all of them (scalar
                                    * per lane and edge it cost ~6 iterations' time per attempt at n = 1e5) */
                const float *sf[W];
                for (int j = 0; j < nnew; j++) sf[j] = srow[lane_f[lanes[j]]];
                for (int64_t e = 0; e < n_edges; e++) {
                    float *pv = post + (int64_t)ev[e] * W;
                    if (!rows) {
                        for (int j = 0; j < nnew; j++) {
                            c2v_set(c2v, e, lanes[j], f16, sf[j][e]);
                            if (!psrc[j]) pv[lanes[j]] += c2v_get(c2v, e, lanes[j], f16, W);
                        }
                        continue;
                    }
                    for (int j = 0; j < nnew; j++) buf[lanes[j]] = sf[j][e];
                    __m512 x = _mm512_load_ps(buf);
                    if (f16) {          /* rounded as the kernel stores it; the other lanes' rows kept exactly */
                        uint16_t *row = (uint16_t *)c2v + e * W;
                        __m512 old = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)row));
                        __m256i h = _mm512_cvtps_ph(_mm512_mask_blend_ps(nm, old, x),
                                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                        _mm256_store_si256((__m256i *)row, h);
                        x = _mm512_cvtph_ps(h);
                    } else {
                        _mm512_mask_store_ps((float *)c2v + e * W, nm, x);
                    }
                    if (pinl != newl) {   /* lanes resuming from post_in already hold their posteriors */
                        __m512 pvv = _mm512_load_ps(pv);
                        _mm512_store_ps(pv, _mm512_mask_add_ps(pvv, (__mmask16)(newl & ~pinl), pvv, x));
                    }
                }
                for (int64_t v = 0; v < n; v++) {
                    uint32_t sg = (uint32_t)_mm512_cmplt_epi32_mask(
                        _mm512_castps_si512(_mm512_load_ps(post + v * W)), _mm512_setzero_si512());
                    hard[v] = (uint16_t)((hard[v] & ~newl) | (sg & newl));
                }
            } else {
                fresh |= newl;
            }
            active |= newl;
        }
        if (!active) break;
        /* syndrome test of the running lanes; stops once all of them are known to fail. The checks the last
         * pass left unsatisfied first (likely still so), then all of them in order. */
        uint32_t unsat = 0;
        for (int64_t i = 0; i < n_unsat && (unsat & active) != active; i++) {
            const int64_t c = unsat_list[i];
            uint32_t par = synm[c];
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) par ^= hard[ev[e]];
            unsat |= par;
        }
        for (int64_t c = 0; c < m && (unsat & active) != active; c++) {
            uint32_t par = synm[c];
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) par ^= hard[ev[e]];
            unsat |= par;
        }
        uint32_t fin = 0;
        int nsave = 0, save_l[W];
        float *save_to[W];
        for (int l = 0; l < W; l++) {
            if (!(active >> l & 1u)) continue;
            int okl = !(unsat >> l & 1u);
            if (!okl && lane_it[l] < max_iter && !(stall > 0 && lane_it[l] - best_it[l] >= stall)) continue;
            int64_t f = lane_f[l];
            uint8_t *wd = words + f * n;
            for (int64_t v = 0; v < n; v++) wd[v] = (uint8_t)(hard[v] >> l & 1u);
            iters[f] = lane_it[l];
            oks[f] = (uint8_t)okl;
            if (post_out && !okl)
                for (int64_t v = 0; v < n; v++) post_out[f * n + v] = post[v * ws + l];
            if (srow && !okl) {    /* only unconverged frames need their messages for a later attempt */
                float *sf = srow[f];
                if (fresh >> l & 1u) {
                    memset(sf, 0, (size_t)n_edges * sizeof(float));
                } else {
                    save_l[nsave] = l;
                    save_to[nsave++] = sf;
                }
            }
            fin |= 1u << l;
        }
        if (nsave && nsave < ROW_LANES) {   /* every lane to save in one sweep over the messages */
            for (int64_t e = 0; e < n_edges; e++)
                for (int j = 0; j < nsave; j++) save_to[j][e] = c2v_get(c2v, e, save_l[j], f16, ws);
        } else if (nsave) {                /* ... a row at a time */
            float buf[W] __attribute__((aligned(64)));
            for (int64_t e = 0; e < n_edges; e++) {
                if (ws == W)
                    _mm512_store_ps(buf, f16 ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)((const uint16_t *)c2v + e * W)))
                                             : _mm512_load_ps((const float *)c2v + e * W));
                else
                    _mm256_store_ps(buf, f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)c2v + e * ws)))
                                             : _mm256_loadu_ps((const float *)c2v + e * ws));
                for (int j = 0; j < nsave; j++) save_to[j][e] = buf[save_l[j]];
            }
        }
        active &= ~fin;
        fresh &= ~fin;
        if (fin && next < F) continue;      /* refill first: the new frames need their own syndrome test */
        if (!active) continue;
        for (int l = 0; l < W; l++) lane_it[l] += (long)(active >> l & 1u);
        if (next >= F && !fresh && __builtin_popcount(active) <= 8) {   /* the tail: 8-lane layout */
            if (ws == W) {
                compact_lanes(n, m, n_edges, W, 8, post, c2v, f16, synm, hard, &active, lane_f, lane_it, best_cnt,
                              best_it);
                ws = 8;
            }
            n_unsat = f16 ? stream_pass8(ptr, ev, m, pfe, post, c2v, tmp, pre, phs, synm, hard, active, unsat_list,
                                         lane_cnt, &P, 1)
                          : stream_pass8(ptr, ev, m, pfe, post, c2v, tmp, pre, phs, synm, hard, active, unsat_list,
                                         lane_cnt, &P, 0);
            stall_update(active, lane_cnt, lane_it, best_cnt, best_it);
            continue;
        }
        const __mmask16 keep = (__mmask16)~fresh;
#define STREAM_PASS(F16, MASKED, BACK) \
        stream_pass(ptr, ev, m, pfe, post, c2v, tmp, pre, phs, synm, hard, keep, active, unsat_list, lane_cnt, &P, \
                    F16, MASKED, BACK)
        if (back) {
            if (f16) n_unsat = fresh ? STREAM_PASS(1, 1, 1) : STREAM_PASS(1, 0, 1);
            else n_unsat = fresh ? STREAM_PASS(0, 1, 1) : STREAM_PASS(0, 0, 1);
        } else {
            if (f16) n_unsat = fresh ? STREAM_PASS(1, 1, 0) : STREAM_PASS(1, 0, 0);
            else n_unsat = fresh ? STREAM_PASS(0, 1, 0) : STREAM_PASS(0, 0, 0);
        }
#undef STREAM_PASS
        stall_update(active, lane_cnt, lane_it, best_cnt, best_it);
        fresh = 0;
    }
}

#else
#define LDPC_HAVE_AVX512 0
#endif

static int use_simd(void)
{
#if LDPC_HAVE_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

/* the streaming kernel also needs AVX512DQ (vrangeps) and F16C (every AVX-512 CPU but Xeon Phi has both) */
static int use_simd_stream(void)
{
#if LDPC_HAVE_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

enum { KERNEL_AUTO = 0, KERNEL_STREAM_F16 = 1, KERNEL_STREAM_F32 = 2, KERNEL_GROUP16 = 3 };

static int get_buf(PyObject *obj, Py_buffer *b, int writable, Py_ssize_t itemsize, const char *name)
{
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (b->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected item size %zd, got %zd", name, itemsize, b->itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(decode_doc,
"decode(check_ptr, edge_var, llr, syndrome, max_iterations, word) -> (iterations, converged)\n\n"
"check_ptr: int64 (m+1,), edge_var: int32 (E,) (edges sorted by check), llr: float64 (n,),\n"
"syndrome: uint8 (m,), word: writable uint8 (n,) receiving the hard decision.");

static PyObject *py_decode(PyObject *self, PyObject *args)
{
    PyObject *o_ptr, *o_ev, *o_llr, *o_syn, *o_word;
    long max_iter;
    if (!PyArg_ParseTuple(args, "OOOOlO", &o_ptr, &o_ev, &o_llr, &o_syn, &max_iter, &o_word)) return NULL;
    Py_buffer bp, be, bl, bs, bw;
    if (get_buf(o_ptr, &bp, 0, 8, "check_ptr") < 0) return NULL;
    if (get_buf(o_ev, &be, 0, 4, "edge_var") < 0) { PyBuffer_Release(&bp); return NULL; }
    if (get_buf(o_llr, &bl, 0, 8, "llr") < 0) { PyBuffer_Release(&bp); PyBuffer_Release(&be); return NULL; }
    if (get_buf(o_syn, &bs, 0, 1, "syndrome") < 0) {
        PyBuffer_Release(&bp); PyBuffer_Release(&be); PyBuffer_Release(&bl); return NULL;
    }
    if (get_buf(o_word, &bw, 1, 1, "word") < 0) {
        PyBuffer_Release(&bp); PyBuffer_Release(&be); PyBuffer_Release(&bl); PyBuffer_Release(&bs); return NULL;
    }
    PyObject *res = NULL;
    int64_t m = bp.len / 8 - 1, n = bl.len / 8;
    const int64_t *ptr = (const int64_t *)bp.buf;
    const int32_t *ev = (const int32_t *)be.buf;
    float *post = NULL, *c2v = NULL, *tmp = NULL, *phs = NULL;
    if (m < 1 || bs.len != m || bw.len != n || max_iter < 0) {
        PyErr_SetString(PyExc_ValueError, "decode: inconsistent array sizes");
        goto done;
    }
    if (ptr[0] != 0 || ptr[m] != be.len / 4) {
        PyErr_SetString(PyExc_ValueError, "decode: check_ptr does not span edge_var");
        goto done;
    }
    int dmax;
    if (check_tanner(ptr, ev, m, n, INT32_MAX, "decode", &dmax) < 0) goto done;
    post = (float *)malloc((size_t)n * sizeof(float));
    c2v = (float *)malloc((size_t)(ptr[m] > 0 ? ptr[m] : 1) * sizeof(float));
    tmp = (float *)malloc((size_t)(dmax + 1) * sizeof(float));
    phs = (float *)malloc((size_t)(dmax + 1) * sizeof(float));
    if (!post || !c2v || !tmp || !phs) { PyErr_NoMemory(); goto done; }
    int ok = 0;
    long it;
    Py_BEGIN_ALLOW_THREADS
    it = decode_frame(ptr, ev, m, n, (const double *)bl.buf, (const uint8_t *)bs.buf, max_iter,
                      (uint8_t *)bw.buf, post, c2v, tmp, phs, &ok, 0, 0);
    Py_END_ALLOW_THREADS
    res = Py_BuildValue("(lO)", it, ok ? Py_True : Py_False);
done:
    free(post); free(c2v); free(tmp); free(phs);
    PyBuffer_Release(&bp); PyBuffer_Release(&be); PyBuffer_Release(&bl); PyBuffer_Release(&bs);
    PyBuffer_Release(&bw);
    return res;
}


static void *alloc64(size_t bytes) { return aligned_alloc(64, ((bytes + 63) / 64) * 64 + 64); }

PyDoc_STRVAR(decode_many_doc,
"decode_many(check_ptr, edge_var, llr, syndromes, max_iterations, words, iterations, converged, simd\n"
"            [, state, warm, kernel, stall, post_out, state_rows, state_stride, post_in, post_ok])\n\n"
"F frames of one code: llr float64 (F*n,), syndromes uint8 (F*m,), outputs words uint8 (F*n,),\n"
"iterations int64 (F,), converged uint8 (F,).  simd: 1 = a 16-frame AVX-512 kernel where the CPU has it,\n"
"0 = frame-by-frame scalar kernel.  state: optional writable float32 (F*E,) check-to-variable messages (or None);\n"
"with warm=1 decoding continues from them (a-posteriori LLRs = llr + sum of messages), and the final\n"
"messages of every frame that did not converge are written back (blind reconciliation's later rounds).\n"
"kernel (SIMD only): 0 = best available (default), 1 = streaming with float16 messages, 2 = streaming with\n"
"float32 messages, 3 = the earlier 16-frame group kernel (lock-step groups, for comparisons).\n"
"stall: > 0 gives a frame up (not converged) once its count of failing checks, taken during each pass, has not\n"
"reached a new minimum for `stall` iterations (streaming and scalar kernels; the group kernel ignores it).\n"
"post_out: optional writable float32 (F*n,): the a-posteriori LLRs at the end of the last iteration of every\n"
"frame that did not converge (others untouched): blind reconciliation's reliability requests.\n"
"state_rows: optional int64 (F,): frame f's messages are row state_rows[f] of state seen as (R, state_stride)\n"
"float32 (state_stride >= E; the first E entries used), so a caller can keep every frame's messages in place\n"
"across calls instead of packing them into an (F, E) array per call.\n"
"post_in, post_ok (streaming kernels, warm only): float32 (F*n,) a-posteriori LLRs and uint8 (F,) flags: a frame\n"
"with its flag set resumes from those posteriors (its last attempt's post_out, adjusted by the caller for values\n"
"disclosed since) instead of llr + the sum of its saved messages (a pass over the edges with random posterior\n"
"reads and writes per frame).\n"
"Returns the name of the kernel used.");

static PyObject *py_decode_many(PyObject *self, PyObject *args)
{
    PyObject *o[8];
    PyObject *o_state = Py_None, *o_post = Py_None, *o_rows = Py_None, *o_pin = Py_None, *o_pok = Py_None;
    long max_iter, stall = 0;
    Py_ssize_t stride = 0;
    int simd, warm = 0, kernel = KERNEL_AUTO;
    if (!PyArg_ParseTuple(args, "OOOOlOOOp|OpilOOnOO", &o[0], &o[1], &o[2], &o[3], &max_iter, &o[4], &o[5], &o[6],
                          &simd, &o_state, &warm, &kernel, &stall, &o_post, &o_rows, &stride, &o_pin, &o_pok))
        return NULL;
    if (stall < 0) {
        PyErr_SetString(PyExc_ValueError, "decode_many: stall must be >= 0");
        return NULL;
    }
    if (kernel < KERNEL_AUTO || kernel > KERNEL_GROUP16) {
        PyErr_SetString(PyExc_ValueError, "decode_many: kernel must be 0 (auto), 1, 2 (streaming f16/f32) or 3 (group)");
        return NULL;
    }
    Py_buffer bst, bpo, brw, bpi, bpk;
    int have_state = 0, have_post = 0, have_rows = 0, have_pin = 0, have_pok = 0;
    float **srow = NULL;
    static const Py_ssize_t isz[7] = {8, 4, 8, 1, 1, 8, 1};
    static const int wr[7] = {0, 0, 0, 0, 1, 1, 1};
    static const char *names[7] = {"check_ptr", "edge_var", "llr", "syndromes", "words", "iterations", "converged"};
    Py_buffer b[7];
    int got = 0;
    PyObject *res = NULL;
    float *post = NULL, *tmp = NULL, *phs = NULL, *pre = NULL;
    void *c2v = NULL;
    int32_t *synT = NULL, *unsat_list = NULL;
    uint16_t *synm = NULL, *hard = NULL;
    for (; got < 7; got++)
        if (get_buf(o[got], &b[got], wr[got], isz[got], names[got]) < 0) goto done;
    const int64_t *ptr = (const int64_t *)b[0].buf;
    const int32_t *ev = (const int32_t *)b[1].buf;
    int64_t m = b[0].len / 8 - 1, F = b[5].len / 8;
    int64_t n = F > 0 ? b[2].len / 8 / F : 0;
    if (m < 1 || F < 1 || n < 1 || b[2].len != 8 * F * n || b[3].len != F * m || b[4].len != F * n ||
        b[6].len != F || max_iter < 0 || ptr[0] != 0 || ptr[m] != b[1].len / 4) {
        PyErr_SetString(PyExc_ValueError, "decode_many: inconsistent array sizes");
        goto done;
    }
    int dmax;
    if (check_tanner(ptr, ev, m, n, INT32_MAX, "decode_many", &dmax) < 0) goto done;
    const double *llr = (const double *)b[2].buf;
    const uint8_t *syn = (const uint8_t *)b[3].buf;
    uint8_t *words = (uint8_t *)b[4].buf, *oks = (uint8_t *)b[6].buf;
    int64_t *iters = (int64_t *)b[5].buf;
    if (o_state != Py_None) {
        if (get_buf(o_state, &bst, 1, 4, "state") < 0) goto done;
        have_state = 1;
        if (o_rows == Py_None && bst.len != 4 * F * ptr[m]) {
            PyErr_SetString(PyExc_ValueError, "decode_many: state must hold F * n_edges float32 messages");
            goto done;
        }
        srow = (float **)malloc((size_t)F * sizeof(float *));
        if (!srow) { PyErr_NoMemory(); goto done; }
        if (o_rows == Py_None) {
            for (int64_t f = 0; f < F; f++) srow[f] = (float *)bst.buf + f * ptr[m];
        } else {
            if (get_buf(o_rows, &brw, 0, 8, "state_rows") < 0) goto done;
            have_rows = 1;
            if (brw.len != 8 * F || stride < ptr[m] || bst.len % (4 * stride) != 0) {
                PyErr_SetString(PyExc_ValueError, "decode_many: state_rows must hold F rows and state_stride must be "
                                                  ">= n_edges and divide the state");
                goto done;
            }
            const int64_t R = bst.len / (4 * stride), *rows = (const int64_t *)brw.buf;
            for (int64_t f = 0; f < F; f++) {
                if (rows[f] < 0 || rows[f] >= R) {
                    PyErr_SetString(PyExc_ValueError, "decode_many: a state row is out of range");
                    goto done;
                }
                srow[f] = (float *)bst.buf + rows[f] * stride;
            }
        }
    } else if (o_rows != Py_None) {
        PyErr_SetString(PyExc_ValueError, "decode_many: state_rows without a state");
        goto done;
    }
    if (o_post != Py_None) {
        if (get_buf(o_post, &bpo, 1, 4, "post_out") < 0) goto done;
        have_post = 1;
        if (bpo.len != 4 * F * n) {
            PyErr_SetString(PyExc_ValueError, "decode_many: post_out must hold F * n float32 LLRs");
            goto done;
        }
    }
    float *post_out = have_post ? (float *)bpo.buf : NULL;
    if ((o_pin == Py_None) != (o_pok == Py_None)) {
        PyErr_SetString(PyExc_ValueError, "decode_many: post_in and post_ok go together");
        goto done;
    }
    if (o_pin != Py_None) {
        if (get_buf(o_pin, &bpi, 0, 4, "post_in") < 0) goto done;
        have_pin = 1;
        if (get_buf(o_pok, &bpk, 0, 1, "post_ok") < 0) goto done;
        have_pok = 1;
        if (bpi.len != 4 * F * n || bpk.len != F) {
            PyErr_SetString(PyExc_ValueError, "decode_many: post_in must hold F * n float32 LLRs and post_ok F flags");
            goto done;
        }
    }
    const float *post_in = have_pin ? (const float *)bpi.buf : NULL;
    const uint8_t *post_ok = have_pok ? (const uint8_t *)bpk.buf : NULL;
    /* kernel choice: streaming where the CPU has AVX512F+DQ+F16C, else the group kernel (AVX512F), else scalar */
    int vec = 0;
    if (simd && use_simd()) {
        vec = kernel == KERNEL_AUTO ? (use_simd_stream() ? KERNEL_STREAM_F16 : KERNEL_GROUP16) : kernel;
        if (vec != KERNEL_GROUP16 && !use_simd_stream()) {
            PyErr_SetString(PyExc_ValueError, "decode_many: the streaming kernels need AVX512DQ and F16C");
            goto done;
        }
    }
    size_t lanes = vec ? 16 : 1;
    int64_t ne = ptr[m] > 0 ? ptr[m] : 1;
    post = (float *)alloc64((size_t)n * lanes * sizeof(float));
    c2v = alloc64((size_t)ne * lanes * (vec == KERNEL_STREAM_F16 ? 2 : 4));
    tmp = (float *)alloc64((size_t)(dmax + 1) * lanes * sizeof(float));
    phs = (float *)alloc64((size_t)(dmax + 1) * lanes * sizeof(float));
    pre = (float *)alloc64((size_t)(dmax + 1) * lanes * sizeof(float));
    synT = vec == KERNEL_GROUP16 ? (int32_t *)alloc64((size_t)m * lanes * sizeof(int32_t)) : NULL;
    synm = vec ? (uint16_t *)alloc64((size_t)m * 2) : NULL;
    hard = vec ? (uint16_t *)alloc64((size_t)n * 2) : NULL;
    int stream = vec && vec != KERNEL_GROUP16;
    unsat_list = stream ? (int32_t *)alloc64((size_t)m * sizeof(int32_t)) : NULL;
    if (!post || !c2v || !tmp || !phs || !pre || (vec && (!synm || !hard)) || (vec == KERNEL_GROUP16 && !synT) ||
        (stream && !unsat_list)) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t f_scalar = 0;        /* frames from here on go to the scalar kernel */
    Py_BEGIN_ALLOW_THREADS
#if LDPC_HAVE_AVX512
    if (vec == KERNEL_GROUP16) {
        /* A 16-lane pass costs about 6 single-frame passes (measured, n = 1e5): a last group of <= 6 frames
         * (e.g. the few frames still failing in a blind-reconciliation round) runs faster frame by frame. */
        int64_t full = F / 16 * 16, rest = F - full;
        f_scalar = rest <= SCALAR_TAIL ? full : F;
        for (int64_t f0 = 0; f0 < f_scalar; f0 += 16)
            decode_group16(ptr, ev, m, n, llr, syn, f0, (int)(F - f0 < 16 ? F - f0 : 16), max_iter, words,
                           iters, oks, post, (float *)c2v, tmp, phs, synT, srow, warm, post_out);
    } else if (vec) {
        /* a streaming pass costs about 2 single-frame passes (measured, n = 1e5): 1-2 frames run frame by frame */
        f_scalar = F >= STREAM_MIN_FRAMES ? F : 0;
        if (f_scalar)
            decode_stream16(ptr, ev, m, n, llr, syn, F, max_iter, words, iters, oks, post, c2v, tmp, pre, phs,
                            synm, hard, srow, warm, vec == KERNEL_STREAM_F16, unsat_list, stall, post_out,
                            post_in, post_ok);
    }
#endif
    for (int64_t f = f_scalar; f < F; f++) {
        int ok = 0;
        float *msgs = srow ? srow[f] : (float *)c2v;   /* the frame's own saved messages, in place */
        iters[f] = decode_frame(ptr, ev, m, n, llr + f * n, syn + f * m, max_iter, words + f * n, post, msgs,
                                tmp, phs, &ok, srow ? warm : 0, stall);
        oks[f] = (uint8_t)ok;
        if (post_out && !ok) memcpy(post_out + f * n, post, (size_t)n * sizeof(float));
    }
    Py_END_ALLOW_THREADS
    {
        static const char *kname[4] = {"scalar", "avx512x16-stream-f16", "avx512x16-stream", "avx512x16"};
        res = PyUnicode_FromString(f_scalar == 0 ? "scalar" : kname[vec]);
    }
done:
    free(post); free(c2v); free(tmp); free(phs); free(pre); free(synT); free(synm); free(hard);
    free(unsat_list);
    free(srow);
    if (have_state) PyBuffer_Release(&bst);
    if (have_post) PyBuffer_Release(&bpo);
    if (have_rows) PyBuffer_Release(&brw);
    if (have_pin) PyBuffer_Release(&bpi);
    if (have_pok) PyBuffer_Release(&bpk);
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return res;
}

/* ------------------------------------------------------------------------ normalised / offset min-sum
 * Layered min-sum (Chen & Fossorier, "Near optimum universal belief propagation based decoding of LDPC codes",
 * IEEE Trans. Commun. 50(3) 2002: normalised and offset BP-based decoding; layered schedule as above) on
 * saturated int16 fixed-point messages:
 *     |L_{c->v}| = max(0, alpha * min_{v' != v} |L_{v'->c}| - beta),   sign as in sum-product,
 * alpha in Q15 (rounded multiply, as _mm512_mulhrs_epi16), beta in LLR units / MS_SCALE.  Channel LLRs are
 * quantised to round(MS_SCALE * llr) clamped to +-MS_LLR_CLAMP (shortened / revealed symbols: "infinite"),
 * variable-to-check magnitudes clamped to MS_VMAX, a-posteriori sums saturate at +-32767.  Min-sum is
 * invariant to the LLR scale (up to rounding and the offset), so MS_SCALE only sets the resolution.
 * Per check only min1, min2, the position of min1 and one sign bit per edge are stored (compressed check
 * messages: 6 bytes per check and lane + 1 bit per edge and lane instead of a message per edge).
 * The scalar kernel (ms_frame) and the 32-lane AVX-512BW kernel (ms_group32, one frame per int16 lane) do
 * the same integer arithmetic in the same order: their results are bit-identical (checked in the tests).
 * Early stop on stall: with stall > 0 a frame is given up (not converged) once its number of unsatisfied
 * checks has not reached a new minimum for `stall` iterations.
 */
#define MS_SCALE 16.0
#define MS_LLR_CLAMP 16383
#define MS_VMAX 4095

static inline int16_t sat16(int32_t x) { return (int16_t)(x > 32767 ? 32767 : (x < -32768 ? -32768 : x)); }
static inline int16_t ms_quant(double l)
{
    double q = l * MS_SCALE;
    q = q > MS_LLR_CLAMP ? MS_LLR_CLAMP : (q < -MS_LLR_CLAMP ? -MS_LLR_CLAMP : q);
    return (int16_t)lrint(q);
}
static inline int16_t ms_norm(int16_t x, int alpha_q15, int beta)
{
    int32_t y = ((int32_t)x * alpha_q15 + 0x4000) >> 15;      /* = _mm512_mulhrs_epi16 */
    y -= beta;
    return (int16_t)(y > 0 ? y : 0);
}

/* state (optional): int16 (E,) check-to-variable messages in, if warm, and out on failure. */
static long ms_frame(const int64_t *ptr, const int32_t *ev, int64_t m, int64_t n, const double *llr,
                     const uint8_t *syn, long max_iter, uint8_t *word, int16_t *post, int16_t *m1s, int16_t *m2s,
                     int16_t *ixs, uint8_t *sgn, uint8_t *pmem, int16_t *tmp, uint8_t *tsg, int *ok, int alpha,
                     int beta, int stall, int scms, int16_t *state, int warm)
{
    const int64_t n_edges = ptr[m];
    for (int64_t v = 0; v < n; v++) post[v] = ms_quant(llr[v]);
    memset(m1s, 0, (size_t)m * 2); memset(m2s, 0, (size_t)m * 2); memset(ixs, 0, (size_t)m * 2);
    memset(sgn, 0, (size_t)n_edges);
    memset(pmem, 0, (size_t)n_edges);
    if (state && warm) {
        for (int64_t c = 0; c < m; c++) {
            int16_t lo = MS_VMAX, hi = 0, ix = 0;
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) {
                int16_t s = state[e], a = (int16_t)(s < 0 ? -s : s);
                sgn[e] = s < 0;
                if (a < lo) lo = a;
                if (a > hi) { hi = a; ix = (int16_t)(e - ptr[c]); }
                post[ev[e]] = sat16((int32_t)post[ev[e]] + s);
            }
            if (ptr[c + 1] - ptr[c] < 2 || lo == hi) ix = 0;
            m1s[c] = lo; m2s[c] = hi; ixs[c] = ix;
        }
    }
    long it = 0, best = -1, best_it = 0;
    for (;;) {
        long unsat = 0;
        for (int64_t c = 0; c < m; c++) {
            unsigned par = syn[c];
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) par ^= (unsigned)(post[ev[e]] < 0);
            unsat += par;
        }
        if (!unsat) { *ok = 1; break; }
        if (best < 0 || unsat < best) { best = unsat; best_it = it; }
        if (it >= max_iter || (stall > 0 && it - best_it >= stall)) { *ok = 0; break; }
        it++;
        for (int64_t c = 0; c < m; c++) {
            const int64_t a = ptr[c];
            const int d = (int)(ptr[c + 1] - a);
            const int32_t *vs = ev + a;
            const int16_t o1 = m1s[c], o2 = m2s[c], oi = ixs[c];
            int16_t n1 = MS_VMAX, n2 = MS_VMAX, ni = 0;
            unsigned par = syn[c];
            for (int k = 0; k < d; k++) {
                int16_t mag = k == oi ? o2 : o1;
                int16_t old = sgn[a + k] ? (int16_t)-mag : mag;
                int16_t t = sat16((int32_t)post[vs[k]] - old);
                tmp[k] = t;
                if (scms) {    /* erase a message whose sign flipped since the last (non-erased) one */
                    uint8_t pm = pmem[a + k], s = t < 0, nz = t != 0;
                    if ((pm & 2) && ((pm & 1) != s)) { t = 0; pmem[a + k] = 0; }
                    else pmem[a + k] = (uint8_t)((nz << 1) | s);
                }
                tsg[k] = t < 0;
                par ^= tsg[k];
                int32_t ab = t < 0 ? -(int32_t)t : t;
                int16_t av = (int16_t)(ab < MS_VMAX ? ab : MS_VMAX);
                if (av < n1) ni = (int16_t)k;
                int16_t mx = av > n1 ? av : n1;
                n2 = mx < n2 ? mx : n2;
                n1 = av < n1 ? av : n1;
            }
            n1 = ms_norm(n1, alpha, beta);
            n2 = ms_norm(n2, alpha, beta);
            m1s[c] = n1; m2s[c] = n2; ixs[c] = ni;
            for (int k = 0; k < d; k++) {
                int16_t mag = k == ni ? n2 : n1;
                unsigned neg = par ^ tsg[k];
                sgn[a + k] = (uint8_t)neg;
                post[vs[k]] = sat16((int32_t)tmp[k] + (neg ? -mag : mag));
            }
        }
    }
    for (int64_t v = 0; v < n; v++) word[v] = (uint8_t)(post[v] < 0);
    if (state && !*ok)
        for (int64_t c = 0; c < m; c++)
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) {
                int16_t mag = (e - ptr[c]) == ixs[c] ? m2s[c] : m1s[c];
                state[e] = sgn[e] ? (int16_t)-mag : mag;
            }
    return it;
}

#if LDPC_HAVE_AVX512
#define WS 32

__attribute__((target("avx512f,avx512bw")))
static void ms_lane_out(const int16_t *post, int64_t n, int l, uint8_t *word, const int64_t *ptr, int64_t m,
                        const int16_t *m1s, const int16_t *m2s, const int16_t *ixs, const uint32_t *sgn,
                        int16_t *state)
{
    for (int64_t v = 0; v < n; v++) word[v] = (uint8_t)(post[v * WS + l] < 0);
    if (state)
        for (int64_t c = 0; c < m; c++) {
            int16_t i1 = m1s[c * WS + l], i2 = m2s[c * WS + l], ix = ixs[c * WS + l];
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) {
                int16_t mag = (e - ptr[c]) == ix ? i2 : i1;
                state[e] = (sgn[e] >> l & 1u) ? (int16_t)-mag : mag;
            }
        }
}

__attribute__((target("avx512f,avx512bw")))
static void ms_group32(const int64_t *ptr, const int32_t *ev, int64_t m, int64_t n, const double *llr,
                       const uint8_t *syn, int64_t f0, int nl, long max_iter, uint8_t *words, int64_t *iters,
                       uint8_t *oks, int16_t *post, int16_t *m1s, int16_t *m2s, int16_t *ixs, uint32_t *sgn,
                       uint32_t *psg, uint32_t *pnz, int16_t *tmp, uint32_t *tsg, uint32_t *synm, int alpha,
                       int beta, int stall, int scms, int16_t *state, int warm)
{
    const int64_t n_edges = ptr[m];
    for (int64_t v = 0; v < n; v++)
        for (int l = 0; l < WS; l++) post[v * WS + l] = l < nl ? ms_quant(llr[(f0 + l) * n + v]) : MS_LLR_CLAMP;
    for (int64_t c = 0; c < m; c++) {
        uint32_t s = 0;
        for (int l = 0; l < nl; l++) s |= (uint32_t)(syn[(f0 + l) * m + c] & 1) << l;
        synm[c] = s;
    }
    memset(m1s, 0, (size_t)m * WS * 2); memset(m2s, 0, (size_t)m * WS * 2); memset(ixs, 0, (size_t)m * WS * 2);
    memset(sgn, 0, (size_t)n_edges * 4);
    memset(psg, 0, (size_t)n_edges * 4);
    memset(pnz, 0, (size_t)n_edges * 4);
    if (state && warm) {
        for (int l = 0; l < nl; l++) {
            const int16_t *sf = state + (f0 + l) * n_edges;
            for (int64_t c = 0; c < m; c++) {
                int16_t lo = MS_VMAX, hi = 0, ix = 0;
                for (int64_t e = ptr[c]; e < ptr[c + 1]; e++) {
                    int16_t s = sf[e], a = (int16_t)(s < 0 ? -s : s);
                    if (s < 0) sgn[e] |= 1u << l;
                    if (a < lo) lo = a;
                    if (a > hi) { hi = a; ix = (int16_t)(e - ptr[c]); }
                    int16_t *pv = post + (int64_t)ev[e] * WS + l;
                    *pv = sat16((int32_t)*pv + s);
                }
                if (ptr[c + 1] - ptr[c] < 2 || lo == hi) ix = 0;
                m1s[c * WS + l] = lo; m2s[c * WS + l] = hi; ixs[c * WS + l] = ix;
            }
        }
    }
    const __m512i vmax = _mm512_set1_epi16(MS_VMAX), zero = _mm512_setzero_si512(), one = _mm512_set1_epi16(1);
    const __m512i valpha = _mm512_set1_epi16((int16_t)alpha), vbeta = _mm512_set1_epi16((int16_t)beta);
    uint32_t done = nl < WS ? ~((1u << nl) - 1u) : 0u;     /* padding lanes count as done */
    long best[WS], best_it[WS];
    for (int l = 0; l < WS; l++) { best[l] = -1; best_it[l] = 0; }
    long it = 0;
    for (;;) {
        /* parity pass: per-lane count of unsatisfied checks (int16 counters flushed every 16384 checks) */
        int32_t cnt[WS];
        int16_t part[WS];
        memset(cnt, 0, sizeof cnt);
        __m512i acc = zero;
        for (int64_t c = 0; c < m; c++) {
            uint32_t par = synm[c];
            for (int64_t e = ptr[c]; e < ptr[c + 1]; e++)
                par ^= _mm512_movepi16_mask(_mm512_load_si512((const void *)(post + (int64_t)ev[e] * WS)));
            acc = _mm512_mask_add_epi16(acc, par, acc, one);
            if ((c & 16383) == 16383) {
                _mm512_storeu_si512((void *)part, acc);
                for (int l = 0; l < WS; l++) cnt[l] += part[l];
                acc = zero;
            }
        }
        _mm512_storeu_si512((void *)part, acc);
        for (int l = 0; l < WS; l++) cnt[l] += part[l];
        for (int l = 0; l < nl; l++) {
            if (done >> l & 1u) continue;
            int fin = 0, okl = 0;
            if (cnt[l] == 0) { fin = 1; okl = 1; }
            else {
                if (best[l] < 0 || cnt[l] < best[l]) { best[l] = cnt[l]; best_it[l] = it; }
                if (it >= max_iter || (stall > 0 && it - best_it[l] >= stall)) fin = 1;
            }
            if (fin) {
                ms_lane_out(post, n, l, words + (f0 + l) * n, ptr, m, m1s, m2s, ixs, sgn,
                            (state && !okl) ? state + (f0 + l) * n_edges : NULL);
                iters[f0 + l] = it;
                oks[f0 + l] = (uint8_t)okl;
                done |= 1u << l;
            }
        }
        if (done == 0xFFFFFFFFu) break;
        it++;
        for (int64_t c = 0; c < m; c++) {
            const int64_t a = ptr[c];
            const int d = (int)(ptr[c + 1] - a);
            const int32_t *vs = ev + a;
            const __m512i o1 = _mm512_load_si512((const void *)(m1s + c * WS));
            const __m512i o2 = _mm512_load_si512((const void *)(m2s + c * WS));
            const __m512i oi = _mm512_load_si512((const void *)(ixs + c * WS));
            __m512i n1 = vmax, n2 = vmax, ni = zero;
            uint32_t par = synm[c];
            for (int k = 0; k < d; k++) {
                const __m512i kk = _mm512_set1_epi16((int16_t)k);
                __m512i mag = _mm512_mask_blend_epi16(_mm512_cmpeq_epi16_mask(oi, kk), o1, o2);
                __m512i old = _mm512_mask_sub_epi16(mag, sgn[a + k], zero, mag);
                int16_t *pv = post + (int64_t)vs[k] * WS;
                __m512i t = _mm512_subs_epi16(_mm512_load_si512((const void *)pv), old);
                _mm512_store_si512((void *)(tmp + k * WS), t);
                uint32_t ts = _mm512_movepi16_mask(t);
                if (scms) {    /* self-corrected min-sum (Savin, ISIT 2008): erase sign-flipped messages */
                    uint32_t nz = _mm512_test_epi16_mask(t, t);
                    uint32_t er = pnz[a + k] & (psg[a + k] ^ ts);
                    t = _mm512_maskz_mov_epi16(~er, t);
                    ts &= ~er;
                    psg[a + k] = ts;
                    pnz[a + k] = nz & ~er;
                }
                tsg[k] = ts;
                par ^= ts;
                __m512i av = _mm512_min_epu16(_mm512_abs_epi16(t), vmax);   /* t: the (erased) message */
                ni = _mm512_mask_mov_epi16(ni, _mm512_cmplt_epi16_mask(av, n1), kk);
                n2 = _mm512_min_epi16(n2, _mm512_max_epi16(n1, av));
                n1 = _mm512_min_epi16(n1, av);
            }
            n1 = _mm512_max_epi16(_mm512_sub_epi16(_mm512_mulhrs_epi16(n1, valpha), vbeta), zero);
            n2 = _mm512_max_epi16(_mm512_sub_epi16(_mm512_mulhrs_epi16(n2, valpha), vbeta), zero);
            _mm512_store_si512((void *)(m1s + c * WS), n1);
            _mm512_store_si512((void *)(m2s + c * WS), n2);
            _mm512_store_si512((void *)(ixs + c * WS), ni);
            for (int k = 0; k < d; k++) {
                const __m512i kk = _mm512_set1_epi16((int16_t)k);
                __m512i mag = _mm512_mask_blend_epi16(_mm512_cmpeq_epi16_mask(ni, kk), n1, n2);
                uint32_t neg = par ^ tsg[k];
                sgn[a + k] = neg;
                __m512i o = _mm512_mask_sub_epi16(mag, neg, zero, mag);
                _mm512_store_si512((void *)(post + (int64_t)vs[k] * WS),
                                   _mm512_adds_epi16(_mm512_load_si512((const void *)(tmp + k * WS)), o));
            }
        }
    }
}
#endif

static int use_simd_bw(void)
{
#if LDPC_HAVE_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

PyDoc_STRVAR(decode_many_ms_doc,
"decode_many_ms(check_ptr, edge_var, llr, syndromes, max_iterations, words, iterations, converged, simd,\n"
"               alpha_q15, beta, stall, self_correct[, state, warm]) -> kernel name\n\n"
"Layered normalised/offset min-sum on int16 messages, F frames of one code (arrays as decode_many).\n"
"simd: 1 = 32-frame AVX-512BW kernel where the CPU has it (bit-identical to the scalar kernel).\n"
"alpha_q15: normalisation factor * 32768 (1..32767); beta: offset in quantised units (LLR * 16);\n"
"stall: give a frame up after this many iterations without a new minimum of unsatisfied checks (0: off).\n"
"self_correct: erase variable-to-check messages whose sign flipped (self-corrected min-sum, Savin 2008).\n"
"state: optional writable int16 (F*E,) check-to-variable messages (blind rounds), as decode_many.");

static PyObject *py_decode_many_ms(PyObject *self, PyObject *args)
{
    PyObject *o[8];
    PyObject *o_state = Py_None;
    long max_iter;
    int simd, alpha, beta, stall, scms, warm = 0;
    if (!PyArg_ParseTuple(args, "OOOOlOOOpiiip|Op", &o[0], &o[1], &o[2], &o[3], &max_iter, &o[4], &o[5], &o[6],
                          &simd, &alpha, &beta, &stall, &scms, &o_state, &warm))
        return NULL;
    Py_buffer bst;
    int have_state = 0;
    static const Py_ssize_t isz[7] = {8, 4, 8, 1, 1, 8, 1};
    static const int wr[7] = {0, 0, 0, 0, 1, 1, 1};
    static const char *names[7] = {"check_ptr", "edge_var", "llr", "syndromes", "words", "iterations", "converged"};
    Py_buffer b[7];
    int got = 0;
    PyObject *res = NULL;
    int16_t *post = NULL, *m1s = NULL, *m2s = NULL, *ixs = NULL, *tmp = NULL;
    void *sgn = NULL, *tsg = NULL;
    uint32_t *synm = NULL, *sgn32 = NULL, *tsg32 = NULL, *psg32 = NULL, *pnz32 = NULL;
    uint8_t *pmem = NULL;
    for (; got < 7; got++)
        if (get_buf(o[got], &b[got], wr[got], isz[got], names[got]) < 0) goto done;
    const int64_t *ptr = (const int64_t *)b[0].buf;
    const int32_t *ev = (const int32_t *)b[1].buf;
    int64_t m = b[0].len / 8 - 1, F = b[5].len / 8;
    int64_t n = F > 0 ? b[2].len / 8 / F : 0;
    if (m < 1 || F < 1 || n < 1 || b[2].len != 8 * F * n || b[3].len != F * m || b[4].len != F * n ||
        b[6].len != F || max_iter < 0 || ptr[0] != 0 || ptr[m] != b[1].len / 4) {
        PyErr_SetString(PyExc_ValueError, "decode_many_ms: inconsistent array sizes");
        goto done;
    }
    if (alpha < 1 || alpha > 32767 || beta < 0 || beta > MS_VMAX || stall < 0) {
        PyErr_SetString(PyExc_ValueError, "decode_many_ms: alpha_q15 must be in [1, 32767], beta in [0, 4095], stall >= 0");
        goto done;
    }
    int dmax;
    if (check_tanner(ptr, ev, m, n, 32767, "decode_many_ms", &dmax) < 0) goto done;
    const double *llr = (const double *)b[2].buf;
    const uint8_t *syn = (const uint8_t *)b[3].buf;
    uint8_t *words = (uint8_t *)b[4].buf, *oks = (uint8_t *)b[6].buf;
    int64_t *iters = (int64_t *)b[5].buf;
    if (o_state != Py_None) {
        if (get_buf(o_state, &bst, 1, 2, "state") < 0) goto done;
        have_state = 1;
        if (bst.len != 2 * F * ptr[m]) {
            PyErr_SetString(PyExc_ValueError, "decode_many_ms: state must hold F * n_edges int16 messages");
            goto done;
        }
    }
    int16_t *state = have_state ? (int16_t *)bst.buf : NULL;
    int vec = simd && use_simd_bw();
    size_t lanes = vec ? 32 : 1;
    int64_t ne = ptr[m] > 0 ? ptr[m] : 1;
    post = (int16_t *)alloc64((size_t)n * lanes * 2);
    m1s = (int16_t *)alloc64((size_t)m * lanes * 2);
    m2s = (int16_t *)alloc64((size_t)m * lanes * 2);
    ixs = (int16_t *)alloc64((size_t)m * lanes * 2);
    tmp = (int16_t *)alloc64((size_t)(dmax + 1) * lanes * 2);
    sgn = alloc64((size_t)ne);                         /* scalar kernel: one byte per edge */
    tsg = alloc64((size_t)(dmax + 1));
    sgn32 = vec ? (uint32_t *)alloc64((size_t)ne * 4) : NULL;   /* SIMD kernel: one bit per edge and lane */
    tsg32 = vec ? (uint32_t *)alloc64((size_t)(dmax + 1) * 4) : NULL;
    synm = vec ? (uint32_t *)alloc64((size_t)m * 4) : NULL;
    psg32 = vec ? (uint32_t *)alloc64((size_t)ne * 4) : NULL;
    pnz32 = vec ? (uint32_t *)alloc64((size_t)ne * 4) : NULL;
    pmem = (uint8_t *)alloc64((size_t)ne);
    if (!post || !m1s || !m2s || !ixs || !tmp || !sgn || !tsg || !pmem ||
        (vec && (!synm || !sgn32 || !tsg32 || !psg32 || !pnz32))) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    int64_t f_scalar = 0;
#if LDPC_HAVE_AVX512
    if (vec) {
        /* a last group of a few frames runs faster frame by frame (a 32-lane pass costs ~ 8 scalar ones) */
        int64_t full = F / WS * WS, rest = F - full;
        f_scalar = rest <= 2 * SCALAR_TAIL / 3 ? full : F;
        for (int64_t f0 = 0; f0 < f_scalar; f0 += WS)
            ms_group32(ptr, ev, m, n, llr, syn, f0, (int)(F - f0 < WS ? F - f0 : WS), max_iter, words, iters, oks,
                       post, m1s, m2s, ixs, sgn32, psg32, pnz32, tmp, tsg32, synm, alpha, beta, stall, scms,
                       state, warm);
    }
#endif
    for (int64_t f = f_scalar; f < F; f++) {
        int ok = 0;
        iters[f] = ms_frame(ptr, ev, m, n, llr + f * n, syn + f * m, max_iter, words + f * n, post, m1s, m2s, ixs,
                            (uint8_t *)sgn, pmem, tmp, (uint8_t *)tsg, &ok, alpha, beta, stall, scms,
                            state ? state + f * ptr[m] : NULL, state ? warm : 0);
        oks[f] = (uint8_t)ok;
    }
    Py_END_ALLOW_THREADS
    res = PyUnicode_FromString(vec ? "avx512bw-minsum-x32" : "scalar-minsum");
done:
    free(post); free(m1s); free(m2s); free(ixs); free(tmp); free(sgn); free(tsg); free(synm); free(sgn32); free(tsg32); free(psg32); free(pnz32); free(pmem);
    if (have_state) PyBuffer_Release(&bst);
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return res;
}

/* ------------------------------------------------------------------------------ PEG graph construction
 * Progressive edge growth (X.-Y. Hu, E. Eleftheriou, D. M. Arnold, "Regular and irregular progressive
 * edge-growth Tanner graphs", IEEE Trans. Inf. Theory 51(1), 386 (2005)): variables in the given order (ascending
 * degree), each edge in turn; the first edge of a variable goes to a check of lowest current degree, every later
 * one to a check outside the variable's depth-l neighbourhood (breadth-first over the graph built so far), the
 * farthest level if every check is reached, lowest current degree among those, ties broken at random (xorshift
 * seeded by the caller).  Check degrees therefore stay concentrated (a spread of 2-3 measured).
 * Cost control (n = 1e5..1e6): the search stops expanding at `max_depth` levels or once it has visited more than
 * `edge_budget` edges (the first level, i.e. local girth 6, is always completed), and then takes an unreached check
 * of lowest degree (bucket array of checks by degree).
 */
typedef struct { uint64_t s; } peg_rng;
static inline uint64_t peg_next(peg_rng *r) { r->s ^= r->s << 13; r->s ^= r->s >> 7; r->s ^= r->s << 17; return r->s; }

PyDoc_STRVAR(peg_doc,
"peg(var_degree, m, seed, max_depth, edge_budget, var_checks) -> max check degree\n\n"
"var_degree: int32 (n,) in processing order; var_checks: writable int32 (sum of degrees,) receiving each\n"
"variable's checks (variable-major).");

static PyObject *py_peg(PyObject *self, PyObject *args)
{
    PyObject *o_deg, *o_out;
    long long m_ll, seed, max_depth, budget;
    if (!PyArg_ParseTuple(args, "OLLLLO", &o_deg, &m_ll, &seed, &max_depth, &budget, &o_out)) return NULL;
    Py_buffer bd, bo;
    if (get_buf(o_deg, &bd, 0, 4, "var_degree") < 0) return NULL;
    if (get_buf(o_out, &bo, 1, 4, "var_checks") < 0) { PyBuffer_Release(&bd); return NULL; }
    PyObject *res = NULL;
    const int32_t *deg = (const int32_t *)bd.buf;
    int32_t *out = (int32_t *)bo.buf;
    int64_t n = bd.len / 4, m = m_ll, E = 0;
    int32_t *cdeg = NULL, *cadj = NULL, *order = NULL, *pos = NULL, *bstart = NULL, *stamp = NULL, *frontier = NULL,
            *next = NULL, *vptr32 = NULL;
    int64_t *vptr = NULL;
    for (int64_t v = 0; v < n; v++) {
        if (deg[v] < 1 || deg[v] > m) { PyErr_SetString(PyExc_ValueError, "peg: variable degree out of range"); goto done; }
        E += deg[v];
    }
    if (m < 2 || bo.len != 4 * E) { PyErr_SetString(PyExc_ValueError, "peg: inconsistent sizes"); goto done; }
    int64_t cap = E / m + 16;                     /* check degrees stay within one of E/m (lowest-degree rule) */
    cdeg = calloc((size_t)m, 4); cadj = malloc((size_t)(m * cap) * 4); order = malloc((size_t)m * 4);
    pos = malloc((size_t)m * 4); bstart = calloc((size_t)(cap + 2), 4); stamp = calloc((size_t)m, 4);
    frontier = malloc((size_t)m * 4); next = malloc((size_t)m * 4); vptr = malloc((size_t)(n + 1) * 8);
    (void)vptr32;
    if (!cdeg || !cadj || !order || !pos || !bstart || !stamp || !frontier || !next || !vptr) { PyErr_NoMemory(); goto done; }
    vptr[0] = 0;
    for (int64_t v = 0; v < n; v++) vptr[v + 1] = vptr[v] + deg[v];
    int32_t maxdeg = 0;
    int fail = 0;
    Py_BEGIN_ALLOW_THREADS
    peg_rng R = {(uint64_t)seed * 0x9E3779B97F4A7C15ull + 0x1234567ull};
    for (int i = 0; i < 8; i++) peg_next(&R);
    /* bucket array: order[] holds checks sorted by current degree; bstart[d] = first index of degree d */
    for (int64_t c = 0; c < m; c++) { order[c] = (int32_t)c; pos[c] = (int32_t)c; }
    for (int64_t c = m - 1; c > 0; c--) {        /* random initial order: random tie-breaks by scan start */
        int64_t j = (int64_t)(peg_next(&R) % (uint64_t)(c + 1));
        int32_t t = order[c]; order[c] = order[j]; order[j] = t;
    }
    for (int64_t c = 0; c < m; c++) pos[order[c]] = (int32_t)c;
    for (int64_t d = 0; d <= cap + 1; d++) bstart[d] = d == 0 ? 0 : (int32_t)m;
    int32_t cur = 0;                              /* stamp generation */
    for (int64_t v = 0; v < n && !fail; v++) {
        int32_t *vc = out + vptr[v];
        for (int j = 0; j < deg[v]; j++) {
            cur++;
            int64_t nf = 0, reached = 0, visited_edges = 0;
            for (int k = 0; k < j; k++)
                if (stamp[vc[k]] != cur) { stamp[vc[k]] = cur; frontier[nf++] = vc[k]; reached++; }
            int use_frontier = 0;                 /* 1: choose among frontier[] (the farthest level) */
            if (j > 0) {
                for (long depth = 0; depth < max_depth && (depth == 0 || visited_edges <= budget); depth++) {
                    int64_t nn = 0;
                    /* the first level is always complete (no 4-cycle where one can be avoided); deeper levels
                     * stop mid-level once the budget is spent */
                    for (int64_t i = 0; i < nf && (depth == 0 || visited_edges <= budget); i++) {
                        int32_t c = frontier[i];
                        const int32_t *cv = cadj + (int64_t)c * cap;
                        for (int32_t a = 0; a < cdeg[c]; a++) {
                            int32_t u = cv[a];
                            if (u == (int32_t)v) continue;
                            const int32_t *uc = out + vptr[u];
                            int32_t du = u < v ? deg[u] : 0;     /* only variables already placed */
                            visited_edges += du;
                            for (int32_t b = 0; b < du; b++)
                                if (stamp[uc[b]] != cur) { stamp[uc[b]] = cur; next[nn++] = uc[b]; }
                        }
                    }
                    if (nn == 0) break;                           /* tree stopped growing */
                    if (reached + nn >= m) {                      /* all reached: take the farthest level */
                        memcpy(frontier, next, (size_t)nn * 4);
                        nf = nn;
                        use_frontier = 1;
                        break;
                    }
                    reached += nn;
                    memcpy(frontier, next, (size_t)nn * 4);
                    nf = nn;
                }
            }
            int32_t pick = -1;
            if (use_frontier) {
                int32_t best = INT32_MAX; uint64_t ties = 0;
                for (int64_t i = 0; i < nf; i++) {
                    int32_t c = frontier[i];
                    if (cdeg[c] < best) { best = cdeg[c]; pick = c; ties = 1; }
                    else if (cdeg[c] == best && peg_next(&R) % ++ties == 0) pick = c;
                }
            } else {
                /* lowest-degree unreached check: scan buckets from the lowest, each from a random start */
                for (int32_t d = 0; d <= cap && pick < 0; d++) {
                    int32_t lo = bstart[d], hi = bstart[d + 1];
                    if (hi <= lo) continue;
                    int32_t len = hi - lo, s0 = (int32_t)(peg_next(&R) % (uint64_t)len);
                    for (int32_t i = 0; i < len; i++) {
                        int32_t c = order[lo + (s0 + i) % len];
                        if (stamp[c] != cur) { pick = c; break; }
                    }
                }
            }
            if (pick < 0 || cdeg[pick] >= cap) { fail = 1; break; }
            /* add the edge; move pick from bucket d to d+1 (swap with the bucket's last element) */
            int32_t d = cdeg[pick], last = bstart[d + 1] - 1, pp = pos[pick], other = order[last];
            order[last] = pick; pos[pick] = last; order[pp] = other; pos[other] = pp;
            bstart[d + 1]--;
            cadj[(int64_t)pick * cap + cdeg[pick]] = (int32_t)v;
            cdeg[pick]++;
            if (cdeg[pick] > maxdeg) maxdeg = cdeg[pick];
            vc[j] = pick;
            stamp[pick] = cur;
        }
    }
    Py_END_ALLOW_THREADS
    if (fail) PyErr_SetString(PyExc_RuntimeError, "peg: no admissible check (degree cap)");
    else res = PyLong_FromLong(maxdeg);
done:
    free(cdeg); free(cadj); free(order); free(pos); free(bstart); free(stamp); free(frontier); free(next); free(vptr);
    PyBuffer_Release(&bd); PyBuffer_Release(&bo);
    return res;
}

PyDoc_STRVAR(phi_doc, "phi(x) -> float: the decoder's table value of -ln tanh(x/2) (for tests).");

static PyObject *py_phi_poly(PyObject *self, PyObject *arg)
{
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    float xf = (float)x, lo = ldexpf(1.0f, PHI_XMIN_EXP), hi = ldexpf(1.0f, PHI_XMAX_EXP);
    xf = xf < hi ? xf : hi;
    xf = xf > lo ? xf : lo;
    int32_t b = f2i(xf);
    int sgm = (b >> 23) - (127 + PHI_XMIN_EXP);
    float f = i2f((b & 0x7fffff) | 0x3f800000) - 1.0f, y = phi_poly[PHI_DEG][sgm];
    for (int j = PHI_DEG - 1; j >= 0; j--) y = fmaf(y, f, phi_poly[j][sgm]);
    return PyFloat_FromDouble(y > 0.0f ? y : 0.0);
}

static PyObject *py_phi(PyObject *self, PyObject *arg)
{
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble((double)phi_lookup((float)x));
}

static PyMethodDef methods[] = {
    {"decode", py_decode, METH_VARARGS, decode_doc},
    {"decode_many", py_decode_many, METH_VARARGS, decode_many_doc},
    {"decode_many_ms", py_decode_many_ms, METH_VARARGS, decode_many_ms_doc},
    {"peg", py_peg, METH_VARARGS, peg_doc},
    {"phi", py_phi, METH_O, phi_doc},
    {"phi_poly", py_phi_poly, METH_O, "phi_poly(x) -> float: the SIMD kernel's per-octave quartic phi (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_ldpc", "Layered sum-product LDPC syndrome decoder (C).", -1, methods,
};

PyMODINIT_FUNC PyInit__ldpc(void)
{
    if (!phi_tab && build_phi_table() < 0) return PyErr_NoMemory();
    fit_phi_poly();
    fit_phi_polym();
    PyObject *mod = PyModule_Create(&moddef);
    if (!mod) return NULL;
    PyModule_AddIntConstant(mod, "PHI_MANTISSA_BITS", PHI_MANT);
    PyModule_AddIntConstant(mod, "HAVE_SIMD", use_simd());
    PyModule_AddIntConstant(mod, "HAVE_SIMD_STREAM", use_simd_stream());
    PyModule_AddIntConstant(mod, "HAVE_SIMD_MINSUM", use_simd_bw());
    PyModule_AddIntConstant(mod, "MINSUM_LLR_SCALE", (int)MS_SCALE);
    return mod;
}
