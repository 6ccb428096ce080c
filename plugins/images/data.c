/* IDX and PNG-tree image sets, resizing, class splits and episodes. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "data.h"

#define MAX_SIDE 4096
#define MAX_IMAGES 50000000

uint64_t rng_next(uint64_t *state)
{
    /* splitmix64 */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [0, n) without modulo bias worth speaking of (n is small) */
static int rng_below(uint64_t *state, int n)
{
    return (int)((rng_next(state) >> 11) * (1.0 / 9007199254740992.0) * n);
}

void imageset_free(imageset *s)
{
    if (!s)
        return;
    for (int i = 0; s->names && i < s->nclasses; i++)
        free(s->names[i]);
    free(s->names);
    free(s->pix);
    free(s->label);
    *s = (imageset){0};
}

/* ------------------------------------------------------------ resizing */

static void resize_bilinear(const uint8_t *src, int sh, int sw, uint8_t *dst, int dh, int dw)
{
    /* half-pixel centres, edges clamped (PyTorch's align_corners=False) */
    double ry = (double)sh / dh, rx = (double)sw / dw;
    for (int y = 0; y < dh; y++) {
        double fy = (y + 0.5) * ry - 0.5;
        if (fy < 0)
            fy = 0;
        int y0 = (int)fy, y1 = y0 + 1 < sh ? y0 + 1 : sh - 1;
        double wy = fy - y0;
        for (int x = 0; x < dw; x++) {
            double fx = (x + 0.5) * rx - 0.5;
            if (fx < 0)
                fx = 0;
            int x0 = (int)fx, x1 = x0 + 1 < sw ? x0 + 1 : sw - 1;
            double wx = fx - x0;
            double v = (1 - wy) * ((1 - wx) * src[y0 * sw + x0] + wx * src[y0 * sw + x1]) +
                       wy * ((1 - wx) * src[y1 * sw + x0] + wx * src[y1 * sw + x1]);
            dst[y * dw + x] = (uint8_t)lround(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

/* Each destination pixel is the mean of the source area it covers, partial
 * source pixels weighted by the covered fraction (exact for any ratio). */
static void resize_area(const uint8_t *src, int sh, int sw, uint8_t *dst, int dh, int dw)
{
    double ry = (double)sh / dh, rx = (double)sw / dw;
    for (int y = 0; y < dh; y++) {
        double y0 = y * ry, y1 = (y + 1) * ry;
        for (int x = 0; x < dw; x++) {
            double x0 = x * rx, x1 = (x + 1) * rx, sum = 0, area = 0;
            for (int sy = (int)y0; sy < sh && sy < y1; sy++) {
                double cy = fmin(y1, sy + 1) - fmax(y0, sy);
                if (cy <= 0)
                    continue;
                for (int sx = (int)x0; sx < sw && sx < x1; sx++) {
                    double cx = fmin(x1, sx + 1) - fmax(x0, sx);
                    if (cx <= 0)
                        continue;
                    sum += cy * cx * src[sy * sw + sx];
                    area += cy * cx;
                }
            }
            double v = area > 0 ? sum / area : 0;
            dst[y * dw + x] = (uint8_t)lround(v > 255 ? 255 : v);
        }
    }
}

void image_resize(const uint8_t *src, int c, int sh, int sw, uint8_t *dst, int dh, int dw,
                  resize_mode mode)
{
    for (int k = 0; k < c; k++) {
        const uint8_t *s = src + (size_t)k * sh * sw;
        uint8_t *d = dst + (size_t)k * dh * dw;
        if (sh == dh && sw == dw)
            memcpy(d, s, (size_t)sh * sw);
        else if (mode == RESIZE_AREA)
            resize_area(s, sh, sw, d, dh, dw);
        else
            resize_bilinear(s, sh, sw, d, dh, dw);
    }
}

/* ----------------------------------------------------------------- IDX */

/* Read a whole file, gunzipping it when it is gzipped (zlib reads plain
 * files as they are).  *len receives its (uncompressed) size. */
static ms_status read_all(const char *path, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    struct stat st;
    if (stat(path, &st) != 0)
        return ms_record_error(MS_ERR_IO, "images: cannot open %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return ms_record_error(MS_ERR_IO, "images: %s is a directory, not an IDX file", path);
    gzFile f = gzopen(path, "rb");
    if (!f)
        return ms_record_error(MS_ERR_IO, "images: cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    ms_status rc = buf ? MS_OK : ms_record_error(MS_ERR_NOMEM, "images: out of memory reading %s", path);
    while (rc == MS_OK) {
        if (n == cap) {
            if (cap > ((size_t)1 << 34)) {
                rc = ms_record_error(MS_ERR_FORMAT, "images: %s is too large", path);
                break;
            }
            uint8_t *b = realloc(buf, cap * 2);
            if (!b) {
                rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory reading %s", path);
                break;
            }
            buf = b;
            cap *= 2;
        }
        int r = gzread(f, buf + n, (unsigned)(cap - n > (1u << 30) ? (1u << 30) : cap - n));
        if (r < 0) {
            int e;
            const char *m = gzerror(f, &e);
            rc = ms_record_error(MS_ERR_FORMAT, "images: %s: corrupt gzip data (%s)", path, m);
        } else if (r == 0) {
            break;
        } else {
            n += (size_t)r;
        }
    }
    gzclose(f);
    if (rc != MS_OK) {
        free(buf);
        return rc;
    }
    *data = buf;
    *len = n;
    return MS_OK;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

ms_status idx_load(const char *images, const char *labels, int c, int size, resize_mode mode,
                   imageset *out)
{
    *out = (imageset){0};
    uint8_t *im = NULL, *lb = NULL;
    size_t ni = 0, nl = 0;
    ms_status rc = read_all(images, &im, &ni);
    if (rc == MS_OK)
        rc = read_all(labels, &lb, &nl);
    if (rc != MS_OK)
        goto done;
    if (ni < 16 || be32(im) != 0x00000803) {
        rc = ms_record_error(MS_ERR_FORMAT, "images: %s is not an IDX image file (want magic "
                             "0x00000803: unsigned bytes, 3 dimensions)", images);
        goto done;
    }
    if (nl < 8 || be32(lb) != 0x00000801) {
        rc = ms_record_error(MS_ERR_FORMAT, "images: %s is not an IDX label file (want magic "
                             "0x00000801: unsigned bytes, 1 dimension)", labels);
        goto done;
    }
    uint32_t n = be32(im + 4), rows = be32(im + 8), cols = be32(im + 12), nlab = be32(lb + 4);
    if (n == 0 || n > MAX_IMAGES || rows == 0 || rows > MAX_SIDE || cols == 0 || cols > MAX_SIDE) {
        rc = ms_record_error(MS_ERR_FORMAT, "images: %s: unsupported dimensions %u x %u x %u",
                             images, n, rows, cols);
        goto done;
    }
    if ((uint64_t)ni != 16 + (uint64_t)n * rows * cols) {
        rc = ms_record_error(MS_ERR_FORMAT, "images: %s: %zu bytes, but %u images of %u x %u "
                             "need %llu", images, ni, n, rows, cols,
                             (unsigned long long)(16 + (uint64_t)n * rows * cols));
        goto done;
    }
    if (nlab != n || nl != 8 + (size_t)nlab) {
        rc = ms_record_error(MS_ERR_FORMAT, "images: %s holds %u labels in %zu bytes, but %s has "
                             "%u images", labels, nlab, nl, images, n);
        goto done;
    }
    int maxl = 0;
    for (uint32_t i = 0; i < n; i++)
        maxl = lb[8 + i] > maxl ? lb[8 + i] : maxl;
    out->n = (int)n;
    out->c = c;
    out->h = out->w = size;
    out->nclasses = maxl + 1;
    size_t per = (size_t)c * size * size;
    out->pix = malloc(per * n);
    out->label = malloc(sizeof(int) * n);
    out->names = calloc((size_t)out->nclasses, sizeof(char *));
    uint8_t *one = malloc((size_t)size * size);
    if (!out->pix || !out->label || !out->names || !one) {
        free(one);
        rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory for %u images", n);
        goto done;
    }
    for (int k = 0; k < out->nclasses; k++) {
        char name[16];
        snprintf(name, sizeof name, "%d", k);
        if (!(out->names[k] = strdup(name))) {
            free(one);
            rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory");
            goto done;
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        out->label[i] = lb[8 + i];
        image_resize(im + 16 + (size_t)i * rows * cols, 1, (int)rows, (int)cols, one, size, size,
                     mode);
        for (int k = 0; k < c; k++)
            memcpy(out->pix + per * i + (size_t)k * size * size, one, (size_t)size * size);
    }
    free(one);
done:
    free(im);
    free(lb);
    if (rc != MS_OK)
        imageset_free(out);
    return rc;
}

/* ----------------------------------------------------------------- PNG */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sorted names of dir's entries that are directories (want_dirs) or
 * *.png files; hidden entries skipped. */
static ms_status list_dir(const char *dir, bool want_dirs, char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return ms_record_error(MS_ERR_IO, "images: cannot open the folder %s: %s", dir,
                               strerror(errno));
    int cap = 0;
    ms_status rc = MS_OK;
    struct dirent *e;
    char path[4096];
    while (rc == MS_OK && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        size_t len = strlen(e->d_name);
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        bool ok = want_dirs ? S_ISDIR(st.st_mode)
                            : S_ISREG(st.st_mode) && len > 4 &&
                                  strcasecmp(e->d_name + len - 4, ".png") == 0;
        if (!ok)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 64;
            char **b = realloc(*names, sizeof(char *) * (size_t)cap);
            if (!b) {
                rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory listing %s", dir);
                break;
            }
            *names = b;
        }
        if (!((*names)[*n] = strdup(e->d_name)))
            rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory listing %s", dir);
        else
            (*n)++;
    }
    closedir(d);
    if (rc != MS_OK) {
        for (int i = 0; i < *n; i++)
            free((*names)[i]);
        free(*names);
        *names = NULL;
        *n = 0;
        return rc;
    }
    if (*n > 1)
        qsort(*names, (size_t)*n, sizeof(char *), cmp_str);
    return MS_OK;
}

static void free_names(char **names, int n)
{
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Decode one PNG to c channels (gray or RGB, alpha composited on black by
 * libpng's simplified API) and resize it into dst. */
static ms_status png_read(const char *path, int c, int size, resize_mode mode, uint8_t *dst)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    FILE *f = fopen(path, "rb");
    if (!f)
        return ms_record_error(MS_ERR_IO, "images: cannot open %s: %s", path, strerror(errno));
    if (!png_image_begin_read_from_stdio(&img, f)) {
        ms_status rc = ms_record_error(MS_ERR_FORMAT, "images: %s: not a PNG image (%s)", path,
                                       img.message);
        png_image_free(&img);
        fclose(f);
        return rc;
    }
    if (img.width == 0 || img.height == 0 || img.width > MAX_SIDE || img.height > MAX_SIDE) {
        png_image_free(&img);
        fclose(f);
        return ms_record_error(MS_ERR_FORMAT, "images: %s: unsupported size %u x %u", path,
                               img.width, img.height);
    }
    img.format = c == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    int w = (int)img.width, h = (int)img.height;
    size_t n = (size_t)w * h * c;
    uint8_t *buf = malloc(n), *planar = malloc(n);
    if (!buf || !planar) {
        free(buf);
        free(planar);
        png_image_free(&img);
        fclose(f);
        return ms_record_error(MS_ERR_NOMEM, "images: out of memory decoding %s", path);
    }
    bool ok = png_image_finish_read(&img, NULL, buf, 0, NULL);
    fclose(f);
    if (!ok) {
        ms_status rc = ms_record_error(MS_ERR_FORMAT, "images: %s: corrupt PNG (%s)", path,
                                       img.message);
        free(buf);
        free(planar);
        png_image_free(&img);
        return rc;
    }
    for (int k = 0; k < c; k++) /* interleaved to channel-major */
        for (size_t i = 0; i < (size_t)w * h; i++)
            planar[(size_t)k * w * h + i] = buf[i * (size_t)c + (size_t)k];
    image_resize(planar, c, h, w, dst, size, size, mode);
    free(buf);
    free(planar);
    png_image_free(&img);
    return MS_OK;
}

ms_status png_tree_load(const char *dir, int c, int size, resize_mode mode, imageset *out)
{
    *out = (imageset){0};
    char **classes = NULL;
    int nc = 0;
    ms_status rc = list_dir(dir, true, &classes, &nc);
    if (rc != MS_OK)
        return rc;
    if (nc == 0) {
        free(classes);
        return ms_record_error(MS_ERR_INVALID_ARG, "images: %s has no class folders (want "
                               "DATA/<class>/<image>.png)", dir);
    }
    /* first pass: count */
    char ***files = calloc((size_t)nc, sizeof(char **));
    int *nf = calloc((size_t)nc, sizeof(int));
    char path[4096];
    int total = 0;
    if (!files || !nf)
        rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    for (int k = 0; rc == MS_OK && k < nc; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, classes[k]);
        rc = list_dir(path, false, &files[k], &nf[k]);
        total += nf[k];
    }
    if (rc == MS_OK && total == 0)
        rc = ms_record_error(MS_ERR_INVALID_ARG, "images: the class folders of %s hold no .png "
                             "file", dir);
    size_t per = (size_t)c * size * size;
    if (rc == MS_OK) {
        out->n = total;
        out->c = c;
        out->h = out->w = size;
        out->nclasses = nc;
        out->names = classes;
        classes = NULL;
        out->pix = malloc(per * (size_t)total);
        out->label = malloc(sizeof(int) * (size_t)total);
        if (!out->pix || !out->label)
            rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory for %d images", total);
    }
    for (int k = 0, i = 0; rc == MS_OK && k < nc; k++) {
        for (int j = 0; rc == MS_OK && j < nf[k]; j++, i++) {
            snprintf(path, sizeof path, "%s/%s/%s", dir, out->names[k], files[k][j]);
            rc = png_read(path, c, size, mode, out->pix + per * (size_t)i);
            out->label[i] = k;
        }
    }
    for (int k = 0; files && k < nc; k++)
        free_names(files[k], nf[k]);
    free(files);
    free(nf);
    if (classes)
        free_names(classes, nc);
    if (rc != MS_OK)
        imageset_free(out);
    return rc;
}

/* --------------------------------------------------------------- splits */

void split_free(class_split *s)
{
    if (!s)
        return;
    for (int i = 0; s->index && i < s->nclasses; i++)
        free(s->index[i]);
    free(s->index);
    free(s->cls);
    free(s->count);
    *s = (class_split){0};
}

ms_status split_make(const imageset *set, bool (*keep)(int cls, int nclasses, void *user),
                     void *user, class_split *out)
{
    *out = (class_split){.set = set};
    int *map = malloc(sizeof(int) * (size_t)set->nclasses);
    out->cls = malloc(sizeof(int) * (size_t)set->nclasses);
    out->count = calloc((size_t)set->nclasses, sizeof(int));
    out->index = calloc((size_t)set->nclasses, sizeof(int *));
    if (!map || !out->cls || !out->count || !out->index) {
        free(map);
        split_free(out);
        return ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    }
    for (int k = 0; k < set->nclasses; k++) {
        map[k] = -1;
        if (keep(k, set->nclasses, user)) {
            map[k] = out->nclasses;
            out->cls[out->nclasses++] = k;
        }
    }
    int *size = calloc((size_t)out->nclasses + 1, sizeof(int));
    ms_status rc = size ? MS_OK : ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    for (int i = 0; rc == MS_OK && i < set->n; i++)
        if (map[set->label[i]] >= 0)
            size[map[set->label[i]]]++;
    for (int j = 0; rc == MS_OK && j < out->nclasses; j++)
        if (size[j] && !(out->index[j] = malloc(sizeof(int) * (size_t)size[j])))
            rc = ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    for (int i = 0; rc == MS_OK && i < set->n; i++) {
        int j = map[set->label[i]];
        if (j >= 0)
            out->index[j][out->count[j]++] = i;
    }
    free(size);
    free(map);
    if (rc != MS_OK)
        split_free(out);
    return rc;
}

ms_status episode_draw(const class_split *s, const char *what, int ways, int shots, int query,
                       uint64_t *rng, int *classes, int *support, int *query_idx)
{
    int need = shots + query, eligible = 0, smallest = -1;
    for (int j = 0; j < s->nclasses; j++) {
        if (s->count[j] >= need)
            eligible++;
        if (smallest < 0 || s->count[j] < smallest)
            smallest = s->count[j];
    }
    if (eligible < ways)
        return ms_record_error(MS_ERR_INVALID_ARG,
                               "images: %d ways of %d shots + %d query images need %d classes "
                               "with at least %d images each; the %s classes number %d, %d of "
                               "them with enough images (the smallest has %d)",
                               ways, shots, query, ways, need, what, s->nclasses, eligible,
                               smallest < 0 ? 0 : smallest);
    int *pool = malloc(sizeof(int) * (size_t)eligible);
    if (!pool)
        return ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    for (int j = 0, e = 0; j < s->nclasses; j++)
        if (s->count[j] >= need)
            pool[e++] = j;
    /* partial Fisher-Yates: the first `ways` entries are the classes, in
     * random order, which is the label order */
    for (int i = 0; i < ways; i++) {
        int r = i + rng_below(rng, eligible - i), t = pool[i];
        pool[i] = pool[r];
        pool[r] = t;
    }
    int maxc = 0;
    for (int i = 0; i < ways; i++)
        maxc = s->count[pool[i]] > maxc ? s->count[pool[i]] : maxc;
    int *tmp = malloc(sizeof(int) * (size_t)maxc);
    if (!tmp) {
        free(pool);
        return ms_record_error(MS_ERR_NOMEM, "images: out of memory");
    }
    for (int i = 0; i < ways; i++) {
        int j = pool[i], m = s->count[j];
        classes[i] = s->cls[j];
        memcpy(tmp, s->index[j], sizeof(int) * (size_t)m);
        for (int p = 0; p < need; p++) {
            int r = p + rng_below(rng, m - p), t = tmp[p];
            tmp[p] = tmp[r];
            tmp[r] = t;
        }
        for (int p = 0; p < shots; p++)
            support[i * shots + p] = tmp[p];
        for (int p = 0; p < query; p++)
            query_idx[i * query + p] = tmp[shots + p];
    }
    free(tmp);
    free(pool);
    return MS_OK;
}
