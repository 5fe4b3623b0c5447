/*
 * collectors._fastjson: audit records (NDJSON, wire format 1) -> Arrow column buffers.
 *
 * Why: parsing and checking each event in Python costs ~5-10 us; the collector's
 * target is >= 200k events/s on one process. This parser reads a whole record
 * without the GIL and writes Arrow layouts (validity bitmaps, int32 offsets, data)
 * that pyarrow wraps without copying.
 *
 * Contract: it is an *accepting filter*. decode() returns the columns only when
 * every line of the record is an event that tracer.events.validate_event accepts
 * with exactly these values; on anything it does not handle (an escaped key, a
 * duplicate key, a float, a lone surrogate, a blank line inside the record, ...)
 * it returns None and the caller runs the strict Python decoder, which names the
 * error. So it may refuse more than the contract, never accept more.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* column kinds */
enum { K_STR, K_STAGE, K_UUID, K_HEX32, K_HEX16, K_U64, K_U32, K_I32, K_I64, K_ATTRS };

typedef struct {
    const char *name;
    int kind;
    int nullable;
} ColumnSpec;

/* tracer.events.COLUMNS, in order (checked by collectors/fastdecode.py at import) */
static const ColumnSpec COLS[] = {
    {"event_id", K_UUID, 0},      {"msg_id", K_STR, 0},       {"stage", K_STAGE, 0},
    {"ts_us", K_U64, 0},          {"service", K_STR, 0},      {"host", K_STR, 0},
    {"mq", K_STR, 0},             {"pid", K_U32, 0},          {"topic", K_STR, 0},
    {"partition", K_I32, 1},      {"offset", K_I64, 1},       {"consumer_group", K_STR, 1},
    {"key", K_STR, 1},            {"error", K_STR, 1},        {"trace_id", K_HEX32, 1},
    {"span_id", K_HEX16, 1},      {"emitter_id", K_STR, 0},   {"seq", K_U64, 0},
    {"attrs", K_ATTRS, 0},
};
#define NCOLS ((int)(sizeof(COLS) / sizeof(COLS[0])))
#define ALL_SEEN ((1u << NCOLS) - 1u)
#define MAX_ATTRS 64 /* more attributes per event: refused (duplicate check is quadratic) */

static const char *STAGES[] = {"sent", "send_failed", "broker_acked", "received", "offset_committed",
                               "business_done", "business_failed", "dead_lettered", "rolled_back"};
#define NSTAGES 9

/* ---- growable buffers ------------------------------------------------------------ */
typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int buf_put_i32(Buf *b, int32_t v) { return buf_put(b, &v, 4); }

/* one column: data (strings: bytes, ints: values), offsets (strings), validity (nullable) */
typedef struct {
    Buf data, offsets, valid;
    Py_ssize_t nulls;
    /* attrs: offsets = list offsets; keys/vals string children */
    Buf kdata, koffsets, vdata, voffsets;
    int32_t nattrs;
} Column;

typedef struct {
    Column c[NCOLS];
    Py_ssize_t n; /* events */
} Builder;

static void builder_free(Builder *b) {
    for (int i = 0; i < NCOLS; i++) {
        Column *c = &b->c[i];
        free(c->data.p); free(c->offsets.p); free(c->valid.p);
        free(c->kdata.p); free(c->koffsets.p); free(c->vdata.p); free(c->voffsets.p);
    }
}

static int builder_init(Builder *b) {
    memset(b, 0, sizeof(*b));
    for (int i = 0; i < NCOLS; i++) {
        int k = COLS[i].kind;
        if (k == K_STR || k == K_STAGE || k == K_UUID || k == K_HEX32 || k == K_HEX16 || k == K_ATTRS) {
            if (buf_put_i32(&b->c[i].offsets, 0)) return -1;
        }
        if (k == K_ATTRS) {
            if (buf_put_i32(&b->c[i].koffsets, 0) || buf_put_i32(&b->c[i].voffsets, 0)) return -1;
        }
    }
    return 0;
}

static int set_valid(Column *c, Py_ssize_t i, int valid) {
    size_t need = (size_t)(i / 8) + 1;
    if (c->valid.len < need) {
        if (buf_reserve(&c->valid, need - c->valid.len)) return -1;
        memset(c->valid.p + c->valid.len, 0, need - c->valid.len);
        c->valid.len = need;
    }
    if (valid) c->valid.p[i / 8] |= (char)(1u << (i % 8));
    else c->nulls++;
    return 0;
}

/* ---- the parser -------------------------------------------------------------------- */
typedef struct {
    const unsigned char *p, *end;
} Cur;

#define FAIL (-1) /* refuse: the strict decoder decides */
#define OOM (-2)

static inline void skip_ws(Cur *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r')) s->p++;
}

static inline int hexval(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int read_hex4(Cur *s, unsigned *out) {
    if (s->end - s->p < 4) return FAIL;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(s->p[i]);
        if (h < 0) return FAIL;
        v = (v << 4) | (unsigned)h;
    }
    s->p += 4;
    *out = v;
    return 0;
}

/* Length of a valid UTF-8 sequence at p (RFC 3629: no overlongs, no surrogates,
 * <= U+10FFFF), or 0. */
static inline int utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0;  /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

static int put_utf8(Buf *b, unsigned cp) {
    unsigned char t[4];
    size_t n;
    if (cp < 0x80) { t[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { t[0] = 0xC0 | (cp >> 6); t[1] = 0x80 | (cp & 0x3F); n = 2; }
    else if (cp < 0x10000) {
        t[0] = 0xE0 | (cp >> 12); t[1] = 0x80 | ((cp >> 6) & 0x3F); t[2] = 0x80 | (cp & 0x3F); n = 3;
    } else {
        t[0] = 0xF0 | (cp >> 18); t[1] = 0x80 | ((cp >> 12) & 0x3F);
        t[2] = 0x80 | ((cp >> 6) & 0x3F); t[3] = 0x80 | (cp & 0x3F); n = 4;
    }
    return buf_put(b, t, n) ? OOM : 0;
}

/* A JSON string (s->p at the opening quote), its decoded UTF-8 appended to out. */
static int read_string(Cur *s, Buf *out) {
    if (s->p >= s->end || *s->p != '"') return FAIL;
    s->p++;
    for (;;) {
        const unsigned char *run = s->p;
        while (s->p < s->end) {
            unsigned char ch = *s->p;
            if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x80) break;
            s->p++;
        }
        if (s->p > run && buf_put(out, run, (size_t)(s->p - run))) return OOM;
        if (s->p >= s->end) return FAIL;
        unsigned char ch = *s->p;
        if (ch == '"') {
            s->p++;
            return 0;
        }
        if (ch < 0x20) return FAIL; /* raw control character: invalid JSON */
        if (ch >= 0x80) {
            int n = utf8_len(s->p, s->end);
            if (!n) return FAIL;
            if (buf_put(out, s->p, (size_t)n)) return OOM;
            s->p += n;
            continue;
        }
        /* backslash */
        s->p++;
        if (s->p >= s->end) return FAIL;
        unsigned char e = *s->p++;
        char c;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            unsigned cp;
            if (read_hex4(s, &cp)) return FAIL;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u') return FAIL;
                s->p += 2;
                if (read_hex4(s, &lo) || lo < 0xDC00 || lo > 0xDFFF) return FAIL;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return FAIL; /* lone low surrogate */
            }
            int r = put_utf8(out, cp);
            if (r) return r;
            continue;
        }
        default: return FAIL;
        }
        if (buf_put(out, &c, 1)) return OOM;
    }
}

static inline int is_null(Cur *s) {
    if (s->end - s->p >= 4 && memcmp(s->p, "null", 4) == 0) {
        s->p += 4;
        return 1;
    }
    return 0;
}

/* A JSON integer (no fraction, no exponent) within [lo, hi]; written as `width` bytes. */
static int read_int(Cur *s, int neg_ok, uint64_t max_pos, uint64_t max_neg, int64_t *sv, uint64_t *uv, int *neg) {
    int negative = 0;
    if (s->p < s->end && *s->p == '-') {
        negative = 1;
        s->p++;
    }
    if (s->p >= s->end || *s->p < '0' || *s->p > '9') return FAIL;
    uint64_t v = 0;
    if (*s->p == '0') {
        s->p++;
        if (s->p < s->end && *s->p >= '0' && *s->p <= '9') return FAIL; /* leading zero */
    } else {
        while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
            unsigned d = (unsigned)(*s->p - '0');
            if (v > (UINT64_MAX - d) / 10) return FAIL; /* beyond u64 */
            v = v * 10 + d;
            s->p++;
        }
    }
    if (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E')) return FAIL; /* a float */
    if (negative && v != 0) {
        if (!neg_ok || v > max_neg) return FAIL;
        *neg = 1;
        *sv = -(int64_t)(v - 1) - 1;
        return 0;
    }
    if (v > max_pos) return FAIL;
    *neg = 0;
    *uv = v;
    *sv = (int64_t)v;
    return 0;
}

static size_t NAME_LEN[32];

/* Column index of a key; `guess` first (the emitter writes the fields in column order). */
static inline int key_index(const unsigned char *k, size_t n, int guess) {
    if (guess < NCOLS && NAME_LEN[guess] == n && memcmp(COLS[guess].name, k, n) == 0) return guess;
    for (int i = 0; i < NCOLS; i++) {
        if (NAME_LEN[i] == n && memcmp(COLS[i].name, k, n) == 0) return i;
    }
    return -1;
}

static int check_pattern(const char *p, size_t n, int kind) {
    if (kind == K_UUID) {
        if (n != 36) return FAIL;
        for (size_t i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23) {
                if (p[i] != '-') return FAIL;
            } else if (hexval((unsigned char)p[i]) < 0) {
                return FAIL;
            }
        }
        return 0;
    }
    size_t want = kind == K_HEX32 ? 32 : 16;
    if (n != want) return FAIL;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return FAIL;
    }
    return 0;
}

static int read_attrs(Cur *s, Column *c) {
    if (s->p >= s->end || *s->p != '{') return FAIL;
    s->p++;
    skip_ws(s);
    int32_t k = 0;
    size_t kstart[MAX_ATTRS + 1], klen[MAX_ATTRS + 1];
    if (s->p < s->end && *s->p == '}') {
        s->p++;
    } else {
        for (;;) {
            if (k >= MAX_ATTRS) return FAIL;
            size_t before = c->kdata.len;
            int r = read_string(s, &c->kdata);
            if (r) return r;
            kstart[k] = before;
            klen[k] = c->kdata.len - before;
            for (int32_t j = 0; j < k; j++) { /* duplicate key: refused (JSON keeps the last) */
                if (klen[j] == klen[k] &&
                    (klen[k] == 0 || memcmp(c->kdata.p + kstart[j], c->kdata.p + kstart[k], klen[k]) == 0))
                    return FAIL;
            }
            if (buf_put_i32(&c->koffsets, (int32_t)c->kdata.len)) return OOM;
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':') return FAIL;
            s->p++;
            skip_ws(s);
            r = read_string(s, &c->vdata); /* values must be strings (null, numbers: refused) */
            if (r) return r;
            if (buf_put_i32(&c->voffsets, (int32_t)c->vdata.len)) return OOM;
            k++;
            skip_ws(s);
            if (s->p < s->end && *s->p == ',') {
                s->p++;
                skip_ws(s);
                continue;
            }
            if (s->p < s->end && *s->p == '}') {
                s->p++;
                break;
            }
            return FAIL;
        }
    }
    c->nattrs += k;
    return buf_put_i32(&c->offsets, c->nattrs) ? OOM : 0;
}

static int read_value(Cur *s, Builder *b, int col) {
    Column *c = &b->c[col];
    const ColumnSpec *spec = &COLS[col];
    Py_ssize_t row = b->n;
    if (spec->nullable && is_null(s)) {
        if (set_valid(c, row, 0)) return OOM;
        switch (spec->kind) {
        case K_I32: { int32_t z = 0; return buf_put(&c->data, &z, 4) ? OOM : 0; }
        case K_I64: { int64_t z = 0; return buf_put(&c->data, &z, 8) ? OOM : 0; }
        default: return buf_put_i32(&c->offsets, (int32_t)c->data.len) ? OOM : 0;
        }
    }
    if (spec->nullable && set_valid(c, row, 1)) return OOM;
    int64_t sv = 0;
    uint64_t uv = 0;
    int neg = 0, r;
    switch (spec->kind) {
    case K_STR: case K_STAGE: case K_UUID: case K_HEX32: case K_HEX16: {
        size_t before = c->data.len;
        r = read_string(s, &c->data);
        if (r) return r;
        const char *v = c->data.p + before;
        size_t n = c->data.len - before;
        if (spec->kind == K_STAGE) {
            int ok = 0;
            for (int i = 0; i < NSTAGES && !ok; i++)
                ok = strlen(STAGES[i]) == n && memcmp(STAGES[i], v, n) == 0;
            if (!ok) return FAIL;
        } else if (spec->kind != K_STR) {
            if (check_pattern(v, n, spec->kind)) return FAIL;
        } else if (col == 1 && n == 0) {
            return FAIL; /* msg_id must not be empty */
        }
        return buf_put_i32(&c->offsets, (int32_t)c->data.len) ? OOM : 0;
    }
    case K_U64:
        r = read_int(s, 0, UINT64_MAX, 0, &sv, &uv, &neg);
        if (r) return r;
        return buf_put(&c->data, &uv, 8) ? OOM : 0;
    case K_U32: {
        r = read_int(s, 0, UINT32_MAX, 0, &sv, &uv, &neg);
        if (r) return r;
        uint32_t v = (uint32_t)uv;
        return buf_put(&c->data, &v, 4) ? OOM : 0;
    }
    case K_I32: {
        r = read_int(s, 1, INT32_MAX, (uint64_t)INT32_MAX + 1, &sv, &uv, &neg);
        if (r) return r;
        int32_t v = (int32_t)sv;
        return buf_put(&c->data, &v, 4) ? OOM : 0;
    }
    case K_I64:
        r = read_int(s, 1, INT64_MAX, (uint64_t)INT64_MAX + 1, &sv, &uv, &neg);
        if (r) return r;
        return buf_put(&c->data, &sv, 8) ? OOM : 0;
    case K_ATTRS:
        return read_attrs(s, c);
    }
    return FAIL;
}

/* One non-blank line: exactly one event object, optional JSON whitespace around it. */
static int read_event(Cur *s, Builder *b) {
    skip_ws(s);
    if (s->p >= s->end || *s->p != '{') return FAIL;
    s->p++;
    uint32_t seen = 0;
    int col = -1;
    for (;;) {
        skip_ws(s);
        if (s->p >= s->end || *s->p != '"') return FAIL;
        const unsigned char *k = ++s->p;
        while (s->p < s->end && *s->p != '"' && *s->p != '\\') s->p++;
        if (s->p >= s->end || *s->p != '"') return FAIL; /* escaped keys: refused */
        col = key_index(k, (size_t)(s->p - k), col + 1);
        s->p++;
        if (col < 0 || (seen & (1u << col))) return FAIL; /* unknown or duplicate field */
        seen |= 1u << col;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':') return FAIL;
        s->p++;
        skip_ws(s);
        int r = read_value(s, b, col);
        if (r) return r;
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == '}') {
            s->p++;
            break;
        }
        return FAIL;
    }
    skip_ws(s);
    if (s->p != s->end || seen != ALL_SEEN) return FAIL;
    b->n++;
    return 0;
}

static int is_blank(const unsigned char *p, const unsigned char *end) {
    /* what bytes.strip() removes: a line of only these is skipped by decode_batch */
    for (; p < end; p++)
        if (!(*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '\x0b' || *p == '\x0c')) return 0;
    return 1;
}

static int parse_record(const unsigned char *raw, size_t len, Builder *b) {
    const unsigned char *p = raw, *end = raw + len;
    while (p <= end) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        const unsigned char *le = nl ? nl : end;
        if (!is_blank(p, le)) {
            Cur s = {p, le};
            int r = read_event(&s, b);
            if (r) return r;
        }
        if (!nl) break;
        p = nl + 1;
    }
    return b->n ? 0 : FAIL;
}

/* ---- Python interface ------------------------------------------------------------ */
static PyObject *bytes_of(Buf *b) {
    return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len);
}

static PyObject *column_tuple(Column *c, int kind, int nullable) {
    PyObject *valid;
    if (nullable && c->nulls) {
        valid = bytes_of(&c->valid);
    } else {
        valid = Py_None;
        Py_INCREF(valid);
    }
    if (!valid) return NULL;
    if (kind == K_ATTRS)
        return Py_BuildValue("(NNNNNN)", valid, bytes_of(&c->offsets), bytes_of(&c->koffsets),
                             bytes_of(&c->kdata), bytes_of(&c->voffsets), bytes_of(&c->vdata));
    if (kind == K_U64 || kind == K_U32 || kind == K_I32 || kind == K_I64)
        return Py_BuildValue("(NN)", valid, bytes_of(&c->data));
    return Py_BuildValue("(NNN)", valid, bytes_of(&c->offsets), bytes_of(&c->data));
}

PyDoc_STRVAR(decode_doc,
"decode(raw: bytes) -> tuple[int, tuple] | None\n\n"
"Columns of an audit record whose every line is a valid event: (n, columns) with one tuple of\n"
"buffers per field (COLUMNS order): strings (validity|None, int32 offsets, data), integers\n"
"(validity|None, data), attrs (validity|None, list offsets, key offsets, key data, value offsets,\n"
"value data). None when the strict decoder must decide.");

static PyObject *fj_decode(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Builder b;
    int r;
    if (builder_init(&b)) {
        builder_free(&b);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    r = parse_record((const unsigned char *)view.buf, (size_t)view.len, &b);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (r == OOM) {
        builder_free(&b);
        return PyErr_NoMemory();
    }
    if (r) {
        builder_free(&b);
        Py_RETURN_NONE;
    }
    PyObject *cols = PyTuple_New(NCOLS);
    if (!cols) {
        builder_free(&b);
        return NULL;
    }
    for (int i = 0; i < NCOLS; i++) {
        PyObject *t = column_tuple(&b.c[i], COLS[i].kind, COLS[i].nullable);
        if (!t) {
            Py_DECREF(cols);
            builder_free(&b);
            return NULL;
        }
        PyTuple_SET_ITEM(cols, i, t);
    }
    Py_ssize_t n = b.n;
    builder_free(&b);
    return Py_BuildValue("(nN)", n, cols);
}

static PyObject *fj_columns(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *t = PyTuple_New(NCOLS);
    if (!t) return NULL;
    for (int i = 0; i < NCOLS; i++) {
        PyObject *s = PyUnicode_FromString(COLS[i].name);
        if (!s) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static PyMethodDef methods[] = {
    {"decode", fj_decode, METH_O, decode_doc},
    {"columns", fj_columns, METH_NOARGS, "The field names this build decodes, in order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastjson",
                                    "Audit records -> Arrow column buffers, without the GIL.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastjson(void) {
    for (int i = 0; i < NCOLS; i++) NAME_LEN[i] = strlen(COLS[i].name);
    return PyModule_Create(&module);
}
