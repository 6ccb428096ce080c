/* Few-shot image classification: N-way K-shot episodes (Vinyals et al.
 * 2016) with the Conv4 model of Finn et al. 2017 (MAML, section 5.2).
 *
 * Data (option "data"): a Fashion-MNIST-style folder holding
 * {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (default: Debian's
 * dataset-fashion-mnist, /usr/share/datasets/fashion-mnist); one IDX pair
 * ("data" = the image file, "labels" = the label file); or a tree of class
 * folders of PNG images, DATA/<class>/<image>.png (Omniglot, mini-ImageNet).
 * Meta-training and evaluation use disjoint classes:
 *   Fashion-MNIST folder: sample draws classes 0,2,4,6,8 of the training
 *     images, evaluate classes 1,3,5,7,9 of the test (t10k) images;
 *   one IDX pair: even labels for training, odd labels for evaluation;
 *   PNG tree: the class folders sorted by name, the first floor(split * C)
 *     (at least 1, at most C - 1) for training, the rest for evaluation.
 *
 * A meta-batch: support/x (T, N*K, C, S, S) in [0, 1], support/y one-hot
 * (T, N*K, N), query/x (T, N*Q, C, S, S), query/y (T, N*Q, N), task/classes
 * (T, N): the class id behind each label.  Images are label-major.
 *
 * Model (variables for one task): blockB/conv/w (F, Cin, 3, 3), blockB/conv/b
 * (F), blockB/bn/gamma (F), blockB/bn/beta (F) for B = 1..4, each block conv
 * 3x3 stride 1 padding 1, batch norm in training mode (batch statistics of
 * the set being classified, as in MAML), ReLU, max-pool 2x2; then
 * head/w (F * s * s, N), head/b (N) with s = S halved (floored) four times.
 * Cost: softmax cross-entropy, averaged over the tasks of the batch.
 * Batched mode (variables with a leading task axis) is supported: the cost
 * slices each task's variables and images and runs the network per task
 * (a convolution has no batched-weights form), so it costs as much as the
 * unbatched mode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "metastep/metastep.h"
#include "data.h"

#define BLOCKS 4
#define BN_EPS 1e-5
#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist"

/* ------------------------------------------------------------- options */

static struct {
    char *data, *labels;
    int ways, query, filters, channels, size;
    resize_mode resize;
    double split;
} opt = {NULL, NULL, 5, 15, 32, 1, 28, RESIZE_BILINEAR, 0.8};

/* the loaded data, valid while `loaded` */
static struct {
    bool loaded;
    imageset a, b;            /* b used only by the Fashion-MNIST layout */
    class_split train, test;
    char desc_train[4352], desc_test[4352];
} cache;

static void unload(void)
{
    split_free(&cache.train);
    split_free(&cache.test);
    imageset_free(&cache.a);
    imageset_free(&cache.b);
    cache.loaded = false;
}

__attribute__((destructor)) static void images_fini(void)
{
    unload();
    free(opt.data);
    free(opt.labels);
    opt.data = opt.labels = NULL;
}

static bool parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

static ms_status set_string(char **dst, const char *v)
{
    char *c = strdup(v);
    if (!c)
        return ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    free(*dst);
    *dst = c;
    return MS_OK;
}

static ms_status configure(const char *key, const char *value)
{
    if (!key || !value)
        return ms_record_error(MS_ERR_NULL_ARG, "images configure: %s is NULL",
                               key ? "value" : "key");
    bool ok = true, data = false;
    ms_status st = MS_OK;
    if (!strcmp(key, "data")) {
        ok = *value != '\0';
        if (ok)
            st = set_string(&opt.data, value);
        data = true;
    } else if (!strcmp(key, "labels")) {
        ok = *value != '\0';
        if (ok)
            st = set_string(&opt.labels, value);
        data = true;
    } else if (!strcmp(key, "ways")) {
        ok = parse_int(value, 2, 1000, &opt.ways);
    } else if (!strcmp(key, "query")) {
        ok = parse_int(value, 1, 10000, &opt.query);
    } else if (!strcmp(key, "filters")) {
        ok = parse_int(value, 1, 1024, &opt.filters);
    } else if (!strcmp(key, "channels")) {
        int c = 0;
        ok = parse_int(value, 1, 3, &c) && c != 2;
        if (!strcmp(value, "gray") || !strcmp(value, "grey"))
            c = 1, ok = true;
        else if (!strcmp(value, "rgb"))
            c = 3, ok = true;
        if (ok)
            opt.channels = c;
        data = true;
    } else if (!strcmp(key, "size")) {
        ok = parse_int(value, 16, 512, &opt.size);
        data = true;
    } else if (!strcmp(key, "resize")) {
        ok = !strcmp(value, "bilinear") || !strcmp(value, "area");
        if (ok)
            opt.resize = !strcmp(value, "area") ? RESIZE_AREA : RESIZE_BILINEAR;
        data = true;
    } else if (!strcmp(key, "split")) {
        char *end;
        double v = strtod(value, &end);
        ok = *value && !*end && v > 0 && v < 1;
        if (ok)
            opt.split = v;
        data = true;
    } else {
        return ms_record_error(MS_ERR_KEY, "images: unknown option '%s' (known: data, labels, "
                               "ways, query, filters, channels, size, resize, split)", key);
    }
    if (!ok)
        return ms_record_error(MS_ERR_INVALID_ARG, "images: invalid value '%s' for %s (%s)", value,
                               key,
                               !strcmp(key, "ways") ? "an integer in 2..1000"
                               : !strcmp(key, "query") ? "an integer in 1..10000"
                               : !strcmp(key, "filters") ? "an integer in 1..1024"
                               : !strcmp(key, "channels") ? "1 | gray | 3 | rgb"
                               : !strcmp(key, "size") ? "an integer in 16..512 (four 2x2 "
                                                        "poolings)"
                               : !strcmp(key, "resize") ? "bilinear | area"
                               : !strcmp(key, "split") ? "a fraction strictly between 0 and 1"
                                                       : "a non-empty path");
    if (st == MS_OK && data)
        unload();
    return st;
}

/* ---------------------------------------------------------------- data */

static bool keep_even(int k, int n, void *u) { (void)n; (void)u; return k % 2 == 0; }
static bool keep_odd(int k, int n, void *u) { (void)n; (void)u; return k % 2 == 1; }
static int split_point(int n)
{
    int t = (int)floor(opt.split * n);
    return t < 1 ? 1 : t > n - 1 ? n - 1 : t;
}
static bool keep_first(int k, int n, void *u) { (void)u; return k < split_point(n); }
static bool keep_rest(int k, int n, void *u) { (void)u; return k >= split_point(n); }

/* dir/base or dir/base.gz, whichever exists */
static bool find_idx(const char *dir, const char *base, char *path, size_t cap)
{
    struct stat st;
    snprintf(path, cap, "%s/%s.gz", dir, base);
    if (stat(path, &st) == 0)
        return true;
    snprintf(path, cap, "%s/%s", dir, base);
    return stat(path, &st) == 0;
}

static ms_status load(void)
{
    if (cache.loaded)
        return MS_OK;
    const char *data = opt.data ? opt.data : DEFAULT_DATA;
    struct stat st;
    if (stat(data, &st) != 0)
        return ms_record_error(MS_ERR_IO, "images: the data %s does not exist%s", data,
                               opt.data ? "" : " (install Debian's dataset-fashion-mnist, or "
                                               "give --data PATH)");
    ms_status rc;
    char ti[4096], tl[4096], ei[4096], el[4096];
    if (S_ISDIR(st.st_mode) && opt.labels)
        return ms_record_error(MS_ERR_INVALID_ARG, "images: labels is given, so data must be an "
                               "IDX image file, but %s is a folder", data);
    if (S_ISDIR(st.st_mode) && find_idx(data, "train-images-idx3-ubyte", ti, sizeof ti)) {
        if (!find_idx(data, "train-labels-idx1-ubyte", tl, sizeof tl) ||
            !find_idx(data, "t10k-images-idx3-ubyte", ei, sizeof ei) ||
            !find_idx(data, "t10k-labels-idx1-ubyte", el, sizeof el))
            return ms_record_error(MS_ERR_IO, "images: %s has train-images-idx3-ubyte but not "
                                   "all of train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                   "t10k-labels-idx1-ubyte (optionally .gz)", data);
        rc = idx_load(ti, tl, opt.channels, opt.size, opt.resize, &cache.a);
        if (rc == MS_OK)
            rc = idx_load(ei, el, opt.channels, opt.size, opt.resize, &cache.b);
        if (rc == MS_OK)
            rc = split_make(&cache.a, keep_even, NULL, &cache.train);
        if (rc == MS_OK)
            rc = split_make(&cache.b, keep_odd, NULL, &cache.test);
        snprintf(cache.desc_train, sizeof cache.desc_train, "meta-training (even classes of %s)", ti);
        snprintf(cache.desc_test, sizeof cache.desc_test, "evaluation (odd classes of %s)", ei);
    } else if (S_ISDIR(st.st_mode)) {
        rc = png_tree_load(data, opt.channels, opt.size, opt.resize, &cache.a);
        if (rc == MS_OK && cache.a.nclasses < 2)
            rc = ms_record_error(MS_ERR_INVALID_ARG, "images: %s has %d class folder; the "
                                 "disjoint meta-training/evaluation split needs at least 2",
                                 data, cache.a.nclasses);
        if (rc == MS_OK)
            rc = split_make(&cache.a, keep_first, NULL, &cache.train);
        if (rc == MS_OK)
            rc = split_make(&cache.a, keep_rest, NULL, &cache.test);
        snprintf(cache.desc_train, sizeof cache.desc_train,
                 "meta-training (the first %d class folders of %s)", cache.train.nclasses, data);
        snprintf(cache.desc_test, sizeof cache.desc_test,
                 "evaluation (the last %d class folders of %s)", cache.test.nclasses, data);
    } else {
        if (!opt.labels)
            return ms_record_error(MS_ERR_INVALID_ARG, "images: %s is a file: give its IDX "
                                   "label file with --labels (or a folder as --data)", data);
        rc = idx_load(data, opt.labels, opt.channels, opt.size, opt.resize, &cache.a);
        if (rc == MS_OK)
            rc = split_make(&cache.a, keep_even, NULL, &cache.train);
        if (rc == MS_OK)
            rc = split_make(&cache.a, keep_odd, NULL, &cache.test);
        snprintf(cache.desc_train, sizeof cache.desc_train, "meta-training (even classes of %s)", data);
        snprintf(cache.desc_test, sizeof cache.desc_test, "evaluation (odd classes of %s)", data);
    }
    if (rc != MS_OK) {
        unload();
        return rc;
    }
    cache.loaded = true;
    return MS_OK;
}

/* c[key] = t, the container keeping the only reference outside scopes */
static ms_status put(ms_container *c, const char *key, ms_tensor *t)
{
    if (!t)
        return ms_last_error(NULL);
    ms_status st = ms_container_set(c, key, t);
    if (ms_scope_depth() == 0)
        ms_release(t);
    return st;
}

static ms_container *draw(bool heldout, int num_tasks, int k, uint64_t seed, ms_dtype dt)
{
    if (num_tasks < 1 || k < 1) {
        ms_record_error(MS_ERR_INVALID_ARG, "images: %d tasks of %d shots: both must be >= 1",
                        num_tasks, k);
        return NULL;
    }
    if (dt != MS_F32 && dt != MS_F64) {
        ms_record_error(MS_ERR_DTYPE, "images: float32 or float64 only");
        return NULL;
    }
    if (load() != MS_OK)
        return NULL;
    const class_split *s = heldout ? &cache.test : &cache.train;
    const imageset *set = s->set;
    int n = opt.ways, q = opt.query, c = set->c, h = set->h, w = set->w;
    size_t per = (size_t)c * h * w, T = (size_t)num_tasks;
    size_t ns = T * n * k, nq = T * n * q;
    int *cls = malloc(sizeof(int) * T * n), *si = malloc(sizeof(int) * ns),
        *qi = malloc(sizeof(int) * nq);
    size_t esz = ms_dtype_size(dt);
    char *xs = malloc(esz * ns * per), *xq = malloc(esz * nq * per);
    char *ys = calloc(ns * n, esz), *yq = calloc(nq * n, esz), *tc = malloc(esz * T * n);
    ms_status st = cls && si && qi && xs && xq && ys && yq && tc
                       ? MS_OK
                       : ms_record_error(MS_ERR_NOMEM, "images: out of memory for %d tasks",
                                         num_tasks);
    uint64_t rng = seed * 0x2545f4914f6cdd1dull + (heldout ? 0x7e57ull : 0x7a1full);
    for (size_t t = 0; st == MS_OK && t < T; t++)
        st = episode_draw(s, heldout ? cache.desc_test : cache.desc_train, n, k, q, &rng,
                          cls + t * n, si + t * n * k, qi + t * n * q);
#define FILL(buf, i, v)                                         \
    do {                                                        \
        if (dt == MS_F32)                                       \
            ((float *)(buf))[i] = (float)(v);                   \
        else                                                    \
            ((double *)(buf))[i] = (v);                         \
    } while (0)
    for (size_t t = 0; st == MS_OK && t < T; t++) {
        for (int j = 0; j < n; j++) {
            FILL(tc, t * n + j, cls[t * n + j]);
            for (int p = 0; p < k; p++) {
                size_t r = t * n * k + (size_t)j * k + p;
                const uint8_t *px = set->pix + per * (size_t)si[r];
                for (size_t e = 0; e < per; e++)
                    FILL(xs, r * per + e, px[e] / 255.0);
                FILL(ys, r * n + j, 1.0);
            }
            for (int p = 0; p < q; p++) {
                size_t r = t * n * q + (size_t)j * q + p;
                const uint8_t *px = set->pix + per * (size_t)qi[r];
                for (size_t e = 0; e < per; e++)
                    FILL(xq, r * per + e, px[e] / 255.0);
                FILL(yq, r * n + j, 1.0);
            }
        }
    }
#undef FILL
    ms_container *b = NULL;
    if (st == MS_OK) {
        ms_no_grad_push();
        ms_scope_push();
        b = ms_container_new();
        st = b ? MS_OK : MS_ERR_NOMEM;
        int64_t sx[5] = {num_tasks, (int64_t)n * k, c, h, w}, qx[5] = {num_tasks, (int64_t)n * q, c, h, w};
        int64_t sy[3] = {num_tasks, (int64_t)n * k, n}, qy[3] = {num_tasks, (int64_t)n * q, n};
        int64_t ct[2] = {num_tasks, n};
        if (!st) st = put(b, "support/x", ms_tensor_from_data(dt, 5, sx, xs));
        if (!st) st = put(b, "support/y", ms_tensor_from_data(dt, 3, sy, ys));
        if (!st) st = put(b, "query/x", ms_tensor_from_data(dt, 5, qx, xq));
        if (!st) st = put(b, "query/y", ms_tensor_from_data(dt, 3, qy, yq));
        if (!st) st = put(b, "task/classes", ms_tensor_from_data(dt, 2, ct, tc));
        ms_scope_pop();
        ms_no_grad_pop();
        if (st) {
            ms_container_release(b);
            b = NULL;
        }
    }
    free(cls);
    free(si);
    free(qi);
    free(xs);
    free(xq);
    free(ys);
    free(yq);
    free(tc);
    return b;
}

static ms_container *sample(int num_tasks, int k, uint64_t seed, ms_dtype dt)
{
    return draw(false, num_tasks, k, seed, dt);
}

static ms_container *sample_heldout(int num_tasks, int k, uint64_t seed, ms_dtype dt)
{
    return draw(true, num_tasks, k, seed, dt);
}

/* --------------------------------------------------------------- model */

static int final_side(void)
{
    int s = opt.size;
    for (int b = 0; b < BLOCKS; b++)
        s /= 2;
    return s;
}

static ms_container *init_variables(uint64_t seed, ms_dtype dt)
{
    /* PyTorch's defaults: conv and linear U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
     * batch norm gamma 1, beta 0 */
    ms_container *v = ms_container_new();
    int f = opt.filters, cin = opt.channels, s = final_side();
    char key[64];
    ms_status st = v ? MS_OK : MS_ERR_NOMEM;
    for (int b = 0; st == MS_OK && b < BLOCKS; b++) {
        int in = b == 0 ? cin : f;
        double bound = 1.0 / sqrt(9.0 * in);
        int64_t ws[4] = {f, in, 3, 3}, fs[1] = {f};
        snprintf(key, sizeof key, "block%d/conv/w", b + 1);
        st = put(v, key, ms_random_uniform(dt, 4, ws, -bound, bound, seed * 64 + 2 * (uint64_t)b));
        snprintf(key, sizeof key, "block%d/conv/b", b + 1);
        if (!st) st = put(v, key, ms_random_uniform(dt, 1, fs, -bound, bound, seed * 64 + 2 * (uint64_t)b + 1));
        snprintf(key, sizeof key, "block%d/bn/gamma", b + 1);
        if (!st) st = put(v, key, ms_ones(dt, 1, fs));
        snprintf(key, sizeof key, "block%d/bn/beta", b + 1);
        if (!st) st = put(v, key, ms_zeros(dt, 1, fs));
    }
    int64_t in = (int64_t)f * s * s, hw[2] = {in, opt.ways}, hb[1] = {opt.ways};
    double bound = 1.0 / sqrt((double)in);
    if (!st) st = put(v, "head/w", ms_random_uniform(dt, 2, hw, -bound, bound, seed * 64 + 20));
    if (!st) st = put(v, "head/b", ms_random_uniform(dt, 1, hb, -bound, bound, seed * 64 + 21));
    if (st) {
        ms_container_release(v);
        return NULL;
    }
    return v;
}

/* Variable `key` of task t: its slice when the variables are batched. */
static ms_tensor *var(const ms_container *v, const char *key, int t, bool batched)
{
    ms_tensor *x = ms_container_get(v, key);
    return batched && x ? ms_squeeze(ms_slice(x, 0, t, t + 1), 0) : x;
}

/* logits (n, N) of images x (n, C, H, W) */
static ms_tensor *forward(const ms_container *v, int t, bool batched, const ms_tensor *x)
{
    ms_tensor *h = (ms_tensor *)x;
    char w[32], b[32], g[32], be[32];
    for (int k = 1; k <= BLOCKS; k++) {
        snprintf(w, sizeof w, "block%d/conv/w", k);
        snprintf(b, sizeof b, "block%d/conv/b", k);
        snprintf(g, sizeof g, "block%d/bn/gamma", k);
        snprintf(be, sizeof be, "block%d/bn/beta", k);
        h = ms_conv2d(h, var(v, w, t, batched), var(v, b, t, batched), 1, 1);
        h = ms_batch_norm(h, var(v, g, t, batched), var(v, be, t, batched), BN_EPS);
        h = ms_max_pool2d(ms_relu(h), 2, 2);
    }
    if (!h)
        return NULL;
    const int64_t *s = ms_tensor_shape(h);
    int64_t flat[2] = {s[0], s[1] * s[2] * s[3]};
    return ms_add(ms_matmul(ms_reshape(h, 2, flat), var(v, "head/w", t, batched)),
                  var(v, "head/b", t, batched));
}

/* Task t's images or labels: leaf (T, M, ...) -> (M, ...) */
static ms_tensor *task_part(const ms_container *batch, const char *key, int t)
{
    ms_tensor *a = ms_container_get(batch, key);
    if (!a) {
        ms_record_error(MS_ERR_KEY, "images: the batch has no %s", key);
        return NULL;
    }
    return ms_squeeze(ms_slice(a, 0, t, t + 1), 0);
}

/* Mean over the batch's tasks of the cross-entropy on one of its sets. */
static ms_tensor *xent(const ms_container *batch, const ms_container *v, const char *x,
                       const char *y)
{
    ms_tensor *w1 = ms_container_get(v, "block1/conv/w"), *xs = ms_container_get(batch, x);
    if (!w1 || !xs) {
        ms_record_error(MS_ERR_KEY, "images: %s", !w1 ? "the variables have no block1/conv/w"
                                                      : "the batch has no images");
        return NULL;
    }
    bool batched = ms_tensor_ndim(w1) == 5;
    int T = (int)ms_tensor_shape(xs)[0];
    if (batched && ms_tensor_shape(w1)[0] != T) {
        ms_record_error(MS_ERR_SHAPE, "images: batched variables for %lld tasks, a batch of %d",
                        (long long)ms_tensor_shape(w1)[0], T);
        return NULL;
    }
    ms_tensor *sum = NULL;
    for (int t = 0; t < T; t++) {
        ms_tensor *l = ms_softmax_cross_entropy(forward(v, t, batched, task_part(batch, x, t)),
                                                task_part(batch, y, t));
        sum = sum ? ms_add(sum, l) : l;
    }
    return T == 1 ? sum : ms_div_scalar(sum, (double)T);
}

static ms_tensor *support_cost(const ms_container *batch, const ms_container *v, void *user)
{
    (void)user;
    return xent(batch, v, "support/x", "support/y");
}

static ms_tensor *query_cost(const ms_container *batch, const ms_container *v, void *user)
{
    (void)user;
    return xent(batch, v, "query/x", "query/y");
}

/* ----------------------------------------------------------- evaluation */

static ms_tensor *support_of(const ms_container *v, void *batch)
{
    return support_cost(batch, v, NULL);
}

static double value(const ms_tensor *t, int64_t i)
{
    return ms_tensor_dtype(t) == MS_F32 ? (double)((const float *)ms_tensor_data(t))[i]
                                        : ((const double *)ms_tensor_data(t))[i];
}

/* Fraction of rows whose largest logit is the one-hot's label. */
static double accuracy(const ms_tensor *logits, const ms_tensor *onehot)
{
    int64_t n = ms_tensor_shape(logits)[0], k = ms_tensor_shape(logits)[1], right = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = 0, label = 0;
        for (int64_t j = 1; j < k; j++) {
            if (value(logits, i * k + j) > value(logits, i * k + best))
                best = j;
            if (value(onehot, i * k + j) > value(onehot, i * k + label))
                label = j;
        }
        right += best == label;
    }
    return n ? (double)right / (double)n : 0.0;
}

/* Each task adapts on its own from the shared variables with plain gradient
 * descent; the query loss and accuracy after 0, 1 and 10 steps, with a 95%
 * confidence interval of the accuracy over the tasks. */
static ms_status evaluate(const ms_container *variables, int num_tasks, int k, double inner_lr,
                          uint64_t seed, ms_dtype dt, metastep_eval *out)
{
    if (!variables || !out || num_tasks < 1 || k < 1)
        return ms_record_error(MS_ERR_INVALID_ARG, "images evaluate: bad arguments (%d tasks, "
                               "k %d)", num_tasks, k);
    *out = (metastep_eval){.steps = {0, 1, 10}, .has_accuracy = true};
    ms_container *batch = draw(true, num_tasks, k, seed, dt);
    if (!batch)
        return ms_last_error(NULL);
    int n = 0;
    ms_container **subs = NULL;
    ms_status st = ms_container_unstack(batch, true, &n, &subs);
    double *acc = calloc((size_t)num_tasks * METASTEP_EVAL_POINTS, sizeof(double));
    if (st == MS_OK && !acc)
        st = ms_record_error(MS_ERR_NOMEM, "images evaluate: out of memory");
    for (int t = 0; st == MS_OK && t < n; t++) {
        ms_container *v = ms_container_copy(variables);
        st = v ? MS_OK : ms_last_error(NULL);
        int point = 0;
        for (int step = 0; st == MS_OK && step <= 10; step++) {
            ms_scope_push();
            if (step == out->steps[point]) {
                ms_no_grad_push();
                ms_tensor *qx = task_part(subs[t], "query/x", 0), *qy = task_part(subs[t], "query/y", 0);
                ms_tensor *logits = forward(v, 0, false, qx);
                ms_tensor *loss = ms_softmax_cross_entropy(logits, qy);
                if (!loss) {
                    st = ms_last_error(NULL);
                } else {
                    out->loss[point] += ms_tensor_item(loss) / n;
                    acc[(size_t)point * num_tasks + t] = accuracy(logits, qy);
                }
                point++;
                ms_no_grad_pop();
            }
            if (st == MS_OK && step < 10) {
                ms_container *g = NULL, *next = NULL;
                ms_tensor *y = NULL;
                st = ms_execute_with_gradients(support_of, subs[t], v, false, &y, &g);
                if (st == MS_OK)
                    next = metastep_gradient_descent_update(v, g, inner_lr, true);
                if (st == MS_OK && !next)
                    st = ms_last_error(NULL);
                if (next) {
                    ms_container_release(v);
                    v = next;
                }
                ms_container_release(g);
            }
            ms_scope_pop();
        }
        ms_container_release(v);
    }
    for (int p = 0; st == MS_OK && p < METASTEP_EVAL_POINTS; p++) {
        double m = 0, ss = 0;
        for (int t = 0; t < n; t++)
            m += acc[(size_t)p * num_tasks + t] / n;
        for (int t = 0; t < n; t++) {
            double d = acc[(size_t)p * num_tasks + t] - m;
            ss += d * d;
        }
        out->accuracy[p] = m;
        out->accuracy_ci95[p] = n > 1 ? 1.96 * sqrt(ss / (n - 1)) / sqrt((double)n) : NAN;
    }
    for (int t = 0; t < n; t++)
        ms_container_release(subs[t]);
    free(subs);
    free(acc);
    ms_container_release(batch);
    return st;
}

/* Logits (n, ways) of images x (n, C, H, W) for one task's variables. */
static ms_tensor *predict(const ms_container *variables, const ms_tensor *x)
{
    return forward(variables, 0, false, x);
}

static const metastep_task table = {
    .header = {METASTEP_TASK_ABI_MAJOR, METASTEP_TASK_ABI_MINOR, sizeof(metastep_task), "images",
               "N-way K-shot image classification (Fashion-MNIST IDX or a PNG class tree; "
               "disjoint train/eval classes); Conv4 (MAML), softmax cross-entropy"},
    .init_variables = init_variables,
    .inner_cost = support_cost,
    .outer_cost = query_cost,
    .sample = sample,
    .evaluate = evaluate,
    .predict = predict,
    .truth = NULL,
    .configure = configure,
    .sample_heldout = sample_heldout,
};

MS_PLUGIN_EXPORT const metastep_task *metastep_task_entry(void) { return &table; }
