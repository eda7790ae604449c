/* The XTS tweak mask, compiled: dst = src ^ T for every AES block of a run of data units.
 *
 * Why: in numpy, deriving T_j = T_0 * alpha^j block by block takes a dozen passes
 * over each MiB and was ~85% of prep's encryption time (0.6 GB/s a core); here it is
 * one pass of shifts and XORs, with the GIL let go.  AES itself stays in OpenSSL
 * (ECB through `cryptography`); pipeline/volume/xts.py falls back to numpy when this module
 * was not built (no compiler), and the tests hold both paths to the same answers.
 *
 * plain64(iv, step, count): the IVs of `count` data units, to encrypt into those tweaks.
 *
 * xor_tweaks(src, dst, first, unit_blocks): `first` holds, per data unit, its initial
 * tweak E_K2(IV) (16 bytes); unit u's block j in `src` is XORed with
 * first[u] * alpha^j (GF(2^128), XTS's little-endian convention) into `dst`.
 * `src` and `dst` hold len(first) / 16 * unit_blocks blocks; they may be the same
 * buffer, but must not otherwise overlap.
 *
 * xor_tweaks_keep(src, dst, first, unit_blocks, kept): the same, and each tweak stored
 * in `kept` (as long as `src`; no overlap with either), so that the XOR after AES
 * (xor_into) reuses it instead of deriving the chain a second time.
 *
 * xor_into(dst, src): dst ^= src, two buffers of one length that do not overlap.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "little-endian hosts only: pipeline.volume.xts uses numpy elsewhere"
#endif

/* times alpha: shift the 128-bit value left by one; a bit shifted out of the top folds
 * back in as x^7 + x^2 + x + 1 (0x87) */
#define TIMES_ALPHA(lo, hi) do { \
        uint64_t fold_ = (uint64_t)(-(int64_t)((hi) >> 63)) & 0x87; \
        (hi) = ((hi) << 1) | ((lo) >> 63); \
        (lo) = ((lo) << 1) ^ fold_; \
    } while (0)

static inline void xor_block(const unsigned char *src, unsigned char *dst, uint64_t lo,
                             uint64_t hi)
{
    uint64_t a, b;
    memcpy(&a, src, 8);
    memcpy(&b, src + 8, 8);
    a ^= lo;
    b ^= hi;
    memcpy(dst, &a, 8);
    memcpy(dst + 8, &b, 8);
}

/* xor_block, and the tweak stored at `kept` (NULL: not kept; a constant per call site,
 * so the compiler drops the test from each specialised loop) */
static inline void xor_block_keep(const unsigned char *src, unsigned char *dst,
                                  unsigned char *kept, uint64_t lo, uint64_t hi)
{
    xor_block(src, dst, lo, hi);
    if (kept != NULL) {
        memcpy(kept, &lo, 8);
        memcpy(kept + 8, &hi, 8);
    }
}

/* Four units at a time: each unit's tweaks are a serial chain of shifts, so the chains
 * of four independent units are interleaved to keep the CPU's pipelines full. */
#define WAYS 4

static inline __attribute__((always_inline)) void
xor_units_keep(const unsigned char *src, unsigned char *dst, const unsigned char *first,
               Py_ssize_t units, Py_ssize_t unit_blocks, unsigned char *kept)
{
    Py_ssize_t unit_bytes = 16 * unit_blocks;
    Py_ssize_t u = 0;
    for (; u + WAYS <= units; u += WAYS) {
        uint64_t lo[WAYS], hi[WAYS];
        for (int w = 0; w < WAYS; w++) {
            memcpy(&lo[w], first + 16 * (u + w), 8);
            memcpy(&hi[w], first + 16 * (u + w) + 8, 8);
        }
        const unsigned char *s = src + u * unit_bytes;
        unsigned char *d = dst + u * unit_bytes;
        unsigned char *k = kept == NULL ? NULL : kept + u * unit_bytes;
        for (Py_ssize_t off = 0; off < unit_bytes; off += 16) {
            for (int w = 0; w < WAYS; w++) {
                xor_block_keep(s + w * unit_bytes + off, d + w * unit_bytes + off,
                               k == NULL ? NULL : k + w * unit_bytes + off, lo[w], hi[w]);
                TIMES_ALPHA(lo[w], hi[w]);
            }
        }
    }
    for (; u < units; u++) {
        uint64_t lo, hi;
        memcpy(&lo, first + 16 * u, 8);
        memcpy(&hi, first + 16 * u + 8, 8);
        for (Py_ssize_t off = 0; off < unit_bytes; off += 16) {
            xor_block_keep(src + u * unit_bytes + off, dst + u * unit_bytes + off,
                           kept == NULL ? NULL : kept + u * unit_bytes + off, lo, hi);
            TIMES_ALPHA(lo, hi);
        }
    }
}

static void xor_units(const unsigned char *src, unsigned char *dst, const unsigned char *first,
                      Py_ssize_t units, Py_ssize_t unit_blocks)
{
    xor_units_keep(src, dst, first, units, unit_blocks, NULL);
}

static void xor_units_kept(const unsigned char *src, unsigned char *dst,
                           const unsigned char *first, Py_ssize_t units, Py_ssize_t unit_blocks,
                           unsigned char *kept)
{
    xor_units_keep(src, dst, first, units, unit_blocks, kept);
}

/* do the two buffers share a byte? */
static int overlap(const Py_buffer *a, const Py_buffer *b)
{
    const char *x = a->buf, *y = b->buf;
    return a->len > 0 && b->len > 0 && x < y + b->len && y < x + a->len;
}

/* xor_tweaks and xor_tweaks_keep: `kept` NULL for the first */
static PyObject *tweaks_call(PyObject *args, int keep)
{
    Py_buffer src, dst, first, kept = {0};
    Py_ssize_t unit_blocks;
    if (keep ? !PyArg_ParseTuple(args, "y*w*y*nw*", &src, &dst, &first, &unit_blocks, &kept)
             : !PyArg_ParseTuple(args, "y*w*y*n", &src, &dst, &first, &unit_blocks))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t units = first.len / 16;
    if (unit_blocks <= 0 || first.len % 16 != 0 || units > PY_SSIZE_T_MAX / 16 / unit_blocks
        || src.len != units * unit_blocks * 16 || dst.len != src.len
        || (keep && kept.len != src.len)) {
        PyErr_Format(PyExc_ValueError,
                     "xor_tweaks: %zd bytes in, %zd out, %zd of tweaks, %zd blocks a unit "
                     "do not fit together", src.len, dst.len, first.len, unit_blocks);
        goto done;
    }
    if (keep && (overlap(&kept, &src) || overlap(&kept, &dst) || overlap(&kept, &first))) {
        PyErr_SetString(PyExc_ValueError, "xor_tweaks_keep: kept overlaps another buffer");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (keep)
        xor_units_kept(src.buf, dst.buf, first.buf, units, unit_blocks, kept.buf);
    else
        xor_units(src.buf, dst.buf, first.buf, units, unit_blocks);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&first);
    if (keep)
        PyBuffer_Release(&kept);
    return result;
}

static PyObject *xor_tweaks(PyObject *self, PyObject *args)
{
    (void)self;
    return tweaks_call(args, 0);
}

static PyObject *xor_tweaks_keep(PyObject *self, PyObject *args)
{
    (void)self;
    return tweaks_call(args, 1);
}

static PyObject *xor_into(PyObject *self, PyObject *args)
{
    Py_buffer dst, src;
    (void)self;
    if (!PyArg_ParseTuple(args, "w*y*", &dst, &src))
        return NULL;
    PyObject *result = NULL;
    if (dst.len != src.len || overlap(&dst, &src)) {
        PyErr_Format(PyExc_ValueError, "xor_into: %zd bytes and %zd bytes, or overlapping",
                     dst.len, src.len);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    unsigned char *d = dst.buf;
    const unsigned char *s = src.buf;
    Py_ssize_t i = 0;
    for (; i + 8 <= dst.len; i += 8) {
        uint64_t a, b;
        memcpy(&a, d + i, 8);
        memcpy(&b, s + i, 8);
        a ^= b;
        memcpy(d + i, &a, 8);
    }
    for (; i < dst.len; i++)
        d[i] ^= s[i];
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return result;
}

/* plain64(iv, step, count): `count` dm-crypt plain64 IVs, iv + k * step modulo 2**64,
 * each as 8 little-endian bytes and 8 zero bytes: the inputs of the initial tweaks. */
static PyObject *plain64(PyObject *self, PyObject *args)
{
    unsigned long long iv, step;
    Py_ssize_t count;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKn", &iv, &step, &count))
        return NULL;
    if (count < 0 || count > PY_SSIZE_T_MAX / 16) {
        PyErr_SetString(PyExc_ValueError, "plain64: count out of range");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, 16 * count);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    uint64_t v = iv, zero = 0;
    for (Py_ssize_t k = 0; k < count; k++, v += step) {
        memcpy(p + 16 * k, &v, 8);
        memcpy(p + 16 * k + 8, &zero, 8);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"plain64", plain64, METH_VARARGS,
     "plain64(iv, step, count): count 16-byte plain64 IVs from iv, step apart (mod 2**64)."},
    {"xor_tweaks", xor_tweaks, METH_VARARGS,
     "xor_tweaks(src, dst, first, unit_blocks): dst = src ^ first[u] * alpha^j per block."},
    {"xor_tweaks_keep", xor_tweaks_keep, METH_VARARGS,
     "xor_tweaks_keep(src, dst, first, unit_blocks, kept): xor_tweaks, each tweak kept."},
    {"xor_into", xor_into, METH_VARARGS, "xor_into(dst, src): dst ^= src."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pipeline.volume._xtsmask",
    "AES-XTS tweak masks over runs of data units (see pipeline/volume/xts.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__xtsmask(void)
{
    return PyModule_Create(&module);
}
