/* Containers to and from the safetensors format
 * (https://github.com/huggingface/safetensors):
 *
 *   8 bytes   N, little-endian unsigned
 *   N bytes   JSON header: {"name": {"dtype": "F32", "shape": [2, 3],
 *             "data_offsets": [begin, end]}, ..., "__metadata__": {"k": "v"}}
 *             padded with spaces to a multiple of 8
 *   rest      the data section: raw little-endian elements; offsets are
 *             relative to its start and the tensors cover it exactly.
 *
 * Loading validates everything the reference implementation does (and a bit
 * more: rank, key chains) and never reads outside the buffer; the fuzzer in
 * tests/fuzz/ drives ms__container_load_mem. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "container/container.h"

/* The reference implementation's MAX_HEADER_SIZE. */
#define ST_MAX_HEADER 100000000ull
#define ST_METADATA "__metadata__"

/* ------------------------------------------------------------------------ */
/* byte order                                                               */

static bool host_is_le(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Copy n elements of size es, converting between little-endian and host order. */
static void copy_le(void *dst, const void *src, size_t n, size_t es)
{
    if (host_is_le()) {
        if (n)
            memcpy(dst, src, n * es);
        return;
    }
    const unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < es; b++)
            d[i * es + b] = s[i * es + es - 1 - b];
}

/* ------------------------------------------------------------------------ */
/* save                                                                     */

static const char *st_dtype(ms_dtype dt)
{
    return dt == MS_F64 ? "F64" : "F32";
}

/* Build the padded header for c into *out (malloc'd, *len bytes). */
static ms_status build_header(const char *fn, const ms_container *c, char **out, size_t *len)
{
    ms_status st;
    json_t *root = json_object();
    if (!root)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory building the header", fn);
    int64_t off = 0;
    int n = ms_container_size(c);
    for (int i = 0; i < n; i++) {
        const char *key = ms_container_key(c, i);
        const ms_tensor *t = ms_container_at(c, i);
        if (!ms__check(fn, t, key)) {
            st = t ? MS_ERR_INVALID_ARG : MS_ERR_NULL_ARG;
            goto fail;
        }
        if (strcmp(key, ST_METADATA) == 0) {
            st = ms__fail(MS_ERR_KEY, "%s: key chain '%s' is reserved by the safetensors format", fn,
                     key);
            goto fail;
        }
        int64_t bytes = t->numel * (int64_t)ms_dtype_size(t->dtype);
        json_t *shape = json_array();
        json_t *offs = json_array();
        json_t *e = json_object();
        bool ok = shape && offs && e;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
        ok = ok && json_array_append_new(offs, json_integer(off)) == 0 &&
             json_array_append_new(offs, json_integer(off + bytes)) == 0;
        ok = ok && json_object_set_new(e, "dtype", json_string(st_dtype(t->dtype))) == 0;
        ok = ok && json_object_set(e, "shape", shape) == 0;
        ok = ok && json_object_set(e, "data_offsets", offs) == 0;
        json_decref(shape);
        json_decref(offs);
        if (!ok) {
            json_decref(e);
            st = ms__fail(MS_ERR_NOMEM, "%s: out of memory building the header", fn);
            goto fail;
        }
        /* Fails only for keys that are not UTF-8 (or out of memory). */
        if (json_object_set_new(root, key, e) != 0) {
            st = ms__fail(MS_ERR_KEY, "%s: key chain '%s' is not valid UTF-8", fn, key);
            goto fail;
        }
        off += bytes;
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory serialising the header", fn);
    /* Pad with spaces to a multiple of 8, as the reference implementation does. */
    size_t l = strlen(s), padded = (l + 7) / 8 * 8;
    char *p = realloc(s, padded + 1);
    if (!p) {
        free(s);
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory serialising the header", fn);
    }
    memset(p + l, ' ', padded - l);
    p[padded] = '\0';
    *out = p;
    *len = padded;
    return MS_OK;
fail:
    json_decref(root);
    return st;
}

static bool write_all(FILE *f, const void *p, size_t n)
{
    return n == 0 || fwrite(p, 1, n, f) == n;
}

static bool write_tensor(FILE *f, const ms_tensor *t)
{
    size_t es = ms_dtype_size(t->dtype), n = (size_t)t->numel;
    if (host_is_le())
        return write_all(f, t->data, n * es);
    unsigned char buf[4096];
    size_t per = sizeof buf / es;
    for (size_t i = 0; i < n; i += per) {
        size_t k = n - i < per ? n - i : per;
        copy_le(buf, (const char *)t->data + i * es, k, es);
        if (!write_all(f, buf, k * es))
            return false;
    }
    return true;
}

ms_status ms_container_save(const ms_container *c, const char *path)
{
    static const char fn[] = "ms_container_save";
    if (!c)
        return ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
    if (!path)
        return ms__fail(MS_ERR_NULL_ARG, "%s: path is NULL", fn);
    size_t hlen = 0;
    char *header = NULL;
    ms_status st = build_header(fn, c, &header, &hlen);
    if (st != MS_OK)
        return st;

    /* A temporary file next to the target, renamed over it once complete.
     * open(O_EXCL, 0666) rather than mkstemp so the file gets the umask's mode. */
    static _Atomic unsigned counter;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 64);
    if (!tmp) {
        free(header);
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    }
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        snprintf(tmp, plen + 64, "%s.tmp-%ld-%u", path, (long)getpid(), counter++);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    if (fd < 0) {
        int e = errno;
        free(header);
        free(tmp);
        return ms__fail(MS_ERR_IO, "%s: cannot create a temporary file next to '%s': %s", fn,
                        path, strerror(e));
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        free(header);
        free(tmp);
        return ms__fail(MS_ERR_IO, "%s: cannot write '%s': %s", fn, path, strerror(e));
    }
    unsigned char lenbuf[8];
    put_le64(lenbuf, hlen);
    bool ok = write_all(f, lenbuf, 8) && write_all(f, header, hlen);
    free(header);
    for (int i = 0; ok && i < ms_container_size(c); i++)
        ok = write_tensor(f, ms_container_at(c, i));
    int e = ok ? 0 : errno;
    if (ok && fflush(f) != 0) {
        ok = false;
        e = errno;
    }
    if (ok && fsync(fileno(f)) != 0) {
        ok = false;
        e = errno;
    }
    if (fclose(f) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return ms__fail(MS_ERR_IO, "%s: cannot write '%s': %s", fn, path,
                        strerror(e ? e : EIO));
    }
    free(tmp);
    return MS_OK;
}

/* ------------------------------------------------------------------------ */
/* load                                                                     */

typedef struct st_entry {
    const char *name; /* borrowed from the JSON object */
    ms_dtype dt;
    int ndim;
    int64_t shape[MS_MAX_DIMS];
    uint64_t begin, end;
    size_t order; /* position in the header */
} st_entry;

static int cmp_offsets(const void *pa, const void *pb)
{
    const st_entry *a = pa, *b = pb;
    if (a->begin != b->begin)
        return a->begin < b->begin ? -1 : 1;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

static int cmp_order(const void *pa, const void *pb)
{
    const st_entry *a = pa, *b = pb;
    return a->order < b->order ? -1 : a->order > b->order;
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

#define FMT_FAIL(...) ms__fail(MS_ERR_FORMAT, __VA_ARGS__)

/* A key chain: non-empty components separated by single '/'. */
static bool valid_chain(const char *k)
{
    size_t len = strlen(k);
    return len > 0 && k[0] != '/' && k[len - 1] != '/' && !strstr(k, "//");
}

/* Parse one header entry into e; MS_OK or MS_ERR_FORMAT recorded. */
static ms_status parse_entry(const char *fn, const char *file, const char *name,
                             const json_t *v, uint64_t data_len, st_entry *e)
{
    if (!json_is_object(v))
        return FMT_FAIL("%s: '%s': tensor '%s' is %s, not an object", fn, file, name,
                        json_type_name(v));
    const json_t *dtype = json_object_get(v, "dtype");
    const json_t *shape = json_object_get(v, "shape");
    const json_t *offs = json_object_get(v, "data_offsets");
    if (!dtype || !shape || !offs)
        return FMT_FAIL("%s: '%s': tensor '%s' lacks \"%s\"", fn, file, name,
                        !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    if (!json_is_string(dtype))
        return FMT_FAIL("%s: '%s': tensor '%s': \"dtype\" is %s, not a string", fn, file, name,
                        json_type_name(dtype));
    const char *ds = json_string_value(dtype);
    if (json_string_length(dtype) == 3 && strcmp(ds, "F32") == 0)
        e->dt = MS_F32;
    else if (json_string_length(dtype) == 3 && strcmp(ds, "F64") == 0)
        e->dt = MS_F64;
    else
        return FMT_FAIL("%s: '%s': tensor '%s' has unsupported dtype '%s' (only F32 and F64 "
                        "are supported)",
                        fn, file, name, ds);
    if (!json_is_array(shape))
        return FMT_FAIL("%s: '%s': tensor '%s': \"shape\" is %s, not an array", fn, file, name,
                        json_type_name(shape));
    size_t rank = json_array_size(shape);
    if (rank > MS_MAX_DIMS)
        return FMT_FAIL("%s: '%s': tensor '%s' has rank %zu, more than %d", fn, file, name,
                        rank, MS_MAX_DIMS);
    e->ndim = (int)rank;
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t d = 0; d < rank; d++) {
        const json_t *x = json_array_get(shape, d);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return FMT_FAIL("%s: '%s': tensor '%s': shape[%zu] is %s, not a non-negative "
                            "integer",
                            fn, file, name, d,
                            json_is_integer(x) ? "negative" : json_type_name(x));
        e->shape[d] = (int64_t)json_integer_value(x);
        if (__builtin_mul_overflow(numel, (uint64_t)e->shape[d], &numel))
            overflow = true;
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2)
        return FMT_FAIL("%s: '%s': tensor '%s': \"data_offsets\" is %s, not an array of two "
                        "integers",
                        fn, file, name,
                        json_is_array(offs) ? "an array of another length"
                                            : json_type_name(offs));
    for (size_t k = 0; k < 2; k++) {
        const json_t *x = json_array_get(offs, k);
        if (!json_is_integer(x) || json_integer_value(x) < 0)
            return FMT_FAIL("%s: '%s': tensor '%s': data_offsets[%zu] is %s, not a "
                            "non-negative integer",
                            fn, file, name, k,
                            json_is_integer(x) ? "negative" : json_type_name(x));
    }
    e->begin = (uint64_t)json_integer_value(json_array_get(offs, 0));
    e->end = (uint64_t)json_integer_value(json_array_get(offs, 1));
    if (e->end < e->begin)
        return FMT_FAIL("%s: '%s': tensor '%s': data_offsets [%llu, %llu] end before they "
                        "begin",
                        fn, file, name, (unsigned long long)e->begin,
                        (unsigned long long)e->end);
    char sb[MS_SHAPE_BUF];
    uint64_t bytes;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)ms_dtype_size(e->dt), &bytes) ||
        bytes > (uint64_t)INT64_MAX / 2)
        return FMT_FAIL("%s: '%s': tensor '%s': shape %s has too many elements", fn, file, name,
                        ms__shape_str(sb, sizeof sb, e->ndim, e->shape));
    if (bytes != e->end - e->begin)
        return FMT_FAIL("%s: '%s': tensor '%s': shape %s of %s needs %llu bytes but "
                        "data_offsets [%llu, %llu] span %llu",
                        fn, file, name, ms__shape_str(sb, sizeof sb, e->ndim, e->shape), ds,
                        (unsigned long long)bytes, (unsigned long long)e->begin,
                        (unsigned long long)e->end, (unsigned long long)(e->end - e->begin));
    if (e->end > data_len)
        return FMT_FAIL("%s: '%s': tensor '%s': data_offsets [%llu, %llu] extend beyond the "
                        "%llu-byte data section",
                        fn, file, name, (unsigned long long)e->begin,
                        (unsigned long long)e->end, (unsigned long long)data_len);
    if (!valid_chain(name))
        return FMT_FAIL("%s: '%s': tensor name '%s' is not a valid key chain (empty, or an "
                        "empty component: leading/trailing '/' or '//')",
                        fn, file, name);
    return MS_OK;
}

static ms_status check_metadata(const char *fn, const char *file, const json_t *v)
{
    if (!json_is_object(v))
        return FMT_FAIL("%s: '%s': \"__metadata__\" is %s, not an object of strings", fn, file,
                        json_type_name(v));
    const char *k;
    const json_t *x;
    json_object_foreach((json_t *)v, k, x)
    {
        if (!json_is_string(x))
            return FMT_FAIL("%s: '%s': \"__metadata__\" entry '%s' is %s, not a string", fn,
                            file, k, json_type_name(x));
    }
    return MS_OK;
}

/* Whether some proper '/'-prefix of name is itself a tensor in root. */
static const char *chain_conflict(const json_t *root, const char *name, char *scratch)
{
    size_t len = strlen(name);
    for (size_t i = 1; i < len; i++) {
        if (name[i] != '/')
            continue;
        memcpy(scratch, name, i);
        scratch[i] = '\0';
        if (strcmp(scratch, ST_METADATA) != 0 && json_object_get(root, scratch))
            return scratch;
    }
    return NULL;
}

static ms_status parse_and_build(const char *fn, const char *file, const json_t *root,
                                 const unsigned char *data, uint64_t data_len,
                                 ms_container **out)
{
    size_t n = json_object_size(root);
    st_entry *es = calloc(n ? n : 1, sizeof *es);
    if (!es)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    char *scratch = NULL;
    ms_container *c = NULL;
    ms_status st = MS_OK;
    size_t count = 0, maxname = 0;
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)root, name, v)
    {
        if (strcmp(name, ST_METADATA) == 0) {
            st = check_metadata(fn, file, v);
            if (st != MS_OK)
                goto done;
            continue;
        }
        st_entry *e = &es[count];
        st = parse_entry(fn, file, name, v, data_len, e);
        if (st != MS_OK)
            goto done;
        e->name = name;
        e->order = count++;
        size_t l = strlen(name);
        maxname = l > maxname ? l : maxname;
    }

    /* "a" and "a/b" cannot both be leaves of a container. */
    scratch = malloc(maxname + 1);
    if (!scratch) {
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        const char *other = chain_conflict(root, es[i].name, scratch);
        if (other) {
            st = FMT_FAIL("%s: '%s': tensor name '%s' conflicts with tensor '%s' (a key chain "
                          "cannot be both a leaf and a subtree)",
                          fn, file, es[i].name, other);
            goto done;
        }
    }

    /* The tensors must tile the data section: no overlaps, no holes. */
    qsort(es, count, sizeof *es, cmp_offsets);
    uint64_t pos = 0;
    for (size_t i = 0; i < count; i++) {
        if (es[i].begin < pos) {
            st = FMT_FAIL("%s: '%s': tensor '%s' (data_offsets [%llu, %llu]) overlaps tensor "
                          "'%s' which ends at %llu",
                          fn, file, es[i].name, (unsigned long long)es[i].begin,
                          (unsigned long long)es[i].end, es[i - 1].name,
                          (unsigned long long)pos);
            goto done;
        }
        if (es[i].begin > pos) {
            st = FMT_FAIL("%s: '%s': hole in the data section: bytes [%llu, %llu) before tensor "
                          "'%s' belong to no tensor",
                          fn, file, (unsigned long long)pos, (unsigned long long)es[i].begin,
                          es[i].name);
            goto done;
        }
        pos = es[i].end;
    }
    if (pos != data_len) {
        st = FMT_FAIL("%s: '%s': hole in the data section: its last %llu bytes (from offset "
                      "%llu to %llu) belong to no tensor",
                      fn, file, (unsigned long long)(data_len - pos), (unsigned long long)pos,
                      (unsigned long long)data_len);
        goto done;
    }

    /* Build the container in header order. */
    qsort(es, count, sizeof *es, cmp_order);
    c = ms_container_new();
    if (!c) {
        st = MS_ERR_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        ms_tensor *t = ms__tensor_tmp(fn, es[i].dt, es[i].ndim, es[i].shape);
        if (!t) {
            st = MS_ERR_NOMEM; /* the shape was validated: only allocation can fail */
            goto done;
        }
        copy_le(t->data, data + es[i].begin, (size_t)t->numel, ms_dtype_size(t->dtype));
        st = ms_container_set(c, es[i].name, t);
        ms_release(t); /* no scope owns it: the container now holds the only reference */
        if (st != MS_OK)
            goto done;
    }
done:
    free(es);
    free(scratch);
    if (st != MS_OK) {
        ms_container_release(c);
        return st;
    }
    *out = c;
    return MS_OK;
}

ms_status ms__container_load_mem(const void *buf, size_t n, const char *name, ms_container **out)
{
    static const char fn[] = "ms_container_load";
    if (!out)
        return ms__fail(MS_ERR_NULL_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!buf && n)
        return ms__fail(MS_ERR_NULL_ARG, "%s: buffer is NULL", fn);
    const char *file = name ? name : "<memory>";
    const unsigned char *p = buf;
    if (n < 8)
        return FMT_FAIL("%s: '%s': truncated: %zu bytes, shorter than the 8-byte header "
                        "length",
                        fn, file, n);
    uint64_t hlen = get_le64(p);
    if (hlen > ST_MAX_HEADER)
        return FMT_FAIL("%s: '%s': oversized header: length %llu exceeds the %llu-byte limit",
                        fn, file, (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > n - 8)
        return FMT_FAIL("%s: '%s': oversized header: length %llu exceeds the %zu bytes that "
                        "follow it (truncated file?)",
                        fn, file, (unsigned long long)hlen, n - 8);
    if (hlen == 0 || p[8] != '{')
        return FMT_FAIL("%s: '%s': the header does not start with '{'", fn, file);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return FMT_FAIL("%s: '%s': duplicate tensor name in the header: %s (line %d, "
                            "column %d)",
                            fn, file, jerr.text, jerr.line, jerr.column);
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return ms__fail(MS_ERR_NOMEM, "%s: '%s': out of memory parsing the header", fn,
                            file);
        return FMT_FAIL("%s: '%s': the header is not valid JSON: %s (line %d, column %d)", fn,
                        file, jerr.text, jerr.line, jerr.column);
    }
    ms_status st;
    if (!json_is_object(root))
        st = FMT_FAIL("%s: '%s': the header is %s, not a JSON object", fn, file,
                      json_type_name(root));
    else
        st = parse_and_build(fn, file, root, p + 8 + hlen, n - 8 - hlen, out);
    json_decref(root);
    return st;
}

ms_status ms_container_load(const char *path, ms_container **out)
{
    static const char fn[] = "ms_container_load";
    if (!out)
        return ms__fail(MS_ERR_NULL_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!path)
        return ms__fail(MS_ERR_NULL_ARG, "%s: path is NULL", fn);
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer
     * before fstat can refuse it; reads of a regular file ignore the flag. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return ms__fail(MS_ERR_IO, "%s: cannot open '%s': %s", fn, path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return ms__fail(MS_ERR_IO, "%s: cannot stat '%s': %s", fn, path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return ms__fail(MS_ERR_IO, "%s: '%s' is not a regular file", fn, path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX / 2) {
        close(fd);
        return ms__fail(MS_ERR_NOMEM, "%s: '%s' is too large to load (%lld bytes)", fn, path,
                        (long long)sb.st_size);
    }
    size_t size = (size_t)sb.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return ms__fail(MS_ERR_NOMEM, "%s: cannot allocate %zu bytes to read '%s'", fn, size,
                        path);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return ms__fail(MS_ERR_IO, "%s: cannot read '%s': %s", fn, path, strerror(e));
        }
        if (r == 0)
            break; /* the file shrank: validate what was read */
        got += (size_t)r;
    }
    close(fd);
    ms_status st = ms__container_load_mem(buf, got, path, out);
    free(buf);
    return st;
}
