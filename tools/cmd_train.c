/* metastep train / metastep eval: meta-train a task plugin's model from the
 * command line, with a progress bar, a log, plots, checkpoints on Ctrl-C and
 * resumption. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "metastep/metastep.h"
#include "cli.h"
#include "util.h"

#ifdef MS_HAVE_PLOT
#include "plot.h"
#endif

#define HELDOUT_SEED 0x5eed0f7e57ull /* held-out tasks never drawn in training */
#define FITS_SEED 0xf175ull
#define EPISODES_SEED 0xe915ull
#define MAX_TASK_OPTS 32

typedef enum { ALGO_MAML, ALGO_FOMAML, ALGO_REPTILE } algo;
static const char *const algo_names[] = {"maml", "fomaml", "reptile"};

typedef struct config {
    const char *task, *backend, *out, *resume;
    algo algo;
    long meta_steps;
    int meta_batch, inner_steps, k, eval_tasks, eval_every;
    double inner_lr, outer_lr;
    bool outer_adam, batched, quiet;
    uint64_t seed;
    ms_dtype dtype;
    /* --key value pairs the command does not know: the task's options */
    const char *opt_key[MAX_TASK_OPTS], *opt_val[MAX_TASK_OPTS];
    int nopts;
} config;

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void train_usage(FILE *f)
{
    fprintf(f,
        "usage: metastep train --task NAME [options]\n"
        "\n"
        "Meta-trains the task plugin's model and writes, in --out DIR:\n"
        "  log.csv             step, meta-training loss, held-out losses, elapsed seconds\n"
        "  params.safetensors  the meta-learned parameters (key chains as tensor names)\n"
        "  summary.json        configuration, backend, timing, final held-out evaluation\n"
        "  curves.png          meta-training loss and held-out query loss (and accuracy,\n"
        "                      for classification tasks) over meta-steps\n"
        "  fits.png            held-out tasks: truth, support points, prediction before\n"
        "                      adaptation and after 1 and 10 steps (regression tasks)\n"
        "  episodes.png        held-out episodes: support images with their labels, query\n"
        "                      images with predictions before and after 1 and 10 steps\n"
        "                      (image classification tasks)\n"
        "  checkpoint.safetensors  written on Ctrl-C (and at the end), for --resume\n"
        "\n"
        "options:\n"
        "  --task NAME|PATH     task plugin (e.g. sine)                          [required]\n"
        "  --algo A             maml | fomaml | reptile                           [maml]\n"
        "  --backend NAME|PATH  compute backend (default: $METASTEP_BACKEND, else ref)\n"
        "  --meta-steps N       meta-training steps                               [2000]\n"
        "  --meta-batch N       tasks per meta-step                               [25]\n"
        "  --inner-steps N      adaptation steps per task                         [1]\n"
        "  --inner-lr X         adaptation learning rate                          [0.01]\n"
        "  --outer-lr X         meta learning rate                                [0.001]\n"
        "  --outer-optim O      adam | sgd                                        [adam]\n"
        "  --k N                support (and query) points per task               [10]\n"
        "  --shots N            the same as --k: support images per class (images task)\n"
        "  --batched            run all tasks of a meta-step as one batch (Ivy's batched=True)\n"
        "  --seed N             seed of initial parameters and task draws         [0]\n"
        "  --dtype D            float32 | float64                                 [float32]\n"
        "  --eval-every N       held-out evaluation period in steps  [meta-steps/50]\n"
        "  --eval-tasks N       held-out tasks for evaluations                    [100]\n"
        "  --out DIR            output directory (created)                        [out]\n"
        "  --resume DIR         continue the run whose checkpoint is in DIR (same flags)\n"
        "  --quiet              no progress output\n"
        "  --help               this text\n"
        "\n"
        "Any other --KEY VALUE is a task option, handed to the task plugin (ABI 1.1\n"
        "configure) before anything else; a task without options rejects it.\n"
        "Options of the images task (N-way K-shot classification, Conv4 of MAML):\n"
        "  --ways N             classes per episode                               [5]\n"
        "  --query N            query images per class                            [15]\n"
        "  --filters N          filters of each of the 4 conv blocks              [32]\n"
        "  --data PATH          a Fashion-MNIST IDX folder ({train,t10k}-{images-idx3,\n"
        "                       labels-idx1}-ubyte[.gz]), an IDX image file (with\n"
        "                       --labels FILE), or a folder of class folders of PNG\n"
        "                       images (DATA/<class>/<image>.png)\n"
        "                                       [/usr/share/datasets/fashion-mnist]\n"
        "  --labels FILE        the IDX label file of an IDX image file --data\n"
        "  --channels C         1 | gray | 3 | rgb                                [1]\n"
        "  --size S             images resized to S x S, S >= 16                  [28]\n"
        "  --resize M           bilinear | area                                   [bilinear]\n"
        "  --split F            PNG tree: fraction of classes for meta-training   [0.8]\n"
        "Meta-training and evaluation use disjoint classes: for the Fashion-MNIST\n"
        "folder, meta-training draws classes 0,2,4,6,8 of the training images and\n"
        "evaluation classes 1,3,5,7,9 of the test images; for one IDX pair, even and\n"
        "odd labels; for a PNG tree, the first floor(split x classes) class folders\n"
        "(sorted by name) and the rest.  Use --inner-lr 0.4 or so for images; every\n"
        "held-out evaluation adapts each task 10 steps, so keep --eval-tasks x\n"
        "(meta-steps / --eval-every) modest.\n");
}

static void eval_usage(FILE *f)
{
    fprintf(f,
        "usage: metastep eval --task NAME --params FILE [options]\n"
        "\n"
        "Reports the held-out query loss of saved meta-parameters after 0, 1 and 10\n"
        "adaptation steps on fresh tasks (the same held-out tasks as metastep train).\n"
        "\n"
        "options:\n"
        "  --task NAME|PATH     task plugin                                       [required]\n"
        "  --params FILE        a params.safetensors written by metastep train     [required]\n"
        "  --backend NAME|PATH  compute backend\n"
        "  --inner-lr X         adaptation learning rate                          [0.01]\n"
        "  --k N, --shots N     support (and query) points per task               [10]\n"
        "  --tasks N            held-out tasks                                    [100]\n"
        "  --dtype D            float32 | float64                                 [float32]\n"
        "  --json               print the result as JSON\n"
        "  --help               this text\n"
        "Any other --KEY VALUE is a task option (see metastep train --help); give the\n"
        "same task options as for training (e.g. --ways, --filters, --data).\n"
        "Classification tasks also report the accuracy with its 95%% confidence interval.\n");
}

/* ------------------------------------------------------------- helpers */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail_ms(const char *what)
{
    const char *msg = NULL;
    ms_status st = ms_last_error(&msg);
    fprintf(stderr, "metastep: %s: %s\n", what, st ? msg : "failed");
    return 1;
}


/* A held-out evaluation not yet filled: a 1.0 plugin writes only the
 * members it knows, so everything starts as "not reported". */
static metastep_eval eval_blank(void)
{
    metastep_eval e = {.steps = {0, 1, 10}, .has_accuracy = false};
    for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
        e.loss[i] = e.accuracy[i] = e.accuracy_ci95[i] = NAN;
    return e;
}

/* Whether the plugin reported accuracy_ci95 (ABI 1.1 and later). */
static bool has_ci(const metastep_task *task, const metastep_eval *e)
{
    return e->has_accuracy && task->header.abi_minor >= 1;
}

/* Hand the task options to the plugin; 0, or the command's exit status. */
static int configure_task(const char *cmd, const metastep_task *task, const char *const *keys,
                          const char *const *vals, int n)
{
    bool can = METASTEP_TASK_HAS_SLOT(task, configure) && task->configure;
    for (int i = 0; i < n; i++) {
        if (!can) {
            fprintf(stderr, "metastep %s: unknown option '--%s' (the task '%s' takes no options; "
                            "try --help)\n", cmd, keys[i], task->header.name);
            return 2;
        }
        ms_status st = task->configure(keys[i], vals[i]);
        if (st != MS_OK) {
            const char *msg = NULL;
            ms_last_error(&msg);
            fprintf(stderr, "metastep %s: %s '--%s' for the task '%s': %s (try --help)\n", cmd,
                    st == MS_ERR_KEY ? "unknown option" : "invalid value for", keys[i],
                    task->header.name, msg ? msg : ms_status_string(st));
            ms_clear_error();
            return 2;
        }
    }
    return 0;
}

/* Record --KEY VALUE as a task option; false (with a message) when full. */
static bool add_task_opt(const char *cmd, const char **keys, const char **vals, int *n,
                         const char *a, const char *v)
{
    if (*n == MAX_TASK_OPTS || !a[2]) {
        fprintf(stderr, "metastep %s: %s '%s' (try --help)\n", cmd,
                a[2] ? "too many task options at" : "unexpected argument", a);
        return false;
    }
    keys[*n] = a + 2;
    vals[(*n)++] = v;
    return true;
}

static bool setup_backend(const char *backend)
{
    if (backend && metastep_set_backend(backend) != MS_OK) {
        fail_ms("cannot use the backend");
        return false;
    }
    if (!metastep_current_backend()) {
        fail_ms("cannot load the default backend");
        return false;
    }
    return true;
}

/* ------------------------------------------------------- the progress */

static void progress(const config *c, long step, long total, double rate, double loss,
                     double t0, bool tty, bool final)
{
    if (c->quiet)
        return;
    double left = rate > 0 ? (double)(total - step) / rate : 0;
    if (tty) {
        int width = 30, filled = total ? (int)((double)width * (double)step / (double)total) : width;
        char bar[64];
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[width] = '\0';
        fprintf(stderr, "\r[%s] %5.1f%% %ld/%ld  %7.1f steps/s  loss %-9.4g  left %02d:%02d ",
                bar, total ? 100.0 * (double)step / (double)total : 100.0, step, total, rate, loss,
                (int)(left / 60), (int)fmod(left, 60));
        if (final)
            fputc('\n', stderr);
        fflush(stderr);
    } else {
        fprintf(stderr, "step %ld/%ld  %.1f steps/s  loss %.4g  elapsed %.1fs  left %.0fs\n", step,
                total, rate, loss, now() - t0, left);
    }
}

/* --------------------------------------------------------------- plots */

#ifdef MS_HAVE_PLOT
static void write_curves(const char *dir, const double *steps, const double *train, long n,
                         const double *es, const double *e0, const double *e1, int ne,
                         const double *a0, const double *a1, bool accuracy)
{
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/curves.png", dir);
    plot_series s[3] = {
        {.label = "meta-training loss (query, after adaptation)", .x = steps, .y = train,
         .n = (int)n, .style = PLOT_LINE},
        {.label = "held-out query loss, 0 steps", .x = es, .y = e0, .n = ne, .style = PLOT_DASHED},
        {.label = "held-out query loss, 1 step", .x = es, .y = e1, .n = ne, .style = PLOT_LINE},
    };
    plot_series sa[2] = {
        {.label = "held-out query accuracy, 0 steps", .x = es, .y = a0, .n = ne,
         .style = PLOT_DASHED, .rgb = {1.000, 0.498, 0.055}},
        {.label = "held-out query accuracy, 1 step", .x = es, .y = a1, .n = ne,
         .style = PLOT_LINE, .rgb = {0.173, 0.627, 0.173}},
    };
    plot_panel p[2] = {
        {.title = "meta-training", .xlabel = "meta-step", .ylabel = accuracy ? "loss" : "MSE",
         .log_y = true, .series = s, .nseries = 3},
        {.title = "held-out accuracy", .xlabel = "meta-step", .ylabel = "accuracy",
         .ylim = {0, 1}, .series = sa, .nseries = 2},
    };
    if (plot_png(path, accuracy ? 1500 : 900, 560, p, accuracy ? 2 : 1, 2, err, sizeof err) != 0)
        fprintf(stderr, "metastep: curves.png: %s\n", err);
}

/* Adapt shared variables on one task's support set with plain gradient descent. */
typedef struct adapt_ctx {
    const metastep_task *task;
    const ms_container *batch;
} adapt_ctx;

static ms_tensor *support_cost_of(const ms_container *v, void *user)
{
    adapt_ctx *a = user;
    return a->task->inner_cost(a->batch, v, NULL);
}

static ms_container *adapt(const metastep_task *task, const ms_container *sub,
                           const ms_container *v, double lr, int steps)
{
    ms_container *cur = ms_container_copy(v);
    adapt_ctx a = {task, sub};
    for (int s = 0; cur && s < steps; s++) {
        ms_scope_push();
        ms_tensor *y = NULL;
        ms_container *g = NULL, *next = NULL;
        if (ms_execute_with_gradients(support_cost_of, &a, cur, false, &y, &g) == MS_OK)
            next = metastep_gradient_descent_update(cur, g, lr, true);
        ms_container_release(g);
        ms_container_release(cur);
        cur = next;
        ms_scope_pop();
    }
    return cur;
}

static void write_fits(const config *c, const metastep_task *task, const ms_container *vars)
{
    if (!task->predict || !task->truth)
        return;
    enum { NT = 4, NX = 200 };
    ms_scope_push();
    ms_container *batch = task->sample(NT, c->k, FITS_SEED, c->dtype);
    int n = 0;
    ms_container **subs = NULL;
    if (!batch || ms_container_unstack(batch, true, &n, &subs) != MS_OK) {
        ms_container_release(batch);
        ms_scope_pop();
        return;
    }
    ms_tensor *x = ms_reshape(ms_linspace(c->dtype, -5, 5, NX), 2, (int64_t[]){NX, 1});
    static double xs[NX], ys[NT][4][NX], px[NT][64], py[NT][64];
    plot_series series[NT][5];
    plot_panel panels[NT];
    static char titles[NT][64];
    const char *labels[4] = {"truth", "before adaptation", "after 1 step", "after 10 steps"};
    for (int i = 0; i < NX; i++)
        xs[i] = -5 + 10.0 * i / (NX - 1);
    for (int t = 0; t < NT && t < n; t++) {
        ms_container *a1 = adapt(task, subs[t], vars, c->inner_lr, 1);
        ms_container *a10 = adapt(task, subs[t], vars, c->inner_lr, 10);
        ms_no_grad_push();
        ms_tensor *curves[4] = {task->truth(batch, t, x), task->predict(vars, x),
                                a1 ? task->predict(a1, x) : NULL, a10 ? task->predict(a10, x) : NULL};
        ms_no_grad_pop();
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < NX; i++)
                ys[t][k][i] = curves[k] ? util_value(curves[k], i) : NAN;
        ms_tensor *sx = ms_container_get(subs[t], "support/x"), *sy = ms_container_get(subs[t], "support/y");
        int np = (int)ms_tensor_numel(sx) < 64 ? (int)ms_tensor_numel(sx) : 64;
        for (int i = 0; i < np; i++) {
            px[t][i] = util_value(sx, i);
            py[t][i] = util_value(sy, i);
        }
        for (int k = 0; k < 4; k++)
            series[t][k] = (plot_series){.label = labels[k], .x = xs, .y = ys[t][k], .n = NX,
                                         .style = k == 1 ? PLOT_DASHED : PLOT_LINE};
        series[t][4] = (plot_series){.label = "support points", .x = px[t], .y = py[t], .n = np,
                                     .style = PLOT_MARKERS};
        snprintf(titles[t], sizeof titles[t], "held-out task %d (K=%d)", t + 1, c->k);
        panels[t] = (plot_panel){.title = titles[t], .xlabel = "x", .ylabel = "y",
                                 .series = series[t], .nseries = 5};
        ms_container_release(a1);
        ms_container_release(a10);
    }
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/fits.png", c->out);
    if (plot_png(path, 1200, 900, panels, n < NT ? n : NT, 2, err, sizeof err) != 0)
        fprintf(stderr, "metastep: fits.png: %s\n", err);
    for (int i = 0; i < n; i++)
        ms_container_release(subs[i]);
    free(subs);
    ms_container_release(batch);
    ms_scope_pop();
}

/* Index of the largest of the n values of row i of a (rows, n) tensor. */
static int argmax_row(const ms_tensor *t, int64_t i, int64_t n)
{
    int best = 0;
    for (int64_t j = 1; j < n; j++)
        if (util_value(t, i * n + j) > util_value(t, i * n + best))
            best = (int)j;
    return best;
}

/* A few held-out episodes of an image classification task: the support
 * images with their labels, then query images with the predicted label
 * before adaptation and after 1 and 10 steps (frame: right/wrong after 10). */
static void write_episodes(const config *c, const metastep_task *task, const ms_container *vars)
{
    if (!METASTEP_TASK_HAS_SLOT(task, sample_heldout) || !task->sample_heldout || !task->predict)
        return;
    enum { NE = 3, MAXQ = 12, MAXS = 10, CELLS = MAXS + 1 + MAXQ };
    ms_scope_push();
    ms_container *batch = task->sample_heldout(NE, c->k, EPISODES_SEED, c->dtype);
    int n = 0;
    ms_container **subs = NULL;
    if (!batch || ms_container_unstack(batch, true, &n, &subs) != MS_OK) {
        ms_container_release(batch);
        ms_scope_pop();
        ms_clear_error();
        return;
    }
    static plot_image cells[NE][CELLS];
    static char caps[NE][CELLS][2][48], titles[NE][128];
    plot_image_row rows[NE];
    float *pix[NE][CELLS] = {{0}};
    int nrows = 0;
    for (int e = 0; e < n && e < NE; e++) {
        ms_tensor *sx = ms_container_get(subs[e], "support/x"), *sy = ms_container_get(subs[e], "support/y");
        ms_tensor *qx = ms_container_get(subs[e], "query/x"), *qy = ms_container_get(subs[e], "query/y");
        ms_tensor *cls = ms_container_get(subs[e], "task/classes");
        if (!sx || !sy || !qx || !qy || ms_tensor_ndim(sx) != 5 || ms_tensor_ndim(qx) != 5)
            break;
        const int64_t *ss = ms_tensor_shape(sx), *qs = ms_tensor_shape(qx);
        int64_t ways = ms_tensor_shape(sy)[2], per = ss[2] * ss[3] * ss[4];
        ms_tensor *q4 = ms_reshape(qx, 4, qs + 1);
        ms_container *a1 = adapt(task, subs[e], vars, c->inner_lr, 1);
        ms_container *a10 = adapt(task, subs[e], vars, c->inner_lr, 10);
        ms_no_grad_push();
        ms_tensor *p[3] = {task->predict(vars, q4), a1 ? task->predict(a1, q4) : NULL,
                           a10 ? task->predict(a10, q4) : NULL};
        ms_no_grad_pop();
        int k = 0;
        for (int64_t i = 0; i < ss[1] && i < MAXS; i++, k++) {
            pix[e][k] = malloc(sizeof(float) * (size_t)per);
            for (int64_t j = 0; pix[e][k] && j < per; j++)
                pix[e][k][j] = (float)util_value(sx, i * per + j);
            int y = argmax_row(sy, i, ways);
            snprintf(caps[e][k][0], 48, "label %d", y);
            if (cls)
                snprintf(caps[e][k][1], 48, "class %d", (int)util_value(cls, y));
            cells[e][k] = (plot_image){.pix = pix[e][k], .c = (int)ss[2], .h = (int)ss[3],
                                       .w = (int)ss[4], .caption = caps[e][k][0],
                                       .caption2 = cls ? caps[e][k][1] : NULL, .gap = !pix[e][k]};
        }
        cells[e][k++] = (plot_image){.gap = true};
        /* query images spread over the labels: every stride-th */
        int64_t nq = qs[1], stride = nq > MAXQ ? (nq + MAXQ - 1) / MAXQ : 1;
        for (int64_t i = 0; i < nq && k < CELLS; i += stride, k++) {
            pix[e][k] = malloc(sizeof(float) * (size_t)per);
            for (int64_t j = 0; pix[e][k] && j < per; j++)
                pix[e][k][j] = (float)util_value(qx, i * per + j);
            int y = argmax_row(qy, i, ways), pr[3];
            for (int s = 0; s < 3; s++)
                pr[s] = p[s] ? argmax_row(p[s], i, ways) : -1;
            snprintf(caps[e][k][0], 48, "true %d", y);
            snprintf(caps[e][k][1], 48, "pred %d > %d > %d", pr[0], pr[1], pr[2]);
            cells[e][k] = (plot_image){.pix = pix[e][k], .c = (int)qs[2], .h = (int)qs[3],
                                       .w = (int)qs[4], .caption = caps[e][k][0],
                                       .caption2 = caps[e][k][1],
                                       .frame = pr[2] < 0 ? 0 : pr[2] == y ? 1 : 2,
                                       .gap = !pix[e][k]};
        }
        snprintf(titles[e], sizeof titles[e], "held-out episode %d: %d-way %d-shot; support | "
                 "query (prediction before > after 1 step > after 10 steps)", e + 1, (int)ways, c->k);
        rows[nrows++] = (plot_image_row){.title = titles[e], .images = cells[e], .n = k};
        ms_container_release(a1);
        ms_container_release(a10);
    }
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/episodes.png", c->out);
    if (nrows > 0 && plot_images_png(path, "held-out episodes (frame: right / wrong after 10 "
                                     "steps)", rows, nrows, 96, err, sizeof err) != 0)
        fprintf(stderr, "metastep: episodes.png: %s\n", err);
    for (int e = 0; e < NE; e++)
        for (int i = 0; i < CELLS; i++)
            free(pix[e][i]);
    for (int i = 0; i < n; i++)
        ms_container_release(subs[i]);
    free(subs);
    ms_container_release(batch);
    ms_scope_pop();
    ms_clear_error();
}
#endif

/* ------------------------------------------------------- checkpointing */

static ms_status save_checkpoint(const config *c, const ms_container *vars,
                                 const metastep_optim_state *opt, long step)
{
    ms_container *ck = ms_container_new();
    ms_container *os = metastep_optim_state_save(opt);
    ms_status st = ck && os ? MS_OK : ms_last_error(NULL);
    char key[512];
    for (int i = 0; st == MS_OK && i < ms_container_size(vars); i++) {
        snprintf(key, sizeof key, "params/%s", ms_container_key(vars, i));
        st = ms_container_set(ck, key, ms_container_at(vars, i));
    }
    for (int i = 0; st == MS_OK && i < ms_container_size(os); i++) {
        snprintf(key, sizeof key, "optim/%s", ms_container_key(os, i));
        st = ms_container_set(ck, key, ms_container_at(os, i));
    }
    ms_tensor *s = ms_scalar(MS_F64, (double)step);
    if (st == MS_OK)
        st = ms_container_set(ck, "meta/step", s);
    ms_release(s);
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out);
    if (st == MS_OK)
        st = ms_container_save(ck, path);
    ms_container_release(os);
    ms_container_release(ck);
    return st;
}

static ms_status load_checkpoint(const config *c, ms_container **vars, metastep_optim_state *opt,
                                 long *step)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->resume);
    ms_container *ck = NULL;
    ms_status st = ms_container_load(path, &ck);
    if (st != MS_OK)
        return st;
    const char *p[] = {"params", NULL}, *o[] = {"optim", NULL};
    ms_container *params = ms_container_at_key_chains(ck, p);
    ms_container *os = ms_container_has(ck, "optim/t") ? ms_container_at_key_chains(ck, o) : NULL;
    ms_container *v = ms_container_new(), *state = ms_container_new();
    st = params && v && state && ms_container_has(ck, "meta/step") ? MS_OK
         : ms_record_error(MS_ERR_FORMAT, "%s is not a metastep train checkpoint", path);
    for (int i = 0; st == MS_OK && i < ms_container_size(params); i++)
        st = ms_container_set(v, ms_container_key(params, i) + 7, ms_container_at(params, i));
    for (int i = 0; st == MS_OK && os && i < ms_container_size(os); i++)
        st = ms_container_set(state, ms_container_key(os, i) + 6, ms_container_at(os, i));
    if (st == MS_OK && os)
        st = metastep_optim_state_restore(opt, state);
    if (st == MS_OK) {
        *step = (long)ms_tensor_item(ms_container_get(ck, "meta/step"));
        *vars = v;
        v = NULL;
    }
    ms_container_release(v);
    ms_container_release(state);
    ms_container_release(params);
    ms_container_release(os);
    ms_container_release(ck);
    return st;
}

/* ----------------------------------------------------------- the loop */

static ms_status meta_step(const config *c, const metastep_task *task, const ms_container *batch,
                           const ms_container *vars, metastep_result *r)
{
    ms_container *v = c->batched ? ms_container_replicate(vars, c->meta_batch) : ms_container_copy(vars);
    if (!v)
        return ms_last_error(NULL);
    ms_status st;
    if (c->algo == ALGO_REPTILE) {
        metastep_reptile_options o = METASTEP_REPTILE_OPTIONS_DEFAULT;
        o.batched = c->batched;
        st = metastep_reptile_step(batch, task->inner_cost, v, c->inner_steps, c->inner_lr, &o, r);
    } else {
        metastep_options o = METASTEP_OPTIONS_DEFAULT;
        o.batched = c->batched;
        st = (c->algo == ALGO_MAML ? metastep_maml_step : metastep_fomaml_step)(
            batch, task->inner_cost, task->outer_cost, v, c->inner_steps, c->inner_lr, &o, r);
    }
    ms_container_release(v);
    return st;
}

static void write_summary(const config *c, const metastep_task *task, long steps_done,
                          double seconds, const metastep_eval *ev, bool interrupted_run)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/summary.json", c->out);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "metastep: cannot write %s: %s\n", path, strerror(errno));
        return;
    }
    const char *be = metastep_current_backend();
    fprintf(f, "{\n  \"task\": ");
    util_json_string(f, task->header.name);
    fprintf(f, ",\n  \"algo\": \"%s\",\n  \"backend\": ", algo_names[c->algo]);
    util_json_string(f, be ? be : "");
    fprintf(f, ",\n  \"backend_description\": ");
    util_json_string(f, be ? metastep_backend_description(be) : "");
    fprintf(f,
            ",\n  \"config\": {\"meta_steps\": %ld, \"meta_batch\": %d, \"inner_steps\": %d, "
            "\"inner_lr\": %g, \"outer_lr\": %g, \"outer_optim\": \"%s\", \"k\": %d, "
            "\"batched\": %s, \"seed\": %llu, \"dtype\": \"%s\"},\n",
            c->meta_steps, c->meta_batch, c->inner_steps, c->inner_lr, c->outer_lr,
            c->outer_adam ? "adam" : "sgd", c->k, c->batched ? "true" : "false",
            (unsigned long long)c->seed, ms_dtype_name(c->dtype));
    fprintf(f, "  \"steps_done\": %ld,\n  \"interrupted\": %s,\n  \"seconds\": %.3f,\n"
               "  \"meta_steps_per_second\": %.2f,\n",
            steps_done, interrupted_run ? "true" : "false", seconds,
            seconds > 0 ? (double)steps_done / seconds : 0.0);
    fprintf(f, "  \"heldout\": {\"tasks\": %d, \"loss_after_steps\": {", c->eval_tasks);
    for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
        fprintf(f, "%s\"%d\": %.6g", i ? ", " : "", ev->steps[i], ev->loss[i]);
    if (ev->has_accuracy) {
        fprintf(f, "},\n              \"accuracy_after_steps\": {");
        for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
            fprintf(f, "%s\"%d\": %.6g", i ? ", " : "", ev->steps[i], ev->accuracy[i]);
        if (has_ci(task, ev)) {
            fprintf(f, "},\n              \"accuracy_ci95\": {");
            for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
                fprintf(f, "%s\"%d\": %.6g", i ? ", " : "", ev->steps[i],
                        isfinite(ev->accuracy_ci95[i]) ? ev->accuracy_ci95[i] : 0.0);
        }
    }
    fprintf(f, "}}");
    if (c->nopts) {
        fprintf(f, ",\n  \"task_options\": {");
        for (int i = 0; i < c->nopts; i++) {
            fprintf(f, "%s", i ? ", " : "");
            util_json_string(f, c->opt_key[i]);
            fprintf(f, ": ");
            util_json_string(f, c->opt_val[i]);
        }
        fprintf(f, "}");
    }
    fprintf(f, "\n}\n");
    fclose(f);
}

static int parse_train(int argc, char **argv, config *c)
{
    *c = (config){.task = NULL, .out = "out", .algo = ALGO_MAML, .meta_steps = 2000,
                  .meta_batch = 25, .inner_steps = 1, .k = 10, .eval_tasks = 100,
                  .eval_every = 0, .inner_lr = 0.01, .outer_lr = 1e-3, .outer_adam = true,
                  .seed = 0, .dtype = MS_F32};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            train_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--batched")) { c->batched = true; continue; }
        if (!strcmp(a, "--quiet")) { c->quiet = true; continue; }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "metastep train: %s '%s' (try --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value for", a);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "--task")) c->task = v;
        else if (!strcmp(a, "--backend")) c->backend = v;
        else if (!strcmp(a, "--out")) c->out = v;
        else if (!strcmp(a, "--resume")) c->resume = v;
        else if (!strcmp(a, "--algo")) {
            int k = util_choice(v, algo_names, 3);
            ok = k >= 0;
            c->algo = (algo)(k < 0 ? 0 : k);
        } else if (!strcmp(a, "--outer-optim")) {
            const char *o[] = {"adam", "sgd"};
            int k = util_choice(v, o, 2);
            ok = k >= 0;
            c->outer_adam = k == 0;
        } else if (!strcmp(a, "--dtype")) {
            const char *d[] = {"float32", "float64"};
            int k = util_choice(v, d, 2);
            ok = k >= 0;
            c->dtype = k == 1 ? MS_F64 : MS_F32;
        } else if (!strcmp(a, "--meta-steps")) ok = util_long(v, 0, 100000000, &c->meta_steps);
        else if (!strcmp(a, "--meta-batch")) ok = util_int(v, 1, 100000, &c->meta_batch);
        else if (!strcmp(a, "--inner-steps")) ok = util_int(v, 0, 10000, &c->inner_steps);
        else if (!strcmp(a, "--k") || !strcmp(a, "--shots")) ok = util_int(v, 1, 100000, &c->k);
        else if (!strcmp(a, "--eval-tasks")) ok = util_int(v, 1, 100000, &c->eval_tasks);
        else if (!strcmp(a, "--eval-every")) ok = util_int(v, 1, 100000000, &c->eval_every);
        else if (!strcmp(a, "--inner-lr")) ok = util_double(v, &c->inner_lr);
        else if (!strcmp(a, "--outer-lr")) ok = util_double(v, &c->outer_lr) && c->outer_lr > 0;
        else if (!strcmp(a, "--seed")) {
            long s;
            ok = util_long(v, 0, 1L << 62, &s);
            c->seed = (uint64_t)s;
        } else if (!add_task_opt("train", c->opt_key, c->opt_val, &c->nopts, a, v)) {
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "metastep train: invalid value '%s' for %s (try --help)\n", v, a);
            return 2;
        }
    }
    if (!c->task) {
        fprintf(stderr, "metastep train: --task is required (try --help)\n");
        return 2;
    }
    if (c->resume)
        c->out = c->resume;
    if (c->eval_every == 0)
        c->eval_every = c->meta_steps >= 50 ? (int)(c->meta_steps / 50) : 1;
    return -1;
}

int cmd_train(int argc, char **argv)
{
    config c;
    int rc = parse_train(argc, argv, &c);
    if (rc >= 0)
        return rc;
    rc = 0;
    const metastep_task *task;
    if (!setup_backend(c.backend))
        return 1;
    if (metastep_load_task(c.task, &task) != MS_OK)
        return fail_ms("cannot load the task plugin");
    if ((rc = configure_task("train", task, c.opt_key, c.opt_val, c.nopts)) != 0)
        return rc;
    if (!util_mkdirs(c.out)) {
        fprintf(stderr, "metastep train: cannot create %s: %s\n", c.out, strerror(errno));
        return 1;
    }
    metastep_optimizer outer = c.outer_adam ? metastep_adam(0.9, 0.999, 1e-8) : metastep_sgd(0.0, false);
    metastep_optim_state *opt = metastep_optim_state_new(&outer);
    ms_container *vars = NULL;
    long start = 0;
    if (c.resume) {
        if (load_checkpoint(&c, &vars, opt, &start) != MS_OK) {
            metastep_optim_state_release(opt);
            return fail_ms("cannot resume");
        }
    } else {
        vars = task->init_variables(c.seed, c.dtype);
    }
    if (!vars) {
        metastep_optim_state_release(opt);
        return fail_ms("cannot initialise the variables");
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/log.csv", c.out);
    FILE *log = fopen(path, c.resume ? "a" : "w");
    if (!log) {
        fprintf(stderr, "metastep train: cannot write %s: %s\n", path, strerror(errno));
        ms_container_release(vars);
        metastep_optim_state_release(opt);
        return 1;
    }
    if (!c.resume)
        fprintf(log, "step,train_loss,heldout_loss_0,heldout_loss_1,seconds,heldout_acc_0,"
                     "heldout_acc_1\n");
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    bool tty = isatty(STDERR_FILENO);
    long n = c.meta_steps > start ? c.meta_steps - start : 0;
    double *hist = calloc((size_t)n + 1, sizeof *hist), *hsteps = calloc((size_t)n + 1, sizeof *hsteps);
    int ecap = (int)(n / c.eval_every) + 2, ne = 0;
    double *es = calloc((size_t)ecap, sizeof *es), *e0 = calloc((size_t)ecap, sizeof *e0),
           *e1 = calloc((size_t)ecap, sizeof *e1), *a0 = calloc((size_t)ecap, sizeof *a0),
           *a1 = calloc((size_t)ecap, sizeof *a1);
    bool accuracy = false;
    metastep_eval last_ev = eval_blank(); /* the evaluation of the last step, if any */
    long last_ev_step = -1;
    if (!hist || !hsteps || !es || !e0 || !e1 || !a0 || !a1) {
        fprintf(stderr, "metastep train: out of memory\n");
        rc = 1;
    }
    if (!c.quiet && rc != 1)
        fprintf(stderr, "metastep train: %s on '%s' with backend %s, %ld meta-steps of %d tasks%s\n",
                algo_names[c.algo], task->header.name, metastep_current_backend(), c.meta_steps,
                c.meta_batch, c.batched ? " (batched)" : "");
    double t0 = now(), last_print = 0, loss = NAN, rate = 0;
    long step = start, done = 0;
    for (; rc != 1 && step < c.meta_steps && !interrupted; step++) {
        ms_scope_push();
        uint64_t bseed = c.seed * 1000003ull + (uint64_t)step + 1;
        ms_container *batch = task->sample(c.meta_batch, c.k, bseed, c.dtype);
        metastep_result r = {0};
        ms_status st = batch ? meta_step(&c, task, batch, vars, &r) : ms_last_error(NULL);
        ms_container *next = st == MS_OK ? metastep_optim_step(opt, vars, r.grads, c.outer_lr, true) : NULL;
        if (next) {
            loss = ms_tensor_item(r.cost);
            ms_container_release(vars);
            vars = next;
        }
        metastep_result_release(&r);
        ms_container_release(batch);
        ms_scope_pop();
        if (!next) {
            fail_ms("meta-step failed");
            rc = 1;
            break;
        }
        hist[done] = loss;
        hsteps[done++] = (double)step + 1;
        double t = now() - t0;
        rate = (double)done / (t > 0 ? t : 1e-9);
        bool eval_now = (step + 1) % c.eval_every == 0 || step + 1 == c.meta_steps;
        double h0 = NAN, h1 = NAN, ha0 = NAN, ha1 = NAN;
        if (eval_now) {
            metastep_eval ev = eval_blank();
            if (task->evaluate(vars, c.eval_tasks, c.k, c.inner_lr, HELDOUT_SEED, c.dtype, &ev) == MS_OK) {
                last_ev = ev;
                last_ev_step = step + 1;
                h0 = ev.loss[0];
                h1 = ev.loss[1];
                if (ev.has_accuracy) {
                    accuracy = true;
                    ha0 = ev.accuracy[0];
                    ha1 = ev.accuracy[1];
                }
                if (ne < ecap) {
                    es[ne] = (double)step + 1;
                    e0[ne] = h0;
                    a0[ne] = ha0;
                    a1[ne] = ha1;
                    e1[ne++] = h1;
                }
            } else {
                ms_clear_error();
            }
        }
        fprintf(log, "%ld,%.6g,%.6g,%.6g,%.3f,%.6g,%.6g\n", step + 1, loss, h0, h1, t, ha0, ha1);
        if (eval_now)
            fflush(log);
        if ((tty && t - last_print > 0.1) || (!tty && eval_now)) {
            progress(&c, step + 1, c.meta_steps, rate, loss, t0, tty, false);
            last_print = t;
        }
    }
    double seconds = now() - t0;
    if (rc != 1 && tty)
        progress(&c, step, c.meta_steps, rate, loss, t0, tty, true);
    fclose(log);
    sigaction(SIGINT, &old, NULL);
    if (rc != 1) {
        if (save_checkpoint(&c, vars, opt, step) != MS_OK)
            rc = fail_ms("cannot write the checkpoint");
        snprintf(path, sizeof path, "%s/params.safetensors", c.out);
        if (ms_container_save(vars, path) != MS_OK)
            rc = fail_ms("cannot write the parameters");
    }
    if (rc != 1 && !interrupted) {
        /* the same variables on the same tasks: reuse the last step's evaluation */
        metastep_eval ev = last_ev;
        if (last_ev_step != step &&
            task->evaluate(vars, c.eval_tasks, c.k, c.inner_lr, HELDOUT_SEED, c.dtype, &ev) != MS_OK)
            rc = fail_ms("final evaluation failed");
        write_summary(&c, task, done, seconds, &ev, false);
#ifdef MS_HAVE_PLOT
        write_curves(c.out, hsteps, hist, done, es, e0, e1, ne, a0, a1, accuracy || ev.has_accuracy);
        write_fits(&c, task, vars);
        if (ev.has_accuracy)
            write_episodes(&c, task, vars);
#endif
        if (!c.quiet) {
            if (ev.has_accuracy) {
                printf("held-out query loss on %d tasks: %.4f before adaptation, %.4f after 1 "
                       "step, %.4f after 10 steps\n", c.eval_tasks, ev.loss[0], ev.loss[1],
                       ev.loss[2]);
                printf("held-out query accuracy: ");
                for (int i = 0; i < METASTEP_EVAL_POINTS; i++) {
                    printf("%s%.2f%%", i ? ", " : "", 100 * ev.accuracy[i]);
                    if (has_ci(task, &ev))
                        printf(" +- %.2f%%", 100 * ev.accuracy_ci95[i]);
                    printf(" after %d step%s", ev.steps[i], ev.steps[i] == 1 ? "" : "s");
                }
                printf(" (95%% confidence intervals)\n");
            } else {
                printf("held-out query MSE on %d tasks: %.4f before adaptation, %.4f after 1 step, "
                       "%.4f after 10 steps\n", c.eval_tasks, ev.loss[0], ev.loss[1], ev.loss[2]);
            }
            printf("%.1f meta-steps/s; wrote %s/{log.csv,params.safetensors,summary.json"
#ifdef MS_HAVE_PLOT
                   ",curves.png%s"
#endif
                   "}\n", seconds > 0 ? (double)done / seconds : 0.0, c.out
#ifdef MS_HAVE_PLOT
                   , ev.has_accuracy ? ",episodes.png" : ",fits.png"
#endif
                   );
        }
    } else if (interrupted) {
        metastep_eval none = eval_blank();
        write_summary(&c, task, done, seconds, &none, true);
        fprintf(stderr, "metastep train: interrupted at step %ld; checkpoint in %s "
                        "(continue with --resume %s)\n", step, c.out, c.out);
        rc = 130;
    }
    free(hist);
    free(hsteps);
    free(es);
    free(e0);
    free(e1);
    free(a0);
    free(a1);
    ms_container_release(vars);
    metastep_optim_state_release(opt);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    const char *task_name = NULL, *params = NULL, *backend = NULL;
    int k = 10, tasks = 100;
    double lr = 0.01;
    bool json = false;
    ms_dtype dt = MS_F32;
    const char *keys[MAX_TASK_OPTS], *vals[MAX_TASK_OPTS];
    int nopts = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            eval_usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) { json = true; continue; }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "metastep eval: %s '%s' (try --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value for", a);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "--task")) task_name = v;
        else if (!strcmp(a, "--params")) params = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else if (!strcmp(a, "--k") || !strcmp(a, "--shots")) ok = util_int(v, 1, 100000, &k);
        else if (!strcmp(a, "--tasks")) ok = util_int(v, 1, 100000, &tasks);
        else if (!strcmp(a, "--inner-lr")) ok = util_double(v, &lr);
        else if (!strcmp(a, "--dtype")) {
            const char *d[] = {"float32", "float64"};
            int c = util_choice(v, d, 2);
            ok = c >= 0;
            dt = c == 1 ? MS_F64 : MS_F32;
        } else if (!add_task_opt("eval", keys, vals, &nopts, a, v)) {
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "metastep eval: invalid value '%s' for %s (try --help)\n", v, a);
            return 2;
        }
    }
    if (!task_name || !params) {
        fprintf(stderr, "metastep eval: --task and --params are required (try --help)\n");
        return 2;
    }
    const metastep_task *task;
    if (!setup_backend(backend))
        return 1;
    if (metastep_load_task(task_name, &task) != MS_OK)
        return fail_ms("cannot load the task plugin");
    int rc = configure_task("eval", task, keys, vals, nopts);
    if (rc != 0)
        return rc;
    ms_container *vars = NULL;
    if (ms_container_load(params, &vars) != MS_OK)
        return fail_ms("cannot load the parameters");
    metastep_eval ev = eval_blank();
    ms_status st = task->evaluate(vars, tasks, k, lr, HELDOUT_SEED, dt, &ev);
    ms_container_release(vars);
    if (st != MS_OK)
        return fail_ms("evaluation failed");
    if (json) {
        printf("{\"tasks\": %d, \"loss_after_steps\": {", tasks);
        for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
            printf("%s\"%d\": %.6g", i ? ", " : "", ev.steps[i], ev.loss[i]);
        if (ev.has_accuracy) {
            printf("}, \"accuracy_after_steps\": {");
            for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
                printf("%s\"%d\": %.6g", i ? ", " : "", ev.steps[i], ev.accuracy[i]);
            if (has_ci(task, &ev)) {
                printf("}, \"accuracy_ci95\": {");
                for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
                    printf("%s\"%d\": %.6g", i ? ", " : "", ev.steps[i],
                           isfinite(ev.accuracy_ci95[i]) ? ev.accuracy_ci95[i] : 0.0);
            }
        }
        printf("}}\n");
    } else {
        printf("held-out query %s on %d '%s' tasks (K=%d, inner lr %g):\n",
               ev.has_accuracy ? "loss and accuracy" : "loss", tasks, task->header.name, k, lr);
        for (int i = 0; i < METASTEP_EVAL_POINTS; i++) {
            printf("  after %2d steps: %.4f", ev.steps[i], ev.loss[i]);
            if (ev.has_accuracy)
                printf("  accuracy %.2f%%", 100 * ev.accuracy[i]);
            if (has_ci(task, &ev))
                printf(" +- %.2f%% (95%% CI)", 100 * ev.accuracy_ci95[i]);
            printf("\n");
        }
    }
    return 0;
}
