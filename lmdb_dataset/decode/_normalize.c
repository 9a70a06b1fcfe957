/* Normalising a uint8 batch in one pass (optional extension; without it NormalizeBatch uses torch ops).
 *
 * normalize(src, dst, scale, shift, images, channels, plane, kind, channels_last) writes
 * dst = src * scale[c] + shift[c] for a uint8 NCHW batch `src` (images x channels x plane bytes, C order)
 * into `dst` (the same number of elements of `kind`: 0 float32, 1 bfloat16), NCHW or, with
 * channels_last, NHWC. Each value is computed as torch computes `dst.copy_(src).mul_(scale).add_(shift)` in
 * float32 (a product, then a sum, each rounded: the build turns off fused multiply-adds), then rounded to
 * nearest even into bfloat16 as torch's conversion does, so the outputs are bit-identical.
 *
 * One pass over the batch, on the calling thread, with the GIL released: no torch intra-op thread pool,
 * whose threads wait for cores that DataLoader workers keep busy, and no float32 batch written and read
 * three times.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_CHANNELS 16

static inline uint16_t bfloat16_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fc0; /* NaN, as torch writes it */
    }
    return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static PyObject *normalize(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    PyObject *scale_seq, *shift_seq;
    Py_ssize_t images, channels, plane;
    int kind, channels_last;
    if (!PyArg_ParseTuple(args, "y*w*OOnnnip:normalize", &src, &dst, &scale_seq, &shift_seq, &images, &channels,
                          &plane, &kind, &channels_last)) {
        return NULL;
    }
    float scale[MAX_CHANNELS], shift[MAX_CHANNELS];
    const char *problem = NULL;
    const Py_ssize_t count = images * channels * plane, size = kind == 0 ? 4 : 2;
    if (kind < 0 || kind > 1 || images < 0 || plane < 0 || channels < 1 || channels > MAX_CHANNELS) {
        problem = "kind must be 0 or 1 and channels in [1, 16]";
    } else if (src.len != count || dst.len != count * size) {
        problem = "src must hold images x channels x plane bytes and dst as many elements of the kind";
    } else if (PySequence_Size(scale_seq) != channels || PySequence_Size(shift_seq) != channels) {
        problem = "scale and shift need one value per channel";
    }
    for (Py_ssize_t c = 0; problem == NULL && c < channels; c++) {
        PyObject *a = PySequence_GetItem(scale_seq, c), *b = PySequence_GetItem(shift_seq, c);
        scale[c] = a ? (float)PyFloat_AsDouble(a) : 0.0f;
        shift[c] = b ? (float)PyFloat_AsDouble(b) : 0.0f;
        Py_XDECREF(a);
        Py_XDECREF(b);
        if (PyErr_Occurred()) {
            PyBuffer_Release(&src);
            PyBuffer_Release(&dst);
            return NULL;
        }
    }
    if (problem != NULL) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    const uint8_t *in = (const uint8_t *)src.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < images; i++) {
        for (Py_ssize_t c = 0; c < channels; c++) {
            const uint8_t *from = in + (i * channels + c) * plane;
            const float s = scale[c], b = shift[c];
            /* element p of this plane goes to dst[first + p * step] */
            const Py_ssize_t first = channels_last ? i * plane * channels + c : (i * channels + c) * plane;
            const Py_ssize_t step = channels_last ? channels : 1;
            if (kind == 0) {
                float *to = (float *)dst.buf + first;
                if (step == 1) {
                    for (Py_ssize_t p = 0; p < plane; p++) {
                        float product = (float)from[p] * s;
                        to[p] = product + b;
                    }
                } else {
                    for (Py_ssize_t p = 0; p < plane; p++) {
                        float product = (float)from[p] * s;
                        to[p * step] = product + b;
                    }
                }
            } else {
                uint16_t *to = (uint16_t *)dst.buf + first;
                for (Py_ssize_t p = 0; p < plane; p++) {
                    float product = (float)from[p] * s;
                    float value = product + b;
                    to[p * step] = bfloat16_bits(value);
                }
            }
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"normalize", normalize, METH_VARARGS,
     "normalize(src, dst, scale, shift, images, channels, plane, kind, channels_last): dst = src * scale + shift."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_normalize",
                                    "Normalising a uint8 batch in one pass.", -1, methods};

PyMODINIT_FUNC PyInit__normalize(void) { return PyModule_Create(&module); }
