/* Region decoding of colour JPEGs with libjpeg-turbo's libjpeg API (optional extension).
 *
 * decode_region(data, eighths, top, bottom, left, right) decodes the JPEG at scale eighths/8
 * (libjpeg-turbo's DCT scaling) and returns only rows [top, bottom) of the scaled image, and the
 * columns [left, right) widened by jpeg_crop_scanline to whole iMCUs:
 *
 *     (pixels: bytearray of rows x columns x 3 RGB, rows, columns, first column)
 *
 * Rows above `top` are skipped with jpeg_skip_scanlines (entropy-decoded only: no IDCT, no
 * upsampling, no colour conversion); rows below `bottom` are never read; columns outside the
 * widened span get no IDCT or colour conversion. This is what DALI's CPU decoder does
 * (decoders.image_random_crop). Settings equal simplejpeg's defaults (and Pillow's): accurate
 * integer DCT, fancy upsampling, RGB output. The GIL is released while libjpeg works.
 *
 * Any libjpeg error or warning (corrupt data) raises ValueError: the caller then decodes the
 * record as it did without this module. Only YCbCr JPEGs are accepted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} region_error;

static void on_error(j_common_ptr cinfo) {
    region_error *err = (region_error *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) { /* a warning: corrupt data that libjpeg would paper over; strict, as simplejpeg */
        on_error(cinfo);
    }
}

static PyObject *decode_region(PyObject *self, PyObject *args) {
    Py_buffer data;
    int eighths, top, bottom, left, right;
    if (!PyArg_ParseTuple(args, "y*iiiii:decode_region", &data, &eighths, &top, &bottom, &left, &right)) {
        return NULL;
    }
    if (eighths < 1 || eighths > 8 || top < 0 || left < 0 || bottom <= top || right <= left) {
        PyBuffer_Release(&data);
        return PyErr_Format(PyExc_ValueError, "bad region: eighths=%d rows [%d, %d) columns [%d, %d)", eighths,
                            top, bottom, left, right);
    }
    struct jpeg_decompress_struct cinfo;
    region_error err;
    PyObject *volatile out = NULL;
    const char *volatile failure = NULL;
    JSAMPROW *volatile rows_ptr = NULL;
    JDIMENSION xoffset = 0, width = 0;
    PyThreadState *volatile state = PyEval_SaveThread();

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    err.message[0] = '\0';
    jpeg_create_decompress(&cinfo);
    if (setjmp(err.jump)) {
        failure = err.message;
        goto done;
    }
    jpeg_mem_src(&cinfo, (const unsigned char *)data.buf, (unsigned long)data.len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space != JCS_YCbCr || cinfo.num_components != 3) {
        failure = "not a YCbCr JPEG";
        goto done;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.scale_num = (unsigned int)eighths;
    cinfo.scale_denom = 8;
    jpeg_start_decompress(&cinfo);
    if ((JDIMENSION)bottom > cinfo.output_height || (JDIMENSION)right > cinfo.output_width) {
        failure = "region outside the scaled image";
        goto done;
    }
    xoffset = (JDIMENSION)left;
    width = (JDIMENSION)(right - left);
    if (width < cinfo.output_width) {
        jpeg_crop_scanline(&cinfo, &xoffset, &width);
    }
    if (top > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)top) != (JDIMENSION)top) {
        failure = "could not skip to the region's first row";
        goto done;
    }
    {
        const int rows = bottom - top;
        const size_t stride = (size_t)cinfo.output_width * 3;  /* output_width is the cropped width now */
        PyEval_RestoreThread(state);
        state = NULL;
        out = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)(stride * (size_t)rows));
        rows_ptr = out == NULL ? NULL : PyMem_RawMalloc(sizeof(JSAMPROW) * (size_t)rows);
        if (rows_ptr == NULL) {
            if (out != NULL) {
                PyErr_NoMemory();
            }
            goto done;
        }
        unsigned char *base = (unsigned char *)PyByteArray_AS_STRING(out);
        for (int i = 0; i < rows; i++) {
            rows_ptr[i] = base + stride * (size_t)i;
        }
        state = PyEval_SaveThread();
        while (cinfo.output_scanline < (JDIMENSION)bottom) {
            JDIMENSION done_rows = cinfo.output_scanline - (JDIMENSION)top;
            jpeg_read_scanlines(&cinfo, rows_ptr + done_rows, (JDIMENSION)rows - done_rows);
        }
    }
done:
    width = cinfo.output_width;
    jpeg_destroy_decompress(&cinfo);
    if (state != NULL) {
        PyEval_RestoreThread(state);
    }
    PyMem_RawFree(rows_ptr);
    PyBuffer_Release(&data);
    if (failure != NULL || out == NULL) {
        Py_XDECREF(out);
        if (failure != NULL) {
            PyErr_SetString(PyExc_ValueError, failure);
        }
        return NULL;
    }
    return Py_BuildValue("(NiiI)", out, bottom - top, (int)width, xoffset);
}

static PyMethodDef methods[] = {
    {"decode_region", decode_region, METH_VARARGS,
     "decode_region(data, eighths, top, bottom, left, right) -> (RGB bytearray, rows, columns, first column)\n\n"
     "Rows [top, bottom) and at least the columns [left, right) of the JPEG decoded at scale eighths/8."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_region",
                                    "Region decoding of colour JPEGs with libjpeg-turbo (see decode_region).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__jpeg_region(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "LIBJPEG_TURBO_VERSION_NUMBER", LIBJPEG_TURBO_VERSION_NUMBER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
