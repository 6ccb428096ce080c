/* The images task: IDX files (plain and gzipped) and PNG class trees written
 * here, resizing, episodes (shapes, one-hot labels, disjoint classes,
 * determinism), the Conv4 costs batched and unbatched, options, and errors
 * on malformed or insufficient data.  The data side (plugins/images/data.c)
 * is compiled in; the rest goes through the plugin's table. */
#include <check.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "metastep/metastep.h"
#include "testutil.h"
#include "../plugins/images/data.h"

#ifndef IMAGES_PLUGIN
#error "IMAGES_PLUGIN must name libmetastep-task-images.so"
#endif
#define FMNIST "/usr/share/datasets/fashion-mnist"

static char dir[256];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/metastep-images-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void cleanup_dir(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static void setup(void)
{
    setup_live();
    make_dir();
}

static void teardown(void)
{
    cleanup_dir();
    teardown_live();
}

/* ------------------------------------------------------------- writers */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void write_bytes(const char *path, const uint8_t *b, size_t n, bool gz)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(gzwrite(f, b, (unsigned)n), (int)n);
        ck_assert_int_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fwrite(b, 1, n, f), n);
        fclose(f);
    }
}

/* n images of rows x cols: pixel (i, y, x) = (7 i + 3 y + x) % 256; label i % classes */
static void write_idx(const char *images, const char *labels, int n, int rows, int cols,
                      int classes, bool gz)
{
    size_t ni = 16 + (size_t)n * rows * cols, nl = 8 + (size_t)n;
    uint8_t *im = malloc(ni), *lb = malloc(nl);
    put32(im, 0x803);
    put32(im + 4, (uint32_t)n);
    put32(im + 8, (uint32_t)rows);
    put32(im + 12, (uint32_t)cols);
    put32(lb, 0x801);
    put32(lb + 4, (uint32_t)n);
    for (int i = 0; i < n; i++) {
        lb[8 + i] = (uint8_t)(i % classes);
        for (int y = 0; y < rows; y++)
            for (int x = 0; x < cols; x++)
                im[16 + ((size_t)i * rows + y) * cols + x] = (uint8_t)((7 * i + 3 * y + x) % 256);
    }
    write_bytes(images, im, ni, gz);
    write_bytes(labels, lb, nl, gz);
    free(im);
    free(lb);
}

/* A w x h PNG of one value (gray) or colour (rgb); c = 1 or 3. */
static void write_png(const char *path, int w, int h, int c, const uint8_t *value)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = c == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    uint8_t *buf = malloc((size_t)w * h * c);
    for (int i = 0; i < w * h; i++)
        for (int k = 0; k < c; k++)
            buf[i * c + k] = value[k];
    ck_assert(png_image_write_to_file(&img, path, 0, buf, 0, NULL));
    free(buf);
}

/* dir/tree/<class cK>/<i>.png: `classes` classes of `per` images each; image i
 * of class k has the gray value 10 k + i (RGB for odd k, gray for even). */
static void write_tree(const char *root, int classes, int per)
{
    char path[512];
    ck_assert_int_eq(mkdir(root, 0755), 0);
    for (int k = 0; k < classes; k++) {
        snprintf(path, sizeof path, "%s/c%d", root, k);
        ck_assert_int_eq(mkdir(path, 0755), 0);
        for (int i = 0; i < per; i++) {
            snprintf(path, sizeof path, "%s/c%d/%02d.png", root, k, i);
            uint8_t v = (uint8_t)(10 * k + i), rgb[3] = {v, v, v};
            write_png(path, 20 + i, 24, k % 2 ? 3 : 1, rgb);
        }
    }
    /* ignored: a hidden entry and a non-PNG file */
    snprintf(path, sizeof path, "%s/c0/notes.txt", root);
    FILE *f = fopen(path, "w");
    fputs("not an image", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/.hidden", root);
    ck_assert_int_eq(mkdir(path, 0755), 0);
}

/* ------------------------------------------------------------ data side */

START_TEST(idx_plain_and_gzip)
{
    char im[512], lb[512], gim[512], glb[512];
    snprintf(im, sizeof im, "%s/img", dir);
    snprintf(lb, sizeof lb, "%s/lab", dir);
    snprintf(gim, sizeof gim, "%s/img.gz", dir);
    snprintf(glb, sizeof glb, "%s/lab.gz", dir);
    write_idx(im, lb, 12, 16, 16, 4, false);
    write_idx(gim, glb, 12, 16, 16, 4, true);
    imageset a, b;
    ck_assert_int_eq(idx_load(im, lb, 1, 16, RESIZE_BILINEAR, &a), MS_OK);
    ck_assert_int_eq(idx_load(gim, glb, 1, 16, RESIZE_AREA, &b), MS_OK);
    ck_assert_int_eq(a.n, 12);
    ck_assert_int_eq(a.nclasses, 4);
    ck_assert_int_eq(a.h, 16);
    ck_assert_int_eq(a.c, 1);
    for (int i = 0; i < 12; i++) {
        ck_assert_int_eq(a.label[i], i % 4);
        ck_assert_int_eq(b.label[i], i % 4);
    }
    ck_assert_int_eq(a.pix[5 * 256 + 2 * 16 + 3], (7 * 5 + 6 + 3) % 256);
    ck_assert_mem_eq(a.pix, b.pix, 12 * 256);
    ck_assert_str_eq(a.names[3], "3");
    imageset_free(&b);
    /* three channels replicate the gray plane; 32 x 32 resizes */
    ck_assert_int_eq(idx_load(gim, glb, 3, 32, RESIZE_BILINEAR, &b), MS_OK);
    ck_assert_int_eq(b.c, 3);
    ck_assert_int_eq(b.w, 32);
    ck_assert_mem_eq(b.pix, b.pix + 1024, 1024);
    imageset_free(&b);
    imageset_free(&a);
}
END_TEST

START_TEST(idx_malformed)
{
    char im[512], lb[512], bad[512];
    snprintf(im, sizeof im, "%s/img", dir);
    snprintf(lb, sizeof lb, "%s/lab", dir);
    snprintf(bad, sizeof bad, "%s/bad", dir);
    write_idx(im, lb, 6, 16, 16, 3, false);
    imageset s;
    const char *msg;
    /* missing file */
    ck_assert_int_eq(idx_load("/nonexistent/x", lb, 1, 16, RESIZE_AREA, &s), MS_ERR_IO);
    ms_clear_error();
    /* a directory */
    ck_assert_int_eq(idx_load(dir, lb, 1, 16, RESIZE_AREA, &s), MS_ERR_IO);
    ms_clear_error();
    /* labels and images swapped: wrong magic */
    ck_assert_int_eq(idx_load(lb, im, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_last_error(&msg);
    ck_assert_ptr_nonnull(strstr(msg, "not an IDX image file"));
    ms_clear_error();
    /* truncated image file */
    uint8_t head[16 + 100];
    put32(head, 0x803);
    put32(head + 4, 6);
    put32(head + 8, 16);
    put32(head + 12, 16);
    memset(head + 16, 1, 100);
    write_bytes(bad, head, sizeof head, false);
    ck_assert_int_eq(idx_load(bad, lb, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_clear_error();
    /* absurd dimensions */
    put32(head + 8, 0);
    write_bytes(bad, head, 16, true);
    ck_assert_int_eq(idx_load(bad, lb, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_clear_error();
    /* label count differs from image count */
    char lb5[512], im5[512];
    snprintf(lb5, sizeof lb5, "%s/lab5", dir);
    snprintf(im5, sizeof im5, "%s/img5", dir);
    write_idx(im5, lb5, 5, 16, 16, 3, false);
    ck_assert_int_eq(idx_load(im, lb5, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_clear_error();
    /* a gzip stream cut short */
    uint8_t gz[64];
    char gzp[512];
    snprintf(gzp, sizeof gzp, "%s/cut.gz", dir);
    write_idx(gzp, lb5, 5, 16, 16, 3, true);
    FILE *f = fopen(gzp, "rb");
    size_t n = fread(gz, 1, sizeof gz, f);
    fclose(f);
    write_bytes(gzp, gz, n / 2, false);
    ck_assert_int_ne(idx_load(gzp, lb5, 1, 16, RESIZE_AREA, &s), MS_OK);
    ms_clear_error();
    /* an empty file */
    write_bytes(bad, head, 0, false);
    ck_assert_int_eq(idx_load(bad, lb, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_clear_error();
}
END_TEST

START_TEST(resize_modes)
{
    uint8_t flat[8 * 8], out[5 * 5], check[4 * 4], half[2 * 2];
    memset(flat, 77, sizeof flat);
    image_resize(flat, 1, 8, 8, out, 5, 5, RESIZE_BILINEAR);
    for (int i = 0; i < 25; i++)
        ck_assert_int_eq(out[i], 77);
    image_resize(flat, 1, 8, 8, out, 5, 5, RESIZE_AREA);
    for (int i = 0; i < 25; i++)
        ck_assert_int_eq(out[i], 77);
    /* a 4x4 checkerboard of 0/200 halves to its mean, 100, by area */
    for (int i = 0; i < 16; i++)
        check[i] = ((i / 4 + i % 4) % 2) ? 200 : 0;
    image_resize(check, 1, 4, 4, half, 2, 2, RESIZE_AREA);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(half[i], 100);
    /* upsampling a 2x2 by bilinear keeps the corners' values at the corners */
    uint8_t two[4] = {0, 100, 100, 200}, four[16];
    image_resize(two, 1, 2, 2, four, 4, 4, RESIZE_BILINEAR);
    ck_assert_int_eq(four[0], 0);
    ck_assert_int_eq(four[15], 200);
    ck_assert_int_eq(four[5], 50); /* (0.25, 0.25) from the first pixel's centre */
}
END_TEST

START_TEST(png_tree)
{
    char root[512];
    snprintf(root, sizeof root, "%s/tree", dir);
    write_tree(root, 5, 4);
    imageset s;
    ck_assert_int_eq(png_tree_load(root, 1, 16, RESIZE_AREA, &s), MS_OK);
    ck_assert_int_eq(s.n, 20);
    ck_assert_int_eq(s.nclasses, 5);
    ck_assert_str_eq(s.names[0], "c0");
    ck_assert_str_eq(s.names[4], "c4");
    for (int i = 0; i < 20; i++) {
        ck_assert_int_eq(s.label[i], i / 4);
        /* a flat image stays flat at its value, RGB converted to gray */
        for (int p = 0; p < 256; p++)
            ck_assert_int_le(abs(s.pix[i * 256 + p] - (10 * (i / 4) + i % 4)), 1);
    }
    imageset_free(&s);
    ck_assert_int_eq(png_tree_load(root, 3, 20, RESIZE_BILINEAR, &s), MS_OK);
    ck_assert_int_eq(s.c, 3);
    ck_assert_int_le(abs(s.pix[7 * 1200 + 2 * 400 + 5] - 13), 1);
    imageset_free(&s);
}
END_TEST

START_TEST(png_errors)
{
    imageset s;
    const char *msg;
    char path[512];
    ck_assert_int_eq(png_tree_load("/nonexistent/tree", 1, 16, RESIZE_AREA, &s), MS_ERR_IO);
    ms_clear_error();
    /* no class folders */
    ck_assert_int_eq(png_tree_load(dir, 1, 16, RESIZE_AREA, &s), MS_ERR_INVALID_ARG);
    ms_clear_error();
    /* class folders without images */
    snprintf(path, sizeof path, "%s/empty", dir);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    ck_assert_int_eq(png_tree_load(dir, 1, 16, RESIZE_AREA, &s), MS_ERR_INVALID_ARG);
    ms_clear_error();
    /* a file named .png that is not one, and a truncated PNG */
    snprintf(path, sizeof path, "%s/empty/a.png", dir);
    FILE *f = fopen(path, "w");
    fputs("definitely not a PNG file", f);
    fclose(f);
    ck_assert_int_eq(png_tree_load(dir, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_last_error(&msg);
    ck_assert_ptr_nonnull(strstr(msg, "a.png"));
    ms_clear_error();
    uint8_t v[3] = {9, 9, 9};
    write_png(path, 30, 30, 1, v);
    f = fopen(path, "rb");
    uint8_t buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_bytes(path, buf, n - 20, false);
    ck_assert_int_eq(png_tree_load(dir, 1, 16, RESIZE_AREA, &s), MS_ERR_FORMAT);
    ms_clear_error();
}
END_TEST

static bool even(int k, int n, void *u) { (void)n; (void)u; return k % 2 == 0; }

START_TEST(episodes_draw)
{
    char im[512], lb[512];
    snprintf(im, sizeof im, "%s/img", dir);
    snprintf(lb, sizeof lb, "%s/lab", dir);
    write_idx(im, lb, 60, 16, 16, 6, false); /* 10 images of each of 6 classes */
    imageset s;
    class_split sp;
    ck_assert_int_eq(idx_load(im, lb, 1, 16, RESIZE_AREA, &s), MS_OK);
    ck_assert_int_eq(split_make(&s, even, NULL, &sp), MS_OK);
    ck_assert_int_eq(sp.nclasses, 3);
    int cls[3], sup[6], qry[24], cls2[3], sup2[6], qry2[24];
    uint64_t r1 = 5, r2 = 5;
    ck_assert_int_eq(episode_draw(&sp, "test", 3, 2, 8, &r1, cls, sup, qry), MS_OK);
    ck_assert_int_eq(episode_draw(&sp, "test", 3, 2, 8, &r2, cls2, sup2, qry2), MS_OK);
    ck_assert_mem_eq(cls, cls2, sizeof cls);
    ck_assert_mem_eq(sup, sup2, sizeof sup);
    ck_assert_mem_eq(qry, qry2, sizeof qry);
    for (int j = 0; j < 3; j++) {
        ck_assert_int_eq(cls[j] % 2, 0);
        for (int p = 0; p < 2; p++)
            ck_assert_int_eq(s.label[sup[j * 2 + p]], cls[j]);
        for (int p = 0; p < 8; p++) {
            ck_assert_int_eq(s.label[qry[j * 8 + p]], cls[j]);
            for (int p2 = 0; p2 < 2; p2++) /* query disjoint from support */
                ck_assert_int_ne(qry[j * 8 + p], sup[j * 2 + p2]);
        }
    }
    /* 11 images per class are more than the 10 there are */
    const char *msg;
    ck_assert_int_eq(episode_draw(&sp, "test", 3, 3, 8, &r1, cls, sup, qry), MS_ERR_INVALID_ARG);
    ms_last_error(&msg);
    ck_assert_ptr_nonnull(strstr(msg, "at least 11 images"));
    ms_clear_error();
    split_free(&sp);
    imageset_free(&s);
}
END_TEST

/* --------------------------------------------------------- the plugin */

static const metastep_task *plugin(void)
{
    const metastep_task *t = NULL;
    ck_assert_int_eq(metastep_load_task(IMAGES_PLUGIN, &t), MS_OK);
    ck_assert(METASTEP_TASK_HAS_SLOT(t, configure));
    ck_assert(METASTEP_TASK_HAS_SLOT(t, sample_heldout));
    ck_assert_ptr_nonnull(t->configure);
    ck_assert_int_eq(t->header.abi_minor, 1);
    return t;
}

static void cfg(const metastep_task *t, const char *k, const char *v)
{
    ck_assert_msg(t->configure(k, v) == MS_OK, "configure %s=%s", k, v);
}

START_TEST(options)
{
    const metastep_task *t = plugin();
    const char *bad[][2] = {{"ways", "1"}, {"ways", "x"}, {"ways", ""}, {"query", "0"},
                            {"filters", "0"}, {"filters", "2000"}, {"channels", "2"},
                            {"size", "8"}, {"resize", "cubic"}, {"split", "1"},
                            {"split", "0"}, {"data", ""}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(t->configure(bad[i][0], bad[i][1]) == MS_ERR_INVALID_ARG, "%s=%s",
                      bad[i][0], bad[i][1]);
        const char *msg;
        ms_last_error(&msg);
        ck_assert_ptr_nonnull(strstr(msg, bad[i][0]));
        ms_clear_error();
    }
    ck_assert_int_eq(t->configure("frobnicate", "1"), MS_ERR_KEY);
    ms_clear_error();
    ck_assert_int_eq(t->configure(NULL, "1"), MS_ERR_NULL_ARG);
    ms_clear_error();
    /* the model follows the options */
    cfg(t, "filters", "8");
    cfg(t, "ways", "3");
    cfg(t, "channels", "rgb");
    cfg(t, "size", "32");
    ms_container *v = t->init_variables(1, MS_F32);
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(ms_container_size(v), 18);
    const int64_t *w1 = ms_tensor_shape(ms_container_get(v, "block1/conv/w"));
    ck_assert(w1[0] == 8 && w1[1] == 3 && w1[2] == 3 && w1[3] == 3);
    ck_assert_int_eq(ms_tensor_shape(ms_container_get(v, "block4/conv/w"))[1], 8);
    ck_assert_int_eq(ms_tensor_shape(ms_container_get(v, "block2/bn/gamma"))[0], 8);
    const int64_t *hw = ms_tensor_shape(ms_container_get(v, "head/w"));
    ck_assert(hw[0] == 8 * 2 * 2 && hw[1] == 3); /* 32 -> 16 -> 8 -> 4 -> 2 */
    ck_assert_int_eq(ms_tensor_shape(ms_container_get(v, "head/b"))[0], 3);
    ms_container_release(v);
}
END_TEST

/* classes of task t of a batch, as ints */
static int class_of(const ms_container *b, int t, int j, int ways)
{
    return (int)at(ms_container_get(b, "task/classes"), t * ways + j);
}

START_TEST(episodes_png_tree)
{
    const metastep_task *t = plugin();
    char root[512];
    snprintf(root, sizeof root, "%s/tree", dir);
    write_tree(root, 5, 4);
    cfg(t, "data", root);
    cfg(t, "ways", "2");
    cfg(t, "query", "3");
    cfg(t, "filters", "4");
    cfg(t, "split", "0.6"); /* c0 c1 c2 | c3 c4 */
    ms_container *b = t->sample(3, 1, 7, MS_F64);
    ck_assert_ptr_nonnull(b);
    const int64_t *sx = ms_tensor_shape(ms_container_get(b, "support/x"));
    ck_assert_int_eq(ms_tensor_ndim(ms_container_get(b, "support/x")), 5);
    ck_assert(sx[0] == 3 && sx[1] == 2 && sx[2] == 1 && sx[3] == 28 && sx[4] == 28);
    const int64_t *qy = ms_tensor_shape(ms_container_get(b, "query/y"));
    ck_assert(qy[0] == 3 && qy[1] == 6 && qy[2] == 2);
    ms_container *h = t->sample_heldout(4, 1, 7, MS_F64);
    ck_assert_ptr_nonnull(h);
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 2; j++)
            ck_assert_int_lt(class_of(b, k, j, 2), 3);
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 2; j++)
            ck_assert_int_ge(class_of(h, k, j, 2), 3);
    /* images carry their class's gray value: support image j of task 0 */
    ms_tensor *x = ms_container_get(b, "support/x");
    for (int j = 0; j < 2; j++) {
        double v = at(x, (int64_t)j * 28 * 28) * 255, c = class_of(b, 0, j, 2);
        ck_assert(v >= 10 * c - 1 && v <= 10 * c + 4);
    }
    /* one image more than a class holds: a clear error, no batch */
    cfg(t, "query", "4");
    ck_assert_ptr_null(t->sample(1, 1, 7, MS_F32));
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(msg, "images"));
    ms_clear_error();
    /* more ways than held-out classes */
    cfg(t, "query", "1");
    cfg(t, "ways", "3");
    ck_assert_ptr_nonnull(b = (ms_container_release(b), t->sample(1, 1, 7, MS_F32)));
    ck_assert_ptr_null(t->sample_heldout(1, 1, 7, MS_F32));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(msg, "evaluation"));
    ms_clear_error();
    metastep_eval ev;
    ms_container *v = t->init_variables(0, MS_F32);
    ck_assert_int_ne(t->evaluate(v, 2, 1, 0.1, 1, MS_F32, &ev), MS_OK);
    ms_clear_error();
    ms_container_release(v);
    ms_container_release(b);
    ms_container_release(h);
    /* a missing folder, a malformed tree */
    cfg(t, "data", "/nonexistent/images");
    ck_assert_ptr_null(t->sample(1, 1, 7, MS_F32));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(msg, "/nonexistent/images"));
    ms_clear_error();
    char path[600];
    snprintf(path, sizeof path, "%s/c1/bad.png", root);
    FILE *f = fopen(path, "w");
    fputs("garbage", f);
    fclose(f);
    cfg(t, "data", root);
    ck_assert_ptr_null(t->sample(1, 1, 7, MS_F32));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(msg, "bad.png"));
    ms_clear_error();
}
END_TEST

START_TEST(idx_pair_option)
{
    const metastep_task *t = plugin();
    char im[512], lb[512];
    snprintf(im, sizeof im, "%s/img.gz", dir);
    snprintf(lb, sizeof lb, "%s/lab.gz", dir);
    write_idx(im, lb, 80, 20, 20, 8, true);
    cfg(t, "data", im);
    cfg(t, "ways", "3");
    cfg(t, "query", "2");
    cfg(t, "size", "16");
    /* without its labels the image file is refused */
    ck_assert_ptr_null(t->sample(1, 1, 1, MS_F32));
    ms_clear_error();
    cfg(t, "labels", lb);
    ms_container *b = t->sample(5, 2, 1, MS_F32), *h = t->sample_heldout(5, 2, 1, MS_F32);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(ms_tensor_shape(ms_container_get(b, "support/x"))[4], 16);
    for (int k = 0; k < 5; k++)
        for (int j = 0; j < 3; j++) {
            ck_assert_int_eq(class_of(b, k, j, 3) % 2, 0);
            ck_assert_int_eq(class_of(h, k, j, 3) % 2, 1);
        }
    ms_container_release(b);
    ms_container_release(h);
}
END_TEST

static bool same(const ms_container *a, const ms_container *b)
{
    return ms_container_allclose(a, b, 0, 0);
}

START_TEST(fashion_mnist_episodes)
{
    struct stat st;
    if (stat(FMNIST "/train-images-idx3-ubyte.gz", &st) != 0) {
        printf("skipped: " FMNIST " is not installed\n");
        return;
    }
    const metastep_task *t = plugin();
    cfg(t, "query", "3");
    cfg(t, "filters", "4");
    ms_container *a = t->sample(4, 2, 11, MS_F32), *b = t->sample(4, 2, 11, MS_F32),
                 *c = t->sample(4, 2, 12, MS_F32), *h = t->sample_heldout(4, 2, 11, MS_F32);
    ck_assert(a && b && c && h);
    ck_assert(same(a, b));
    ck_assert(!same(a, c));
    ms_tensor *sx = ms_container_get(a, "support/x"), *sy = ms_container_get(a, "support/y"),
              *qx = ms_container_get(a, "query/x"), *qy = ms_container_get(a, "query/y");
    const int64_t *s = ms_tensor_shape(sx), *q = ms_tensor_shape(qx);
    ck_assert(s[0] == 4 && s[1] == 10 && s[2] == 1 && s[3] == 28 && s[4] == 28);
    ck_assert(q[0] == 4 && q[1] == 15 && q[2] == 1 && q[3] == 28 && q[4] == 28);
    ck_assert(ms_tensor_shape(sy)[1] == 10 && ms_tensor_shape(sy)[2] == 5);
    ck_assert(ms_tensor_shape(qy)[1] == 15 && ms_tensor_shape(qy)[2] == 5);
    /* one-hot, label-major; pixels in [0, 1] */
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 10; i++)
            for (int j = 0; j < 5; j++)
                ck_assert(at(sy, (k * 10 + i) * 5 + j) == (j == i / 2 ? 1.0 : 0.0));
        for (int i = 0; i < 15; i++)
            for (int j = 0; j < 5; j++)
                ck_assert(at(qy, (k * 15 + i) * 5 + j) == (j == i / 3 ? 1.0 : 0.0));
        int seen = 0;
        for (int j = 0; j < 5; j++) {
            int ca = class_of(a, k, j, 5), ch = class_of(h, k, j, 5);
            ck_assert_int_eq(ca % 2, 0); /* meta-training: 0 2 4 6 8 */
            ck_assert_int_eq(ch % 2, 1); /* evaluation: 1 3 5 7 9 */
            ck_assert_int_eq(seen & (1 << ca), 0);
            seen |= 1 << ca;
        }
    }
    for (int64_t i = 0; i < ms_tensor_numel(sx); i += 97)
        ck_assert(at(sx, i) >= 0 && at(sx, i) <= 1);
    /* label orders are shuffled: not every task lists its classes ascending */
    bool shuffled = false;
    for (int k = 0; k < 4; k++)
        for (int j = 0; j + 1 < 5; j++)
            shuffled |= class_of(a, k, j, 5) > class_of(a, k, j + 1, 5);
    ck_assert(shuffled);
    /* the costs: finite; batched variables give the unbatched mean */
    ms_container *v = t->init_variables(3, MS_F32), *vb = ms_container_replicate(v, 4);
    ms_scope_push();
    ms_tensor *l = t->inner_cost(a, v, NULL), *lb = t->inner_cost(a, vb, NULL),
              *lq = t->outer_cost(a, v, NULL);
    ck_assert(l && lb && lq);
    ck_assert(isfinite(ms_tensor_item(l)) && isfinite(ms_tensor_item(lq)));
    ck_assert_double_eq_tol(ms_tensor_item(l), ms_tensor_item(lb), 1e-5);
    ms_scope_pop();
    /* a meta step in both modes */
    metastep_result r;
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    ck_assert_int_eq(metastep_maml_step(a, t->inner_cost, t->outer_cost, v, 1, 0.4, &o, &r), MS_OK);
    ck_assert(isfinite(ms_tensor_item(r.cost)));
    metastep_result_release(&r);
    o.batched = true;
    ck_assert_int_eq(metastep_fomaml_step(a, t->inner_cost, t->outer_cost, vb, 1, 0.4, &o, &r), MS_OK);
    metastep_result_release(&r);
    /* evaluation: accuracy in [0, 1] with its interval, deterministic */
    metastep_eval e1, e2;
    ck_assert_int_eq(t->evaluate(v, 3, 1, 0.4, 5, MS_F32, &e1), MS_OK);
    ck_assert_int_eq(t->evaluate(v, 3, 1, 0.4, 5, MS_F32, &e2), MS_OK);
    ck_assert(e1.has_accuracy);
    for (int p = 0; p < METASTEP_EVAL_POINTS; p++) {
        ck_assert(e1.accuracy[p] >= 0 && e1.accuracy[p] <= 1);
        ck_assert(e1.accuracy_ci95[p] >= 0 && e1.accuracy_ci95[p] <= 1);
        ck_assert(isfinite(e1.loss[p]));
        ck_assert(e1.accuracy[p] == e2.accuracy[p] && e1.loss[p] == e2.loss[p]);
    }
    ms_container_release(v);
    ms_container_release(vb);
    ms_container_release(a);
    ms_container_release(b);
    ms_container_release(c);
    ms_container_release(h);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("images");
    TCase *tc = tcase_create("data");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, idx_plain_and_gzip);
    tcase_add_test(tc, idx_malformed);
    tcase_add_test(tc, resize_modes);
    tcase_add_test(tc, png_tree);
    tcase_add_test(tc, png_errors);
    tcase_add_test(tc, episodes_draw);
    tcase_add_test(tc, options);
    tcase_add_test(tc, episodes_png_tree);
    tcase_add_test(tc, idx_pair_option);
    tcase_add_test(tc, fashion_mnist_episodes);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
