/* Polynomial hashing mod p = 2^61 - 1 in C (optional CPython extension qkdflow.distill._poly61): the hash of
 * qkdflow.distill.verify, h_r(w_0 .. w_{n-1}) = sum_i w_i r^(n-i) mod p (Wegman & Carter's eps-almost-Delta-universal
 * family; the bounds and the word packing are in verify.py), evaluated by Horner's rule
 *
 *     acc <- (acc + w_i) * r  mod p,
 *
 * which also continues a hash: horner(acc, r, seg) = acc r^len(seg) + h_r(seg). Products in 128-bit integers,
 * reduced with 2^61 = 1 (mod p): exact, no floating point. horner_bytes56 hashes the 56-bit big-endian words of a
 * byte string (verify.bytes_to_words without its final length word, the last word zero-padded) straight from the
 * caller's buffers (several, as one string), without building the word array. The numpy implementation in verify.py
 * stays the reference and the fallback (tests/test_verify_auth.py compares them). The loops release the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define P61 ((1ULL << 61) - 1)

static inline uint64_t red(uint64_t s)   /* s < 2^64 -> s mod p */
{
    s = (s & P61) + (s >> 61);
    s = (s & P61) + (s >> 61);
    return s >= P61 ? s - P61 : s;
}

static inline uint64_t step(uint64_t acc, uint64_t w, uint64_t r)   /* acc, r < p; any w */
{
    unsigned __int128 x = (unsigned __int128)(acc + red(w)) * r;      /* (< 2^62) * (< 2^61) < 2^123 */
    uint64_t lo = (uint64_t)x & P61, hi = (uint64_t)(x >> 61);        /* hi < 2^62 */
    return red(lo + hi);
}

static int get_field(PyObject *o, uint64_t *out, const char *name)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v >= P61) {
        PyErr_Format(PyExc_ValueError, "%s must be in [0, 2^61 - 1)", name);
        return -1;
    }
    *out = v;
    return 0;
}

PyDoc_STRVAR(horner_doc, "horner(acc, r, words) -> int: Horner's rule mod 2^61 - 1 over a uint64 buffer, from acc.");

static PyObject *py_horner(PyObject *self, PyObject *args)
{
    PyObject *oa, *orr, *ow;
    uint64_t acc, r;
    if (!PyArg_ParseTuple(args, "OOO", &oa, &orr, &ow)) return NULL;
    if (get_field(oa, &acc, "acc") < 0 || get_field(orr, &r, "r") < 0) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(ow, &b, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (b.itemsize != 8) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "horner: words must be 8-byte items");
        return NULL;
    }
    const uint64_t *w = (const uint64_t *)b.buf;
    Py_ssize_t n = b.len / 8;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) acc = step(acc, w[i], r);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLongLong(acc);
}

PyDoc_STRVAR(horner_bytes56_doc,
"horner_bytes56(acc, r, buffers) -> int: Horner's rule mod 2^61 - 1, from acc, over the 56-bit big-endian words of\n"
"the concatenation of the byte buffers (the last word zero-padded), as verify.bytes_to_words without its length word.");

static PyObject *py_horner_bytes56(PyObject *self, PyObject *args)
{
    PyObject *oa, *orr, *seq;
    uint64_t acc, r;
    if (!PyArg_ParseTuple(args, "OOO", &oa, &orr, &seq)) return NULL;
    if (get_field(oa, &acc, "acc") < 0 || get_field(orr, &r, "r") < 0) return NULL;
    PyObject *fast = PySequence_Fast(seq, "horner_bytes56: buffers must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(fast);
    uint64_t w = 0;          /* the word being assembled */
    int have = 0;            /* its bytes so far (0..6) */
    for (Py_ssize_t j = 0; j < nb; j++) {
        Py_buffer b;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, j), &b, PyBUF_C_CONTIGUOUS) < 0) {
            Py_DECREF(fast);
            return NULL;
        }
        const uint8_t *p = (const uint8_t *)b.buf;
        Py_ssize_t n = b.len, i = 0;
        Py_BEGIN_ALLOW_THREADS
        while (have && i < n) {                      /* finish the word a previous buffer started */
            w = (w << 8) | p[i++];
            if (++have == 7) { acc = step(acc, w, r); w = 0; have = 0; }
        }
        for (; i + 7 <= n; i += 7) {
            uint64_t x = ((uint64_t)p[i] << 48) | ((uint64_t)p[i + 1] << 40) | ((uint64_t)p[i + 2] << 32) |
                         ((uint64_t)p[i + 3] << 24) | ((uint64_t)p[i + 4] << 16) | ((uint64_t)p[i + 5] << 8) |
                         (uint64_t)p[i + 6];
            acc = step(acc, x, r);
        }
        for (; i < n; i++) { w = (w << 8) | p[i]; have++; }
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&b);
    }
    Py_DECREF(fast);
    if (have) acc = step(acc, w << (8 * (7 - have)), r);   /* zero-padded to 7 bytes */
    return PyLong_FromUnsignedLongLong(acc);
}

static PyMethodDef methods[] = {
    {"horner", py_horner, METH_VARARGS, horner_doc},
    {"horner_bytes56", py_horner_bytes56, METH_VARARGS, horner_bytes56_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_poly61", "Polynomial hashing mod 2^61 - 1 (C path of qkdflow.distill.verify).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__poly61(void) { return PyModule_Create(&moduledef); }
