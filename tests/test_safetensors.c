/* safetensors save/load: interop both ways with tests/safetensors_ref.py (a
 * standard-library Python implementation of the published format), round
 * trips, every kind of malformed file, ownership, and replay of the fuzzer's
 * regression inputs (tests/fuzz/regressions, tests/fuzz/corpus). */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metastep/metastep.h"
#include "testutil.h"

#ifndef PYTHON3
#define PYTHON3 "python3"
#endif
#ifndef ST_REF_SCRIPT
#error "ST_REF_SCRIPT (path of tests/safetensors_ref.py) must be defined"
#endif
#ifndef ST_FUZZ_DIR
#error "ST_FUZZ_DIR (path of tests/fuzz) must be defined"
#endif

/* ------------------------------------------------------------ helpers */

static int64_t live0;
static char dir[64];

static void rm_dir(const char *d)
{
    DIR *dp = opendir(d);
    if (!dp)
        return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(dp))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", d, de->d_name);
        unlink(p);
    }
    closedir(dp);
    rmdir(d);
}

static void setup(void)
{
    ms_clear_error();
    live0 = ms_live_tensors();
    snprintf(dir, sizeof dir, "/tmp/ms_safetensors_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    rm_dir(dir);
    ck_assert_int_eq(ms_scope_depth(), 0);
    ck_assert_int_eq(ms_live_tensors(), live0);
}

static const char *tmp(const char *name)
{
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static int count_files(const char *d)
{
    DIR *dp = opendir(d);
    ck_assert_ptr_nonnull(dp);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dp)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    closedir(dp);
    return n;
}

/* The known tensors of safetensors_ref.py (keep in sync). */
typedef struct known {
    const char *name;
    ms_dtype dt;
    int nd;
    int64_t shape[MS_MAX_DIMS];
} known;

static const known KNOWN[] = {
    {"layer1/w", MS_F32, 2, {2, 3}},
    {"layer1/b", MS_F64, 1, {3}},
    {"layer2/deep/k", MS_F64, 3, {2, 1, 2}},
    {"scalar", MS_F32, 0, {0}},
    {"empty", MS_F32, 1, {0}},
    {"layer2/empty2", MS_F64, 2, {2, 0}},
    {"big/rank8", MS_F32, 8, {1, 2, 1, 1, 1, 1, 1, 2}},
};
#define NKNOWN ((int)(sizeof KNOWN / sizeof *KNOWN))

static double known_value(const char *name, int64_t i)
{
    if (strcmp(name, "layer1/w") == 0)
        return 0.1 * (double)i - 0.25;
    if (strcmp(name, "layer1/b") == 0)
        return (double)i / 3.0;
    if (strcmp(name, "layer2/deep/k") == 0)
        return -1.5 + 0.75 * (double)i;
    if (strcmp(name, "scalar") == 0)
        return 3.25;
    if (strcmp(name, "big/rank8") == 0)
        return (double)i + 0.5;
    return 0.0;
}

static int64_t numel_of(int nd, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= shape[i];
    return n;
}

static ms_container *known_container(void)
{
    ms_container *c = ms_container_new();
    for (int k = 0; k < NKNOWN; k++) {
        const known *e = &KNOWN[k];
        int64_t n = numel_of(e->nd, e->shape);
        float f[16];
        double d[16];
        for (int64_t i = 0; i < n; i++) {
            d[i] = known_value(e->name, i);
            f[i] = (float)d[i];
        }
        ms_tensor *t = ms_tensor_from_data(e->dt, e->nd, e->shape, e->dt == MS_F32 ? (void *)f
                                                                                   : (void *)d);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(ms_container_set(c, e->name, t), MS_OK);
        ms_release(t);
    }
    return c;
}

static void check_known(const ms_container *c)
{
    ck_assert_int_eq(ms_container_size(c), NKNOWN);
    for (int k = 0; k < NKNOWN; k++) {
        const known *e = &KNOWN[k];
        ck_assert_str_eq(ms_container_key(c, k), e->name);
        const ms_tensor *t = ms_container_at(c, k);
        ck_assert_int_eq(ms_tensor_dtype(t), e->dt);
        ck_assert_int_eq(ms_tensor_ndim(t), e->nd);
        for (int i = 0; i < e->nd; i++)
            ck_assert_int_eq(ms_tensor_shape(t)[i], e->shape[i]);
        int64_t n = numel_of(e->nd, e->shape);
        ck_assert_int_eq(ms_tensor_numel(t), n);
        for (int64_t i = 0; i < n; i++) {
            double want = known_value(e->name, i);
            if (e->dt == MS_F32)
                want = (float)want;
            ck_assert_msg(at(t, i) == want, "%s[%lld] = %.17g, want %.17g", e->name,
                          (long long)i, at(t, i), want);
        }
    }
}

static int run_ref(const char *mode, const char *path, char *out, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' '%s' %s '%s' 2>&1", PYTHON3, ST_REF_SCRIPT, mode, path);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int rc = pclose(p);
    return rc;
}

/* Write a file: 8-byte length hlen, then the header bytes, then ndata bytes
 * of data (0x00..); hlen < 0 means strlen(header). */
static const char *write_raw(const char *name, long long hlen, const char *header, size_t ndata)
{
    const char *path = tmp(name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint64_t n = hlen < 0 ? strlen(header) : (uint64_t)hlen;
    unsigned char lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (unsigned char)(n >> (8 * i));
    ck_assert_int_eq(fwrite(lb, 1, 8, f), 8);
    size_t hl = strlen(header);
    if (hl)
        ck_assert_int_eq(fwrite(header, 1, hl, f), hl);
    for (size_t i = 0; i < ndata; i++)
        fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

/* Load path expecting failure st with a message containing every needle. */
static void expect_fail(const char *path, ms_status want, const char *needle1,
                        const char *needle2)
{
    ms_clear_error();
    ms_container *c = (ms_container *)1;
    ms_status st = ms_container_load(path, &c);
    const char *msg;
    ms_status rec = ms_last_error(&msg);
    ck_assert_msg(st == want, "loading %s: status %d (%s), want %d; message: %s", path, st,
                  ms_status_string(st), want, msg);
    ck_assert_int_eq(rec, want);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
    ck_assert_msg(strstr(msg, needle1) != NULL, "message lacks '%s': %s", needle1, msg);
    if (needle2)
        ck_assert_msg(strstr(msg, needle2) != NULL, "message lacks '%s': %s", needle2, msg);
    ms_clear_error();
}

/* One-tensor-header helper: {"<name>": <entry>} with ndata bytes of data. */
static void expect_entry_fail(const char *entry, size_t ndata, const char *n1, const char *n2)
{
    char h[1024];
    snprintf(h, sizeof h, "{\"t\":%s}", entry);
    expect_fail(write_raw("bad.safetensors", -1, h, ndata), MS_ERR_FORMAT, n1, n2);
}

/* ------------------------------------------------------------ interop */

START_TEST(test_load_python_written)
{
    char out[4096];
    const char *path = tmp("py.safetensors");
    int rc = run_ref("write", path, out, sizeof out);
    ck_assert_msg(rc == 0, "safetensors_ref.py write failed (%d): %s", rc, out);
    ms_container *c = NULL;
    ck_assert_int_eq(ms_container_load(path, &c), MS_OK);
    check_known(c);
    ms_container_release(c);
}
END_TEST

START_TEST(test_python_checks_saved)
{
    char out[4096];
    ms_container *c = known_container();
    const char *path = tmp("c.safetensors");
    ck_assert_int_eq(ms_container_save(c, path), MS_OK);
    ms_container_release(c);
    int rc = run_ref("check", path, out, sizeof out);
    ck_assert_msg(rc == 0 && strstr(out, "OK"), "safetensors_ref.py check failed (%d): %s", rc,
                  out);
    /* and the checker does reject a wrong file */
    write_raw("wrong.safetensors", -1, "{}      ", 0);
    rc = run_ref("check", tmp("wrong.safetensors"), out, sizeof out);
    ck_assert_msg(rc != 0, "checker accepted an empty file: %s", out);
}
END_TEST

START_TEST(test_saved_layout)
{
    /* header length a multiple of 8, padded with spaces, data right after */
    ms_container *c = known_container();
    const char *path = tmp("c.safetensors");
    ck_assert_int_eq(ms_container_save(c, path), MS_OK);
    ms_container_release(c);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    unsigned char lb[8];
    ck_assert_int_eq(fread(lb, 1, 8, f), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | lb[i];
    ck_assert_int_eq(n % 8, 0);
    char *h = malloc(n + 1);
    ck_assert_int_eq(fread(h, 1, n, f), n);
    h[n] = '\0';
    ck_assert_int_eq(h[0], '{');
    ck_assert_ptr_nonnull(strstr(h, "\"layer1/w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                                    "\"data_offsets\":[0,24]}"));
    ck_assert_ptr_nonnull(strstr(h, "\"scalar\":{\"dtype\":\"F32\",\"shape\":[],"));
    size_t end = strlen(h);
    while (end > 0 && h[end - 1] == ' ')
        end--;
    ck_assert_int_eq(h[end - 1], '}');
    ck_assert_int_lt(n - end, 8);
    free(h);
    fclose(f);
}
END_TEST

/* ------------------------------------------------------------ round trips */

START_TEST(test_round_trip)
{
    ms_container *c = ms_container_new();
    int64_t s1[1] = {7}, s2[2] = {3, 4}, s3[3] = {2, 3, 5}, s0[2] = {0, 4};
    struct {
        const char *k;
        ms_tensor *t;
    } items[] = {
        {"net/layer1/w", ms_random_normal(MS_F32, 2, s2, 0, 1, 1)},
        {"net/layer1/b", ms_random_uniform(MS_F64, 1, s1, -1, 1, 2)},
        {"net/layer2/w", ms_random_normal(MS_F64, 3, s3, 0, 2, 3)},
        {"lr", ms_scalar(MS_F64, 0.001)},
        {"empty", ms_zeros(MS_F32, 2, s0)},
        {"ünïcode/κλειδί", ms_ones(MS_F32, 1, s1)},
        {"quote\"and\\backslash", ms_arange(MS_F64, 0, 5, 1)},
    };
    for (size_t i = 0; i < sizeof items / sizeof *items; i++) {
        ck_assert_ptr_nonnull(items[i].t);
        ck_assert_int_eq(ms_container_set(c, items[i].k, items[i].t), MS_OK);
        ms_release(items[i].t);
    }
    const char *path = tmp("rt.safetensors");
    ck_assert_int_eq(ms_container_save(c, path), MS_OK);
    ck_assert_int_eq(count_files(dir), 1); /* no temporary left behind */
    ms_container *d = NULL;
    ck_assert_int_eq(ms_container_load(path, &d), MS_OK);
    ck_assert(ms_container_allclose(c, d, 0, 0));
    ck_assert_int_eq(ms_container_size(d), ms_container_size(c));
    for (int i = 0; i < ms_container_size(c); i++) {
        ck_assert_str_eq(ms_container_key(d, i), ms_container_key(c, i));
        ck_assert_int_eq(ms_tensor_dtype(ms_container_at(d, i)),
                         ms_tensor_dtype(ms_container_at(c, i)));
    }
    /* overwrite an existing file in place, then reload */
    ms_container *e = ms_container_mul_scalar(c, 2.0);
    ck_assert_int_eq(ms_container_save(e, path), MS_OK);
    ck_assert_int_eq(count_files(dir), 1);
    ms_container *g = NULL;
    ck_assert_int_eq(ms_container_load(path, &g), MS_OK);
    ck_assert(ms_container_allclose(e, g, 0, 0));
    ms_container_release(c);
    ms_container_release(d);
    ms_container_release(e);
    ms_container_release(g);
}
END_TEST

START_TEST(test_empty_container)
{
    ms_container *c = ms_container_new();
    const char *path = tmp("empty.safetensors");
    ck_assert_int_eq(ms_container_save(c, path), MS_OK);
    ms_container *d = NULL;
    ck_assert_int_eq(ms_container_load(path, &d), MS_OK);
    ck_assert_int_eq(ms_container_size(d), 0);
    ms_container_release(c);
    ms_container_release(d);
}
END_TEST

START_TEST(test_load_ownership_under_scope)
{
    ms_container *c = known_container();
    const char *path = tmp("own.safetensors");
    ck_assert_int_eq(ms_container_save(c, path), MS_OK);
    ms_container_release(c);
    ck_assert_int_eq(ms_live_tensors(), live0);
    /* tensors loaded under a scope belong to the container, not the scope */
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    ms_container *d = NULL;
    ck_assert_int_eq(ms_container_load(path, &d), MS_OK);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), live0 + NKNOWN);
    check_known(d);
    ms_container_release(d);
    ck_assert_int_eq(ms_live_tensors(), live0);
    /* and without a scope the container holds the only reference */
    ck_assert_int_eq(ms_container_load(path, &d), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), live0 + NKNOWN);
    ms_container_release(d);
}
END_TEST

/* ------------------------------------------------------------ save errors */

START_TEST(test_save_errors)
{
    ms_container *c = known_container();
    ck_assert_int_eq(ms_container_save(NULL, tmp("x")), MS_ERR_NULL_ARG);
    ms_clear_error();
    ck_assert_int_eq(ms_container_save(c, NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    const char *bad = "/nonexistent-dir-for-metastep/x.safetensors";
    ck_assert_int_eq(ms_container_save(c, bad), MS_ERR_IO);
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(msg, bad));
    ck_assert_ptr_nonnull(strstr(msg, "No such file or directory"));
    ms_clear_error();
    /* a directory in the way: rename fails, nothing is left behind */
    const char *sub = tmp("sub");
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    char inner[300];
    snprintf(inner, sizeof inner, "%s/f", sub);
    FILE *f = fopen(inner, "w");
    fclose(f);
    ck_assert_int_eq(ms_container_save(c, sub), MS_ERR_IO);
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(msg, sub));
    ms_clear_error();
    ck_assert_int_eq(count_files(dir), 1);
    unlink(inner);
    rmdir(sub);
    /* "__metadata__" cannot be a tensor name */
    ms_tensor *t = ms_scalar(MS_F32, 1);
    ck_assert_int_eq(ms_container_set(c, "__metadata__", t), MS_OK);
    ms_release(t);
    ck_assert_int_eq(ms_container_save(c, tmp("m.safetensors")), MS_ERR_KEY);
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_KEY);
    ck_assert_ptr_nonnull(strstr(msg, "__metadata__"));
    ms_clear_error();
    ck_assert_int_eq(count_files(dir), 0);
    ms_container_release(c);
}
END_TEST

/* ------------------------------------------------------------ load errors */

START_TEST(test_load_null_and_missing)
{
    ms_container *c = NULL;
    ck_assert_int_eq(ms_container_load(NULL, &c), MS_ERR_NULL_ARG);
    ms_clear_error();
    ck_assert_int_eq(ms_container_load(tmp("x"), NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    expect_fail(tmp("missing.safetensors"), MS_ERR_IO, "No such file or directory", NULL);
    expect_fail(dir, MS_ERR_IO, "not a regular file", NULL);
    /* issue 12: a FIFO with no writer hung forever in open(); refused now
     * (a hang fails the test on check's timeout) */
    const char *fifo = tmp("fifo.safetensors");
    unlink(fifo);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    expect_fail(fifo, MS_ERR_IO, "not a regular file", NULL);
    unlink(fifo);
}
END_TEST

START_TEST(test_truncated_and_oversized)
{
    const char *p = tmp("trunc.safetensors");
    FILE *f = fopen(p, "wb");
    fwrite("\x10\x00\x00\x00\x00", 1, 5, f);
    fclose(f);
    expect_fail(p, MS_ERR_FORMAT, "truncated", NULL);
    f = fopen(p, "wb");
    fclose(f);
    expect_fail(p, MS_ERR_FORMAT, "truncated", NULL);
    /* a length past the end of the file */
    expect_fail(write_raw("a", 1000, "{}", 0), MS_ERR_FORMAT, "oversized header", "1000");
    /* a length beyond the 100 MB limit */
    expect_fail(write_raw("b", 200000000LL, "{}", 0), MS_ERR_FORMAT, "oversized header",
                "limit");
    expect_fail(write_raw("c", -2LL + (long long)(~0ull >> 1), "{}", 0), MS_ERR_FORMAT,
                "oversized header", NULL);
    /* a valid file cut short inside its data */
    expect_fail(write_raw("d", -1,
                          "{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                          12),
                MS_ERR_FORMAT, "beyond", "'t'");
}
END_TEST

START_TEST(test_bad_json)
{
    expect_fail(write_raw("a", -1, "{\"t\": {", 0), MS_ERR_FORMAT, "not valid JSON", "line 1");
    expect_fail(write_raw("b", -1, "{\n\"t\": 1,\n nope}", 0), MS_ERR_FORMAT, "not valid JSON",
                "line 3");
    expect_fail(write_raw("c", -1, "{} trailing", 0), MS_ERR_FORMAT, "not valid JSON", NULL);
    expect_fail(write_raw("d", -1, "[1, 2]", 0), MS_ERR_FORMAT, "'{'", NULL);
    expect_fail(write_raw("e", 0, "", 0), MS_ERR_FORMAT, "'{'", NULL);
    expect_fail(write_raw("f", -1, "{\"t\": \"\xff\xfe\"}", 0), MS_ERR_FORMAT,
                "not valid JSON", NULL);
    expect_fail(write_raw("g", -1, "{\"t\":1}", 0), MS_ERR_FORMAT, "'t'", "not an object");
    expect_fail(write_raw("h", -1, "{\"__metadata__\":{\"k\":1}}", 0), MS_ERR_FORMAT,
                "__metadata__", "not a string");
    expect_fail(write_raw("i", -1, "{\"__metadata__\":[]}", 0), MS_ERR_FORMAT, "__metadata__",
                NULL);
}
END_TEST

START_TEST(test_bad_entries)
{
    expect_entry_fail("{\"shape\":[1],\"data_offsets\":[0,4]}", 4, "'t'", "lacks \"dtype\"");
    expect_entry_fail("{\"dtype\":\"F32\",\"data_offsets\":[0,4]}", 4, "'t'", "lacks \"shape\"");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1]}", 4, "'t'", "lacks \"data_offsets\"");
    expect_entry_fail("{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}", 4, "\"dtype\"",
                      "not a string");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}", 4,
                      "\"shape\"", "not an array");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}", 4,
                      "shape[0]", "real number");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}", 4,
                      "shape[1]", "negative");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[null],\"data_offsets\":[0,4]}", 4,
                      "shape[0]", "null");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}", 4,
                      "data_offsets", "two integers");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}", 4,
                      "data_offsets", "two integers");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",4]}", 4,
                      "data_offsets[0]", "a string");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}", 4,
                      "data_offsets[1]", "negative");
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}", 4,
                      "end before", NULL);
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                      "\"data_offsets\":[0,4]}",
                      4, "rank 9", "'t'");
}
END_TEST

START_TEST(test_bad_dtypes)
{
    const char *dts[] = {"F16", "BF16", "I64", "I32", "U8", "BOOL", "F8_E4M3", "f32", ""};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        char e[256], want[64];
        snprintf(e, sizeof e, "{\"dtype\":\"%s\",\"shape\":[2],\"data_offsets\":[0,4]}",
                 dts[i]);
        snprintf(want, sizeof want, "dtype '%s'", dts[i]);
        expect_entry_fail(e, 4, want, "'t'");
    }
}
END_TEST

START_TEST(test_bad_sizes_and_offsets)
{
    /* shape/size mismatch */
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}", 4,
                      "needs 8 bytes", "span 4");
    expect_entry_fail("{\"dtype\":\"F64\",\"shape\":[2,3],\"data_offsets\":[0,24]}", 24,
                      "needs 48 bytes", "(2,3)");
    expect_entry_fail("{\"dtype\":\"F64\",\"shape\":[4611686018427387904,4],"
                      "\"data_offsets\":[0,0]}",
                      0, "too many elements", NULL);
    /* offsets beyond the data section */
    expect_entry_fail("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}", 12,
                      "beyond the 12-byte data section", NULL);
    /* overlapping */
    expect_fail(write_raw("o", -1,
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                          12),
                MS_ERR_FORMAT, "overlaps", "'b'");
    expect_fail(write_raw("o2", -1,
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                          8),
                MS_ERR_FORMAT, "overlaps", NULL);
    /* an empty tensor inside another */
    expect_fail(write_raw("o3", -1,
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                          8),
                MS_ERR_FORMAT, "overlaps", NULL);
    /* a hole between tensors, at the start, and at the end */
    expect_fail(write_raw("h", -1,
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                          12),
                MS_ERR_FORMAT, "hole", "[4, 8)");
    expect_fail(write_raw("h2", -1,
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8),
                MS_ERR_FORMAT, "hole", "[0, 4)");
    expect_fail(write_raw("h3", -1,
                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8),
                MS_ERR_FORMAT, "hole", "last 4 bytes");
    expect_fail(write_raw("h4", -1, "{}", 3), MS_ERR_FORMAT, "hole", NULL);
    /* contiguous but out of header order, with empty tensors at the seams: fine */
    const char *ok = write_raw("ok", -1,
                               "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                               "\"e\":{\"dtype\":\"F64\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                               "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                               "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                               "\"__metadata__\":{\"k\":\"v\"}}",
                               8);
    ms_container *c = NULL;
    ck_assert_int_eq(ms_container_load(ok, &c), MS_OK);
    ck_assert_int_eq(ms_container_size(c), 4);
    ck_assert_str_eq(ms_container_key(c, 0), "a");
    ck_assert_str_eq(ms_container_key(c, 3), "b");
    const unsigned char *a = ms_tensor_data(ms_container_get(c, "a"));
    ck_assert_int_eq(a[0], 4); /* bytes 4..7 of the data */
    ms_container_release(c);
}
END_TEST

START_TEST(test_bad_names)
{
    const char *e = "{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
    char h[512];
    snprintf(h, sizeof h, "{\"a\":%s,\"a\":%s}", e, e);
    expect_fail(write_raw("dup", -1, h, 0), MS_ERR_FORMAT, "duplicate", "a");
    const char *bad[] = {"", "/a", "a/", "a//b", "/"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(h, sizeof h, "{\"%s\":%s}", bad[i], e);
        expect_fail(write_raw("name", -1, h, 0), MS_ERR_FORMAT, "not a valid key chain", NULL);
    }
    snprintf(h, sizeof h, "{\"a/b\":%s,\"a\":%s}", e, e);
    expect_fail(write_raw("conflict", -1, h, 0), MS_ERR_FORMAT, "conflicts", "'a/b'");
    snprintf(h, sizeof h, "{\"x\":%s,\"x/y/z\":%s}", e, e);
    expect_fail(write_raw("conflict2", -1, h, 0), MS_ERR_FORMAT, "conflicts", "'x'");
    /* "__metadata__/x" is an ordinary name */
    snprintf(h, sizeof h, "{\"__metadata__/x\":%s,\"__metadata__\":{}}", e);
    ms_container *c = NULL;
    ck_assert_int_eq(ms_container_load(write_raw("meta", -1, h, 0), &c), MS_OK);
    ck_assert(ms_container_has(c, "__metadata__/x"));
    ms_container_release(c);
}
END_TEST

/* ------------------------------------------------------------ fuzz regressions */

static int replay_dir(const char *d)
{
    DIR *dp = opendir(d);
    if (!dp)
        return 0;
    int n = 0;
    struct dirent *de;
    char p[1024];
    while ((de = readdir(dp))) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, "README.md") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", d, de->d_name);
        ms_clear_error();
        ms_container *c = (ms_container *)1;
        ms_status st = ms_container_load(p, &c);
        const char *msg;
        ck_assert_int_eq(ms_last_error(&msg), st);
        if (st == MS_OK) {
            ck_assert_ptr_nonnull(c);
            ms_container_release(c);
        } else {
            ck_assert_msg(st == MS_ERR_FORMAT, "%s: status %d: %s", p, st, msg);
            ck_assert_ptr_null(c);
            ck_assert_msg(strstr(msg, p) != NULL, "%s: message does not name it: %s", p, msg);
        }
        ck_assert_int_eq(ms_live_tensors(), live0);
        n++;
    }
    closedir(dp);
    return n;
}

START_TEST(test_fuzz_regressions)
{
    int n = replay_dir(ST_FUZZ_DIR "/regressions");
    ck_assert_msg(n > 0, "no files in " ST_FUZZ_DIR "/regressions");
    ck_assert_int_gt(replay_dir(ST_FUZZ_DIR "/corpus"), 0);
    ms_clear_error();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("interop");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_load_python_written);
    tcase_add_test(tc, test_python_checks_saved);
    tcase_add_test(tc, test_saved_layout);
    suite_add_tcase(s, tc);
    tc = tcase_create("round_trip");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_empty_container);
    tcase_add_test(tc, test_load_ownership_under_scope);
    tcase_add_test(tc, test_save_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("malformed");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_load_null_and_missing);
    tcase_add_test(tc, test_truncated_and_oversized);
    tcase_add_test(tc, test_bad_json);
    tcase_add_test(tc, test_bad_entries);
    tcase_add_test(tc, test_bad_dtypes);
    tcase_add_test(tc, test_bad_sizes_and_offsets);
    tcase_add_test(tc, test_bad_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("fuzz_regressions");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fuzz_regressions);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(suite());
}
