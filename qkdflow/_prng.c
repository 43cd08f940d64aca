/* Counter-based random numbers in C (optional CPython extension qkdflow._prng): the same keyed splitmix64 as
 * qkdflow/prng.py (Steele, Lea & Flood, OOPSLA 2014; Stafford's Mix13 finaliser), bit for bit:
 *
 *     u64(k1, k2, c) = mix64(mix64(c * GOLDEN + k1) ^ k2),   wrapping uint64 arithmetic,
 *
 * one pass over the counters instead of numpy's ~20 whole-array temporaries per stream. prep_choices fuses
 * Alice's three streams (intensity class, basis, bit) in that pass. The Python module keeps the numpy path as the
 * reference and the fallback (tests/test_prng.py compares them). No global state; the loop runs with the GIL
 * released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define GOLDEN 0x9E3779B97F4A7C15ULL

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t u64(uint64_t k1, uint64_t k2, uint64_t c) { return mix64(mix64(c * GOLDEN + k1) ^ k2); }

/* the top 53 bits as a double in [0, 1), as prng.uniform */
static inline double unit(uint64_t x) { return (double)(x >> 11) * (1.0 / 9007199254740992.0); }

static int get_buf(PyObject *o, Py_buffer *b, int writable, Py_ssize_t itemsize, const char *name)
{
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (b->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: expected items of %zd bytes", name, itemsize);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(random_u64_doc,
"random_u64(k1, k2, counters, out): out[i] = mix64(mix64(counters[i] * GOLDEN + k1) ^ k2) (uint64 arrays).");

static PyObject *py_random_u64(PyObject *self, PyObject *args)
{
    unsigned long long k1, k2;
    PyObject *oc, *oo;
    if (!PyArg_ParseTuple(args, "KKOO", &k1, &k2, &oc, &oo)) return NULL;
    Py_buffer bc, bo;
    if (get_buf(oc, &bc, 0, 8, "counters") < 0) return NULL;
    if (get_buf(oo, &bo, 1, 8, "out") < 0) { PyBuffer_Release(&bc); return NULL; }
    if (bo.len != bc.len) {
        PyErr_SetString(PyExc_ValueError, "random_u64: out must have the counters' length");
    } else {
        const uint64_t *c = (const uint64_t *)bc.buf;
        uint64_t *o = (uint64_t *)bo.buf;
        Py_ssize_t n = bc.len / 8;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) o[i] = u64(k1, k2, c[i]);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&bc);
    PyBuffer_Release(&bo);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(prep_choices_doc,
"prep_choices(keys, edge0, edge1, basis_bias, slots, cls, basis, bit): Alice's choices per slot, as\n"
"prng.prep_choices: keys = (k1, k2) of the intensity, basis and bit streams (six ints); cls = number of the\n"
"cumulative class edges (edge0 <= edge1) at or below the intensity uniform, basis = 1 (X) when the basis\n"
"uniform >= basis_bias, bit = top bit of the bit stream's word. slots int64 (non-negative), outputs uint8.");

static PyObject *py_prep_choices(PyObject *self, PyObject *args)
{
    unsigned long long k[6];
    double e0, e1, bias;
    PyObject *os, *o1, *o2, *o3;
    if (!PyArg_ParseTuple(args, "(KKKKKK)dddOOOO", &k[0], &k[1], &k[2], &k[3], &k[4], &k[5], &e0, &e1, &bias, &os,
                          &o1, &o2, &o3))
        return NULL;
    Py_buffer bs, b1, b2, b3;
    if (get_buf(os, &bs, 0, 8, "slots") < 0) return NULL;
    if (get_buf(o1, &b1, 1, 1, "cls") < 0) { PyBuffer_Release(&bs); return NULL; }
    if (get_buf(o2, &b2, 1, 1, "basis") < 0) { PyBuffer_Release(&bs); PyBuffer_Release(&b1); return NULL; }
    if (get_buf(o3, &b3, 1, 1, "bit") < 0) {
        PyBuffer_Release(&bs); PyBuffer_Release(&b1); PyBuffer_Release(&b2);
        return NULL;
    }
    Py_ssize_t n = bs.len / 8;
    if (b1.len != n || b2.len != n || b3.len != n) {
        PyErr_SetString(PyExc_ValueError, "prep_choices: outputs must have the slots' length");
    } else {
        const uint64_t *s = (const uint64_t *)bs.buf;
        uint8_t *cls = (uint8_t *)b1.buf, *basis = (uint8_t *)b2.buf, *bit = (uint8_t *)b3.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            const uint64_t c = s[i];
            const double ui = unit(u64(k[0], k[1], c)), ub = unit(u64(k[2], k[3], c));
            cls[i] = (uint8_t)((ui >= e0) + (ui >= e1));
            basis[i] = (uint8_t)(ub >= bias);
            bit[i] = (uint8_t)(u64(k[4], k[5], c) >> 63);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&bs);
    PyBuffer_Release(&b1);
    PyBuffer_Release(&b2);
    PyBuffer_Release(&b3);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"random_u64", py_random_u64, METH_VARARGS, random_u64_doc},
    {"prep_choices", py_prep_choices, METH_VARARGS, prep_choices_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_prng", "Counter-based splitmix64 streams (C path of qkdflow.prng).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__prng(void) { return PyModule_Create(&moduledef); }
