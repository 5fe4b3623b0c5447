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

/* column kinds (the wire kinds of tracer.events.SCHEMA; integers carry their width and range) */
enum { K_STR, K_STAGE, K_UUID, K_HEX32, K_HEX16, K_INT, K_ATTRS };
static const char *KIND_NAMES[] = {"str", "stage", "uuid", "hex32", "hex16", "int", "attrs"};
#define NKINDS 7

typedef struct {
    char *name;
    size_t name_len;
    int kind;
    int nullable;
    int non_empty; /* strings: the empty string is refused */
    int width;     /* integers: 4 or 8 bytes */
    uint64_t max_pos, max_neg; /* integers: value range [-max_neg, max_pos] */
} ColumnSpec;

/* The contract is not written here: configure() receives it from tracer.events (columns in
 * order, kinds, nullability, integer widths and ranges, stage names) when collectors.decode is
 * imported, so Python is the only place a field or a stage is defined. */
#define MAX_COLS 32 /* `seen` is a 32-bit mask */
static ColumnSpec COLS[MAX_COLS];
static int NCOLS = 0;
static uint32_t ALL_SEEN = 0;
#define MAX_ATTRS 64 /* more attributes per event: refused (duplicate check is quadratic) */

static char **STAGES = NULL;
static size_t *STAGE_LEN = NULL;
static int NSTAGES = 0;

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
    Column c[MAX_COLS];
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
        if (k != K_INT) {
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

/* Column index of a key; `guess` first (the emitter writes the fields in column order). */
static inline int key_index(const unsigned char *k, size_t n, int guess) {
    if (guess < NCOLS && COLS[guess].name_len == n && memcmp(COLS[guess].name, k, n) == 0) return guess;
    for (int i = 0; i < NCOLS; i++) {
        if (COLS[i].name_len == n && memcmp(COLS[i].name, k, n) == 0) return i;
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
        if (spec->kind == K_INT) {
            int64_t z = 0;
            return buf_put(&c->data, &z, (size_t)spec->width) ? OOM : 0;
        }
        return buf_put_i32(&c->offsets, (int32_t)c->data.len) ? OOM : 0;
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
                ok = STAGE_LEN[i] == n && memcmp(STAGES[i], v, n) == 0;
            if (!ok) return FAIL;
        } else if (spec->kind != K_STR) {
            if (check_pattern(v, n, spec->kind)) return FAIL;
        } else if (spec->non_empty && n == 0) {
            return FAIL; /* e.g. msg_id must not be empty */
        }
        return buf_put_i32(&c->offsets, (int32_t)c->data.len) ? OOM : 0;
    }
    case K_INT: {
        r = read_int(s, spec->max_neg > 0, spec->max_pos, spec->max_neg, &sv, &uv, &neg);
        if (r) return r;
        if (spec->width == 8) return buf_put(&c->data, neg ? (const void *)&sv : (const void *)&uv, 8) ? OOM : 0;
        int32_t v32 = (int32_t)sv; /* 4 bytes: uint32 and int32 share the low bytes */
        uint32_t u32 = (uint32_t)uv;
        return buf_put(&c->data, neg ? (const void *)&v32 : (const void *)&u32, 4) ? OOM : 0;
    }
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
    if (kind == K_INT)
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
    if (!NCOLS) {
        PyErr_SetString(PyExc_RuntimeError, "_fastjson.configure() was not called");
        return NULL;
    }
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

/* The configuration as Python values (compared when configure() is called again). */
static PyObject *fj_contract(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *cols = PyTuple_New(NCOLS), *stages = PyTuple_New(NSTAGES);
    if (!cols || !stages) goto fail;
    for (int i = 0; i < NCOLS; i++) {
        ColumnSpec *c = &COLS[i];
        long long lo = c->max_neg ? (long long)(-(int64_t)(c->max_neg - 1) - 1) : 0;
        PyObject *t = Py_BuildValue("(ssNNiLK)", c->name, KIND_NAMES[c->kind], PyBool_FromLong(c->nullable),
                                    PyBool_FromLong(c->non_empty), c->width, lo,
                                    (unsigned long long)c->max_pos);
        if (!t) goto fail;
        PyTuple_SET_ITEM(cols, i, t);
    }
    for (int i = 0; i < NSTAGES; i++) {
        PyObject *st = PyUnicode_FromStringAndSize(STAGES[i], (Py_ssize_t)STAGE_LEN[i]);
        if (!st) goto fail;
        PyTuple_SET_ITEM(stages, i, st);
    }
    return Py_BuildValue("(NN)", cols, stages);
fail:
    Py_XDECREF(cols);
    Py_XDECREF(stages);
    return NULL;
}

PyDoc_STRVAR(configure_doc,
"configure(columns, stages) -> None\n\n"
"The event contract, from tracer.events (collectors.decode calls this at import, before any\n"
"decode): columns in wire order as (name, kind, nullable, non_empty, width, lo, hi) with kind one\n"
"of KINDS (integers: width 4 or 8 bytes and the range [lo, hi]), and the stage names. Set once:\n"
"a second call with a different contract raises ValueError (decode() reads it without the GIL).");

static PyObject *fj_configure(PyObject *self, PyObject *args) {
    PyObject *cols_arg, *stages_arg;
    if (!PyArg_ParseTuple(args, "OO", &cols_arg, &stages_arg)) return NULL;
    if (NCOLS) { /* already set: only the same contract again is accepted */
        PyObject *mine = fj_contract(self, NULL);
        if (!mine) return NULL;
        PyObject *cols_t = PySequence_Tuple(cols_arg), *stages_t = PySequence_Tuple(stages_arg);
        PyObject *theirs = (cols_t && stages_t) ? PyTuple_Pack(2, cols_t, stages_t) : NULL;
        Py_XDECREF(cols_t);
        Py_XDECREF(stages_t);
        int same = theirs ? PyObject_RichCompareBool(mine, theirs, Py_EQ) : -1;
        Py_DECREF(mine);
        Py_XDECREF(theirs);
        if (same < 0) return NULL;
        if (!same) {
            PyErr_SetString(PyExc_ValueError, "_fastjson is already configured with a different contract");
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *cols = PySequence_Fast(cols_arg, "columns must be a sequence");
    if (!cols) return NULL;
    PyObject *stages = PySequence_Fast(stages_arg, "stages must be a sequence");
    if (!stages) {
        Py_DECREF(cols);
        return NULL;
    }
    Py_ssize_t nc = PySequence_Fast_GET_SIZE(cols), ns = PySequence_Fast_GET_SIZE(stages);
    ColumnSpec specs[MAX_COLS];
    char **st = NULL;
    size_t *st_len = NULL;
    int ok = 0, nspecs = 0;
    memset(specs, 0, sizeof(specs));
    if (nc < 1 || nc > MAX_COLS || ns < 1) {
        PyErr_Format(PyExc_ValueError, "need 1 to %d columns and at least one stage", MAX_COLS);
        goto done;
    }
    for (Py_ssize_t i = 0; i < nc; i++, nspecs++) {
        const char *name, *kind;
        Py_ssize_t name_len;
        int nullable, non_empty, width;
        long long lo;
        unsigned long long hi;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(cols, i), "s#sppiLK", &name, &name_len, &kind, &nullable,
                              &non_empty, &width, &lo, &hi))
            goto done;
        ColumnSpec *c = &specs[i];
        c->kind = -1;
        for (int k = 0; k < NKINDS; k++)
            if (strcmp(KIND_NAMES[k], kind) == 0) c->kind = k;
        if (c->kind < 0 || (c->kind == K_INT && width != 4 && width != 8)) {
            PyErr_Format(PyExc_ValueError, "column %s: unknown kind %s or width %d", name, kind, width);
            goto done;
        }
        c->name = malloc((size_t)name_len + 1);
        if (!c->name) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(c->name, name, (size_t)name_len + 1);
        c->name_len = (size_t)name_len;
        c->nullable = nullable;
        c->non_empty = non_empty;
        c->width = width;
        c->max_pos = (uint64_t)hi;
        c->max_neg = lo < 0 ? (uint64_t)(-(lo + 1)) + 1 : 0;
    }
    st = calloc((size_t)ns, sizeof(char *));
    st_len = calloc((size_t)ns, sizeof(size_t));
    if (!st || !st_len) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < ns; i++) {
        Py_ssize_t n;
        const char *v = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(stages, i), &n);
        if (!v) goto done;
        st[i] = malloc((size_t)n + 1);
        if (!st[i]) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(st[i], v, (size_t)n + 1);
        st_len[i] = (size_t)n;
    }
    memcpy(COLS, specs, sizeof(specs));
    NCOLS = (int)nc;
    ALL_SEEN = nc == 32 ? 0xFFFFFFFFu : ((1u << nc) - 1u);
    STAGES = st;
    STAGE_LEN = st_len;
    NSTAGES = (int)ns;
    ok = 1;
done:
    if (!ok) {
        for (int i = 0; i < nspecs && i < MAX_COLS; i++) free(specs[i].name);
        if (st)
            for (Py_ssize_t i = 0; i < ns; i++) free(st[i]);
        free(st);
        free(st_len);
    }
    Py_DECREF(cols);
    Py_DECREF(stages);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", fj_decode, METH_O, decode_doc},
    {"configure", fj_configure, METH_VARARGS, configure_doc},
    {"contract", fj_contract, METH_NOARGS, "The configured (columns, stages), as configure() took them."},
    {"columns", fj_columns, METH_NOARGS, "The field names configured, in order."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastjson",
                                    "Audit records -> Arrow column buffers, without the GIL.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastjson(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *kinds = PyTuple_New(NKINDS);
    if (!kinds) {
        Py_DECREF(m);
        return NULL;
    }
    for (int k = 0; k < NKINDS; k++) PyTuple_SET_ITEM(kinds, k, PyUnicode_FromString(KIND_NAMES[k]));
    if (PyModule_AddObject(m, "KINDS", kinds) < 0) {
        Py_DECREF(kinds);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
