/* Exact Toeplitz-matrix x vector products over GF(2) on 64-bit words (optional CPython extension).
 *
 * Bit t of a polynomial is bit (t % 64) of word t / 64 (little-endian packing, as numpy
 * packbits(bitorder="little") viewed as "<u8").
 *
 * Square kernel, Q words (H = 64 Q bits):  Y = bits [H, 2H) of S(z) X(z), S of 2Q words, X of Q words,
 * i.e. the middle product  y_i = sum_{j<H} S[i + H - j] x_j  (a Q x Q word block of a Toeplitz MVP).
 * It is computed with the Karatsuba middle-product (two-way Toeplitz split) recursion: Hanrot, Quercia &
 * Zimmermann, "The Middle Product Algorithm I", AAECC 14, 415 (2004); Fan & Hasan, IEEE Trans. Comput.
 * 56, 224 (2007).  Over GF(2) all signs vanish.  With Q = 2h and S_d = S[d h, d h + 2h) (d = 0, 1, 2):
 *     Y_lo = MP(S_1, X_lo) + MP(S_0, X_hi),   Y_hi = MP(S_2, X_lo) + MP(S_1, X_hi),
 * and three half-size products suffice:
 *     P = MP(S_1, X_lo + X_hi),  Y_lo = P + MP(S_0 + S_1, X_hi),  Y_hi = P + MP(S_2 + S_1, X_lo).
 * At or below a kernel-specific cut (or for odd Q; Q <= BASE_WORDS there) a word-level schoolbook middle
 * product runs.  Cost ~ 2 * 3^k carry-less 64x64 multiplies for Q = 2^k, like one Karatsuba Q x Q product.
 *
 * The 64x64 -> 128-bit carry-less multiply: 512-bit VPCLMULQDQ (AVX-512) or PCLMULQDQ on x86-64 CPUs that
 * have them (checked at run time with __builtin_cpu_supports), else a portable shift-and-xor loop
 * (exact, much slower; other architectures, e.g. aarch64 PMULL, use it for now).
 *
 * Rectangular blocks: R x C grid of Q x Q blocks (see toeplitz_words() below).
 * No global state; all arithmetic is on uint64_t (no signed overflow, no shifts by >= 64).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GF2_HAVE_X86 1
#include <immintrin.h>
#else
#define GF2_HAVE_X86 0
#endif

/* Largest base-case block in words (the AVX-512 kernel's cut; 32..128 measured alike, 16 clearly slower). */
#ifndef BASE_WORDS
#define BASE_WORDS 64
#endif

/* Cut for the PCLMULQDQ-only kernel (measured best on the same machine). */
#ifndef PCLMUL_CUT
#define PCLMUL_CUT 16
#endif

typedef void (*base_fn)(const uint64_t *s, const uint64_t *x, size_t q, uint64_t *y);

/* A base case and the block size (words) at or below which the recursion hands over to it. */
typedef struct {
    base_fn fn;
    size_t cut;
    const char *name;
} kernel;

/* Portable carry-less 64x64 -> 128 multiply: XOR of shifted copies of a selected by the bits of b. */
static inline void clmul_portable(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi)
{
    uint64_t l = a & (0 - (b & 1)), h = 0;
    for (unsigned i = 1; i < 64; i++) {
        uint64_t mask = 0 - ((b >> i) & 1);
        l ^= (a << i) & mask;
        h ^= (a >> (64 - i)) & mask; /* i in [1, 63]: no shift by 64 */
    }
    *lo = l;
    *hi = h;
}

/* Schoolbook middle product for Q words: output word w (0..Q-1) collects the low halves of S_p X_q with
 * p + q = Q + w and the high halves of those with p + q = Q + w - 1.  Each product is computed once. */
static void base_portable(const uint64_t *s, const uint64_t *x, size_t q, uint64_t *y)
{
    memset(y, 0, q * sizeof *y);
    for (size_t j = 0; j < q; j++) {
        /* p = Q - 1 - j + w for w = 0..Q: p + j = Q - 1 + w. */
        for (size_t w = 0; w <= q; w++) {
            uint64_t lo, hi;
            clmul_portable(s[q - 1 - j + w], x[j], &lo, &hi);
            if (w > 0) y[w - 1] ^= lo; /* word Q - 1 + w of the product */
            if (w < q) y[w] ^= hi;     /* word Q + w */
        }
    }
}

#if GF2_HAVE_X86
/* Same as base_portable with PCLMULQDQ; accumulates 128-bit partial sums in registers.  For output word
 * pair (w-1, w) the products S_{Q-1-j+w} X_j over all j share the same alignment, so they are XORed as
 * 128-bit lanes first and scattered once. */
__attribute__((target("pclmul,sse2"))) static void base_clmul(const uint64_t *s, const uint64_t *x, size_t q,
                                                              uint64_t *y)
{
    memset(y, 0, q * sizeof *y);
    for (size_t w = 0; w <= q; w++) {
        __m128i acc = _mm_setzero_si128();
        const uint64_t *sp = s + q - 1 + w; /* sp[-j] = S_{Q-1-j+w} */
        size_t j = 0;
        for (; j + 2 <= q; j += 2) {
            __m128i xa = _mm_loadu_si128((const __m128i *)(x + j));          /* lanes x_j, x_{j+1} */
            __m128i sa = _mm_loadu_si128((const __m128i *)(sp - j - 1));     /* lanes sp[-j-1], sp[-j] */
            acc = _mm_xor_si128(acc, _mm_clmulepi64_si128(sa, xa, 0x01)); /* sp[-j] * x_j */
            acc = _mm_xor_si128(acc, _mm_clmulepi64_si128(sa, xa, 0x10)); /* sp[-j-1] * x_{j+1} */
        }
        if (j < q) {
            __m128i xa = _mm_loadl_epi64((const __m128i *)(x + j)); /* 64-bit load, upper lane zero */
            __m128i sa = _mm_loadl_epi64((const __m128i *)(sp - j));
            acc = _mm_xor_si128(acc, _mm_clmulepi64_si128(sa, xa, 0x00));
        }
        uint64_t lo = (uint64_t)_mm_cvtsi128_si64(acc);
        uint64_t hi = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc));
        if (w > 0) y[w - 1] ^= lo;
        if (w < q) y[w] ^= hi;
    }
}

/* Same with 512-bit VPCLMULQDQ (4 independent 64x64 products per instruction).  With x reversed,
 * xr_u = x_{Q-1-u}, the sum for output pair w is the lane-wise dot product  XOR_u S_{w+u} * xr_u,
 * so both operands are plain consecutive loads (masked at the tail; masked-off lanes are not read). */
__attribute__((target("avx512f,avx2,vpclmulqdq,pclmul"))) static void base_vpclmul(const uint64_t *s, const uint64_t *x,
                                                                              size_t q, uint64_t *y)
{
    uint64_t xr[BASE_WORDS];
    for (size_t u = 0; u < q; u++) xr[u] = x[q - 1 - u];
    memset(y, 0, q * sizeof *y);
    const size_t full = q & ~(size_t)7;
    const __mmask8 tail = (__mmask8)((1u << (q & 7)) - 1);
    for (size_t w = 0; w <= q; w++) {
        __m512i acc = _mm512_setzero_si512();
        size_t u = 0;
        for (; u < full; u += 8) {
            __m512i sv = _mm512_loadu_si512((const void *)(s + w + u));
            __m512i xv = _mm512_loadu_si512((const void *)(xr + u));
            acc = _mm512_xor_si512(acc, _mm512_clmulepi64_epi128(sv, xv, 0x00));
            acc = _mm512_xor_si512(acc, _mm512_clmulepi64_epi128(sv, xv, 0x11));
        }
        if (tail) {
            __m512i sv = _mm512_maskz_loadu_epi64(tail, (const void *)(s + w + u));
            __m512i xv = _mm512_maskz_loadu_epi64(tail, (const void *)(xr + u));
            acc = _mm512_xor_si512(acc, _mm512_clmulepi64_epi128(sv, xv, 0x00));
            acc = _mm512_xor_si512(acc, _mm512_clmulepi64_epi128(sv, xv, 0x11));
        }
        __m256i a4 = _mm256_xor_si256(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
        __m128i a2 = _mm_xor_si128(_mm256_castsi256_si128(a4), _mm256_extracti128_si256(a4, 1));
        uint64_t lo = (uint64_t)_mm_cvtsi128_si64(a2);
        uint64_t hi = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(a2, a2));
        if (w > 0) y[w - 1] ^= lo;
        if (w < q) y[w] ^= hi;
    }
}
#endif

/* restrict: the operands never overlap, which lets -O2 vectorise these loops. */
static inline void xor_into(uint64_t *restrict dst, const uint64_t *restrict a, const uint64_t *restrict b, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] = a[i] ^ b[i];
}

static inline void xor_acc2(uint64_t *restrict lo, uint64_t *restrict hi, const uint64_t *restrict p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        lo[i] ^= p[i];
        hi[i] ^= p[i];
    }
}

static inline void xor_acc(uint64_t *restrict dst, const uint64_t *restrict p, size_t n)
{
    for (size_t i = 0; i < n; i++) dst[i] ^= p[i];
}

/* Scratch words needed by mp() for Q words. */
static size_t mp_scratch(size_t q, size_t cut)
{
    size_t total = 0;
    while (q > cut && q % 2 == 0) {
        total += 2 * q; /* xsum h + ssum 2h + p h, h = q / 2 */
        q /= 2;
    }
    return total;
}

/* Y (Q words) = middle product of S (2Q words) and X (Q words); tmp holds mp_scratch(Q) words. */
static void mp(const uint64_t *s, const uint64_t *x, size_t q, uint64_t *y, uint64_t *tmp, const kernel *k)
{
    if (q <= k->cut || q % 2) { /* q <= BASE_WORDS here: checked at the Python boundary */
        k->fn(s, x, q, y);
        return;
    }
    size_t h = q / 2;
    uint64_t *xs = tmp, *ss = tmp + h, *p = tmp + 3 * h, *rest = tmp + 4 * h;
    xor_into(xs, x, x + h, h);
    mp(s + h, xs, h, p, rest, k);           /* P = MP(S_1, X_lo + X_hi) */
    xor_into(ss, s, s + h, 2 * h);
    mp(ss, x + h, h, y, rest, k);           /* MP(S_0 + S_1, X_hi) */
    xor_into(ss, s + 2 * h, s + h, 2 * h);
    mp(ss, x, h, y + h, rest, k);           /* MP(S_2 + S_1, X_lo) */
    xor_acc2(y, y + h, p, h);
}

/* Kernel by name: "auto" = fastest hardware one this CPU supports; fn == NULL if unknown or unsupported.
 * Cut-offs measured on a Xeon with AVX-512 (vpclmul: 32..128 similar; pclmul alone: 16 best); the
 * slow portable multiply favours deep recursion. */
static kernel pick_kernel(const char *want)
{
    const int any = strcmp(want, "auto") == 0;
    if (strcmp(want, "portable") == 0) return (kernel){base_portable, 4, "portable"};
#if GF2_HAVE_X86
    __builtin_cpu_init();
    const int pclmul = __builtin_cpu_supports("pclmul");
    if ((any || strcmp(want, "vpclmulqdq-avx512") == 0) && pclmul && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq"))
        return (kernel){base_vpclmul, BASE_WORDS, "vpclmulqdq-avx512"};
    if ((any || strcmp(want, "pclmulqdq") == 0) && pclmul) return (kernel){base_clmul, 16, "pclmulqdq"};
#endif
    return (kernel){NULL, 0, "none"};
}

/* Python: hw_kernel() -> str, the kernel "auto" selects ("none" if the CPU has no carry-less multiply). */
static PyObject *py_hw_kernel(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(pick_kernel("auto").name);
}

/* Python: toeplitz_words(s, x, y, q, rows, cols, kernel)
 *   s: (rows + cols) * q uint64 words, x: cols * q words, y (writable): rows * q words; byte buffers are
 *   reinterpreted as native uint64 and must be exactly that long.  Computes, with H = 64 q, N = cols H,
 *       y_i = sum_{j < N} S[i + N - j] x_j   (i < rows H),
 *   block (r, c) being the square middle product with the S window starting at word (r + cols - 1 - c) q.
 *   kernel: "auto", "vpclmulqdq-avx512", "pclmulqdq" or "portable" (ValueError if the CPU lacks it). */
static PyObject *py_toeplitz_words(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer sb, xb, yb;
    Py_ssize_t q, rows, cols;
    const char *want;
    if (!PyArg_ParseTuple(args, "y*y*w*nnns", &sb, &xb, &yb, &q, &rows, &cols, &want)) return NULL;
    PyObject *ret = NULL;
    uint64_t *tmp = NULL, *acc = NULL;
    const size_t w8 = sizeof(uint64_t);
    if (q < 1 || rows < 1 || cols < 1 || rows > PY_SSIZE_T_MAX / 2 || cols > PY_SSIZE_T_MAX / 2 ||
        q > PY_SSIZE_T_MAX / 64 / (rows + cols)) {
        PyErr_SetString(PyExc_ValueError, "toeplitz_words: q, rows, cols must be >= 1 and not overflow");
        goto done;
    }
    if ((size_t)sb.len != (size_t)((rows + cols) * q) * w8 || (size_t)xb.len != (size_t)(cols * q) * w8 ||
        (size_t)yb.len != (size_t)(rows * q) * w8) {
        PyErr_SetString(PyExc_ValueError, "toeplitz_words: buffer lengths must be (rows+cols)*q, cols*q, rows*q words");
        goto done;
    }
    /* The recursion halves q while it exceeds BASE_WORDS; the base cases assume q <= BASE_WORDS then. */
    size_t b = (size_t)q;
    while (b > BASE_WORDS && b % 2 == 0) b /= 2;
    if (b > BASE_WORDS) {
        PyErr_SetString(PyExc_ValueError, "toeplitz_words: q must be b * 2^t with b <= BASE_WORDS");
        goto done;
    }
    const kernel k = pick_kernel(want);
    if (!k.fn) {
        PyErr_Format(PyExc_ValueError, "toeplitz_words: kernel '%s' unknown or not supported by this CPU", want);
        goto done;
    }
    /* Buffers from numpy/bytes are at least 8-byte aligned in practice, but copy-free aliasing of an
     * arbitrary byte buffer as uint64_t is not guaranteed aligned: require it. */
    if (((uintptr_t)sb.buf | (uintptr_t)xb.buf | (uintptr_t)yb.buf) % _Alignof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "toeplitz_words: buffers must be 8-byte aligned");
        goto done;
    }
    const uint64_t *s = (const uint64_t *)sb.buf, *x = (const uint64_t *)xb.buf;
    uint64_t *y = (uint64_t *)yb.buf;
    size_t qq = (size_t)q, nscr = mp_scratch(qq, k.cut);
    tmp = malloc((nscr + 1) * w8);
    acc = malloc(qq * w8);
    if (!tmp || !acc) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (size_t r = 0; r < (size_t)rows; r++) {
        uint64_t *yr = y + r * qq;
        memset(yr, 0, qq * w8);
        for (size_t c = 0; c < (size_t)cols; c++) {
            mp(s + (r + (size_t)cols - 1 - c) * qq, x + c * qq, qq, acc, tmp, &k);
            xor_acc(yr, acc, qq);
        }
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    free(tmp);
    free(acc);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&yb);
    return ret;
}

static PyMethodDef methods[] = {
    {"hw_kernel", py_hw_kernel, METH_NOARGS, "Hardware carry-less multiply used when hw=True, or 'none'."},
    {"toeplitz_words", py_toeplitz_words, METH_VARARGS,
     "toeplitz_words(s, x, y, q, rows, cols, kernel): GF(2) Toeplitz block product on uint64 words, into y."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_gf2mul", "Carry-less (GF(2)[z]) Toeplitz products for privacy amplification.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gf2mul(void)
{
    PyObject *mod = PyModule_Create(&moduledef);
    if (mod && PyModule_AddIntConstant(mod, "BASE_WORDS", BASE_WORDS) < 0) Py_CLEAR(mod);
    return mod;
}
