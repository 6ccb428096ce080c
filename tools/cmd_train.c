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
#include "mpi_train.h"
#include "runlog.h"
#include "util.h"
#include "variants.h"

#ifdef MS_HAVE_PLOT
#include "plot.h"
#endif

#define HELDOUT_SEED 0x5eed0f7e57ull /* held-out tasks never drawn in training */
#define FITS_SEED 0xf175ull
#define EPISODES_SEED 0xe915ull
#define MAX_TASK_OPTS 32

typedef enum { ALGO_MAML, ALGO_FOMAML, ALGO_REPTILE, ALGO_IMAML, ALGO_METASGD, ALGO_MAMLPP } algo;
static const char *const algo_names[] = {"maml", "fomaml", "reptile", "imaml", "metasgd", "mamlpp"};
#define NALGOS ((int)(sizeof algo_names / sizeof *algo_names))
typedef enum { ENGINE_AUTO, ENGINE_COMPILED, ENGINE_EAGER } engine;
static const char *const engine_names[] = {"auto", "compiled", "eager"};
/* MAML++'s multi-step loss annealing when --algo mamlpp gives no --msl-anneal */
#define MAMLPP_MSL_ANNEAL 100

typedef struct config {
    const char *task, *backend, *out, *resume;
    algo algo;
    long meta_steps;
    int meta_batch, inner_steps, k, eval_tasks, eval_every;
    int threads; /* tasks of an unbatched meta-step at once (results do not depend on it) */
    int engine;  /* ENGINE_*: compiled plan or the step functions */
    long save_every; /* 0: checkpoint only at the end and on Ctrl-C */
    double inner_lr, outer_lr;
    bool outer_adam, batched, quiet, force_resume, overwrite;
    uint64_t seed;
    ms_dtype dtype;
    /* --key value pairs the command does not know: the task's options */
    const char *opt_key[MAX_TASK_OPTS], *opt_val[MAX_TASK_OPTS]; /* value may be NULL */
    char opt_buf[MAX_TASK_OPTS][64];
    int nopts;
    /* long inner loops (docs/long-inner-loops.md) */
    int checkpoint_every; /* maml: metastep_options.checkpoint_every */
    double memory_budget; /* maml: metastep_options.checkpoint_budget_mib */
    double lambda;        /* imaml: proximal strength */
    int cg_steps;         /* imaml: conjugate-gradient iterations */
    bool checkpoint_given;
    /* beyond Ivy (docs/variants.md) */
    bool adapt_head;                   /* --adapt head: ANIL */
    long msl_anneal, first_order_until; /* 0: off */
    char head_buf[256];
    const char *head_v[2];             /* the head's key chain prefix, when adapt_head */
} config;

/* Learned inner rates: Meta-SGD (per element) or MAML++ LSLR (per step). */
static bool learned_rates(const config *c)
{
    return c->algo == ALGO_METASGD || c->algo == ALGO_MAMLPP;
}

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
        "  checkpoint.safetensors  written on Ctrl-C (and at the end, and every\n"
        "                      --save-every steps), for --resume\n"
        "\n"
        "options:\n"
        "  --task NAME|PATH     task plugin (e.g. sine)                          [required]\n"
        "  --algo A             maml | fomaml | reptile | imaml | metasgd | mamlpp  [maml]\n"
        "                       imaml: implicit MAML (docs/long-inner-loops.md)\n"
        "                       metasgd: second-order MAML with a learned rate per\n"
        "                       parameter element (Meta-SGD), initialised to --inner-lr;\n"
        "                       mamlpp: MAML++, a learned rate per variable and inner step\n"
        "                       (LSLR) and the annealed multi-step loss (docs/variants.md)\n"
        "  --adapt W            all | head: head adapts only the last layer's variables\n"
        "                       in the inner loop (ANIL; not with reptile)           [all]\n"
        "  --msl-anneal N       multi-step loss over the inner steps with MAML++'s weights,\n"
        "                       annealed to the final step over N meta-steps, then the\n"
        "                       final loss alone (not with reptile)   [mamlpp: 100; else 0]\n"
        "  --first-order-until N  first-order MAML for the first N meta-steps, second\n"
        "                       order after (maml, metasgd, mamlpp)                [0]\n"
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
        "  --checkpoint-every N maml: keep the inner loop's variables every N steps and\n"
        "                       recompute each segment's graph in the backward pass\n"
        "                       (memory ~ k/N + N steps, not k); -1: N = sqrt(k); 0: off [0]\n"
        "  --memory-budget MiB  maml: choose N from this budget for what grows with\n"
        "                       the inner steps (checkpoints and one segment)      [off]\n"
        "  --lambda X           imaml: proximal term lambda/2 ||phi - theta||^2   [1]\n"
        "  --cg-steps N         imaml: conjugate-gradient iterations              [5]\n"
        "  --threads N          cores to use: N tasks of an unbatched meta-step at once\n"
        "                       (1 kernel thread each), or N kernel threads for batched\n"
        "                       steps and evaluation; results are bit-identical for\n"
        "                       every N                                    [cores online]\n"
        "  --engine E           compiled: trace the meta-step once and replay it\n"
        "                       (metastep_plan_*; one thread); eager: the step\n"
        "                       functions; auto: compiled unless unbatched with\n"
        "                       --threads above 1 or with --checkpoint-every or\n"
        "                       --memory-budget; iMAML runs eagerly; results are\n"
        "                       identical                                  [auto]\n"
        "  --save-every N       write the checkpoint (and parameters) every N steps [0: off]\n"
        "  --seed N             seed of initial parameters and task draws         [0]\n"
        "  --dtype D            float32 | float64                                 [float32]\n"
        "  --eval-every N       held-out evaluation period in steps  [meta-steps/50]\n"
        "  --eval-tasks N       held-out tasks for evaluations                    [100]\n"
        "  --out DIR            output directory (created)                        [out]\n"
        "  --resume DIR         continue the run whose checkpoint is in DIR, writing there;\n"
        "                       the checkpoint records the flags: a resume with other\n"
        "                       flags (algo, optimizer, rates, steps, task options...) is\n"
        "                       refused, naming them\n"
        "  --force-resume       resume even though the flags differ from the checkpoint's\n"
        "  --overwrite          replace the run already in --out DIR (without it a\n"
        "                       directory holding a log.csv is refused)\n"
        "  --quiet, -q          no progress output\n"
        "Under mpirun (when built with MPI) each rank runs its share of every\n"
        "meta-batch's tasks; results equal one process's bit for bit; rank 0 writes\n"
        "the run directory; --threads defaults to the cores over the ranks on a node;\n"
        "--batched is refused (docs/scaling.md).\n"
        "  --help               this text\n"
        "\n"
        "Exit status: 0 done; 1 error; 2 bad flags (or a resume with other flags);\n"
        "3 the run diverged (non-finite loss, or over 1e6 times the first): the last\n"
        "sound step's checkpoint and parameters are kept; 4 an output (checkpoint,\n"
        "parameters, log, summary, plot) could not be written; 130 interrupted by\n"
        "Ctrl-C, checkpoint written.  Non-finite numbers in summary.json are null.\n"
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
        "                       (learned rates in --params, under inner_lr/, are used\n"
        "                       instead: Meta-SGD, MAML++ whose per-step rates reuse\n"
        "                       the last one beyond their steps)\n"
        "  --adapt W            all | head: adapt only the last layer (ANIL)      [all]\n"
        "  --k N, --shots N     support (and query) points per task               [10]\n"
        "  --tasks N            held-out tasks                                    [100]\n"
        "  --dtype D            float32 | float64 (default: the dtype of --params)\n"
        "  --json               print the result as JSON (NaN and infinities as null)\n"
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
        ms_status st = task->configure(keys[i], vals[i] ? vals[i] : "");
        if (!vals[i]) { /* "--key" with no value: unknown, or a task option missing its value */
            fprintf(stderr, "metastep %s: %s '--%s'%s%s%s (try --help)\n", cmd,
                    st == MS_ERR_KEY ? "unknown option" : "missing value for", keys[i],
                    st == MS_ERR_KEY ? " (not an option of the task '" : "",
                    st == MS_ERR_KEY ? task->header.name : "", st == MS_ERR_KEY ? "')" : "");
            ms_clear_error();
            return 2;
        }
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

/* The model's variables (rates left out) adapted on one task as the
 * algorithm adapts: learned rates, the ANIL head; otherwise adapt(). */
static ms_container *adapt_params(const config *c, const metastep_task *task,
                                  const ms_container *sub, const ms_container *vars, int steps)
{
    if (!learned_rates(c) && !c->adapt_head)
        return adapt(task, sub, vars, c->inner_lr, steps);
    ms_container *model = NULL, *rates = NULL, *out = NULL;
    if (variant_split(vars, &model, &rates) == MS_OK) {
        variant_adapt a = {.rates = ms_container_size(rates) ? rates : NULL,
                           .per_step = variant_per_step(model, rates),
                           .inner_v = c->adapt_head ? c->head_v : NULL, .lr = c->inner_lr};
        out = variant_adapt_task(task, sub, model, &a, steps);
    }
    ms_container_release(model);
    ms_container_release(rates);
    return out;
}

/* A plotting batch split into its tasks: the count, or -1 (batch released,
 * error cleared) when there is no picture to draw; a missing figure is not a
 * failure of the run. */
static int unstack_for_plot(ms_container *batch, ms_container ***subs)
{
    int n = 0;
    if (!batch || ms_container_unstack(batch, true, &n, subs) != MS_OK) {
        ms_container_release(batch);
        ms_clear_error();
        return -1;
    }
    return n;
}

static void release_unstacked(ms_container *batch, ms_container **subs, int n)
{
    for (int i = 0; i < n; i++)
        ms_container_release(subs[i]);
    free(subs);
    ms_container_release(batch);
}

static bool write_fits(const config *c, const metastep_task *task, const ms_container *vars)
{
    if (!task->predict || !task->truth)
        return true;
    enum { NT = 4, NX = 200 };
    ms_scope_push();
    ms_container *batch = task->sample(NT, c->k, FITS_SEED, c->dtype), **subs = NULL;
    int n = unstack_for_plot(batch, &subs);
    if (n < 0) {
        ms_scope_pop();
        return true;
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
        ms_container *a1 = adapt_params(c, task, subs[t], vars, 1);
        ms_container *a10 = adapt_params(c, task, subs[t], vars, 10);
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
    bool ok = plot_png(path, 1200, 900, panels, n < NT ? n : NT, 2, err, sizeof err) == 0;
    if (!ok)
        fprintf(stderr, "metastep: fits.png: %s\n", err);
    release_unstacked(batch, subs, n);
    ms_scope_pop();
    return ok;
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
static bool write_episodes(const config *c, const metastep_task *task, const ms_container *vars)
{
    if (!METASTEP_TASK_HAS_SLOT(task, sample_heldout) || !task->sample_heldout || !task->predict)
        return true;
    enum { NE = 3, MAXQ = 12, MAXS = 10, CELLS = MAXS + 1 + MAXQ };
    ms_scope_push();
    ms_container *batch = task->sample_heldout(NE, c->k, EPISODES_SEED, c->dtype), **subs = NULL;
    int n = unstack_for_plot(batch, &subs);
    if (n < 0) {
        ms_scope_pop();
        return true;
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
        ms_container *a1 = adapt_params(c, task, subs[e], vars, 1);
        ms_container *a10 = adapt_params(c, task, subs[e], vars, 10);
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
    bool ok = nrows == 0 || plot_images_png(path, "held-out episodes (frame: right / wrong after "
                                            "10 steps)", rows, nrows, 96, err, sizeof err) == 0;
    if (!ok)
        fprintf(stderr, "metastep: episodes.png: %s\n", err);
    for (int e = 0; e < NE; e++)
        for (int i = 0; i < CELLS; i++)
            free(pix[e][i]);
    release_unstacked(batch, subs, n);
    ms_scope_pop();
    ms_clear_error();
    return ok;
}
#endif

/* ------------------------------------------------------- checkpointing */

/* The configuration a checkpoint records, one "--flag=value" line each
 * (task options too, sorted): what a resume must not change silently. */
static char *config_text(const config *c, const metastep_task *task)
{
    char *lines[MAX_TASK_OPTS];
    int n = 0;
    for (int i = 0; i < c->nopts; i++) {
        size_t len = strlen(c->opt_key[i]) + strlen(c->opt_val[i] ? c->opt_val[i] : "") + 8;
        lines[n] = malloc(len);
        if (!lines[n])
            break;
        snprintf(lines[n++], len, "--%s=%s\n", c->opt_key[i], c->opt_val[i] ? c->opt_val[i] : "");
    }
    for (int i = 1; i < n; i++) /* insertion sort: a handful of options */
        for (int j = i; j > 0 && strcmp(lines[j - 1], lines[j]) > 0; j--) {
            char *t = lines[j];
            lines[j] = lines[j - 1];
            lines[j - 1] = t;
        }
    size_t cap = 1024;
    for (int i = 0; i < n; i++)
        cap += strlen(lines[i]);
    char *text = malloc(cap);
    if (text) {
        int len = snprintf(text, cap, "--task=%s\n--algo=%s\n--outer-optim=%s\n--inner-steps=%d\n"
                           "--inner-lr=%.17g\n--outer-lr=%.17g\n--meta-batch=%d\n--k=%d\n"
                           "--batched=%s\n--seed=%llu\n--dtype=%s\n", task->header.name,
                           algo_names[c->algo], c->outer_adam ? "adam" : "sgd", c->inner_steps,
                           c->inner_lr, c->outer_lr, c->meta_batch, c->k,
                           c->batched ? "yes" : "no", (unsigned long long)c->seed,
                           ms_dtype_name(c->dtype));
        if (c->algo == ALGO_IMAML) /* only then: older checkpoints' texts stay as they were */
            len += snprintf(text + len, cap - (size_t)len, "--lambda=%.17g\n--cg-steps=%d\n",
                            c->lambda, c->cg_steps);
        if (c->adapt_head) /* only when not the default: older checkpoints still match */
            len += snprintf(text + len, cap - (size_t)len, "--adapt=head\n");
        if (c->msl_anneal)
            len += snprintf(text + len, cap - (size_t)len, "--msl-anneal=%ld\n", c->msl_anneal);
        if (c->first_order_until)
            len += snprintf(text + len, cap - (size_t)len, "--first-order-until=%ld\n",
                            c->first_order_until);
        for (int i = 0; i < n; i++)
            len += snprintf(text + len, cap - (size_t)len, "%s", lines[i]);
    }
    for (int i = 0; i < n; i++)
        free(lines[i]);
    return text;
}

/* The value of "--flag=" in a config text (up to the newline), or NULL. */
static const char *config_value(const char *text, const char *flag, int *len)
{
    size_t fl = strlen(flag);
    for (const char *p = text; p && *p;) {
        const char *nl = strchr(p, '\n');
        if (!strncmp(p, flag, fl) && p[fl] == '=') {
            *len = (int)((nl ? nl : p + strlen(p)) - (p + fl + 1));
            return p + fl + 1;
        }
        p = nl ? nl + 1 : NULL;
    }
    return NULL;
}

/* Append to msg the flags whose values differ between two config texts. */
static int config_diff(const char *old, const char *now_text, char *msg, size_t cap)
{
    int ndiff = 0;
    size_t used = strlen(msg);
    const char *texts[2] = {old, now_text};
    for (int t = 0; t < 2; t++)
        for (const char *p = texts[t]; p && *p;) {
            const char *nl = strchr(p, '\n'), *eq = strchr(p, '=');
            if (!nl || !eq || eq > nl)
                break;
            char flag[128];
            snprintf(flag, sizeof flag, "%.*s", (int)(eq - p), p);
            int lo = 0, ln = 0;
            const char *vo = config_value(old, flag, &lo), *vn = config_value(now_text, flag, &ln);
            bool differ = !vo || !vn || lo != ln || strncmp(vo, vn, (size_t)lo) != 0;
            if (differ && (t == 0 || !vo)) { /* report each flag once */
                used += (size_t)snprintf(msg + used, used < cap ? cap - used : 0,
                                         "%s%s was %.*s, now %.*s", ndiff ? "; " : "", flag,
                                         vo ? lo : 11, vo ? vo : "(not given)", vn ? ln : 11,
                                         vn ? vn : "(not given)");
                if (used >= cap)
                    used = cap - 1;
                ndiff++;
            }
            p = nl + 1;
        }
    return ndiff;
}

static ms_status save_checkpoint(const config *c, const metastep_task *task,
                                 const ms_container *vars, const ms_container *os, long step)
{
    ms_container *ck = ms_container_new();
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
    char *text = config_text(c, task);
    if (st == MS_OK && !text)
        st = ms_record_error(MS_ERR_NOMEM, "out of memory");
    if (st == MS_OK) { /* the configuration: its bytes as a float64 vector */
        int64_t n = (int64_t)strlen(text);
        double *b = malloc(sizeof *b * (size_t)(n ? n : 1));
        for (int64_t i = 0; b && i < n; i++)
            b[i] = (unsigned char)text[i];
        ms_tensor *t = b ? ms_tensor_from_data(MS_F64, 1, &n, b) : NULL;
        st = t ? ms_container_set(ck, "meta/config", t) : ms_record_error(MS_ERR_NOMEM, "out of memory");
        ms_release(t);
        free(b);
    }
    free(text);
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out);
    if (st == MS_OK)
        st = ms_container_save(ck, path);
    ms_container_release(ck);
    return st;
}

/* meta/config of a checkpoint as text; NULL (with an error) when malformed. */
static char *checkpoint_config(const ms_tensor *t, const char *path)
{
    int64_t n = t && ms_tensor_ndim(t) == 1 ? ms_tensor_numel(t) : -1;
    if (n < 1 || n > 65536) {
        ms_record_error(MS_ERR_FORMAT, "%s: meta/config is not a configuration", path);
        return NULL;
    }
    char *text = malloc((size_t)n + 1);
    for (int64_t i = 0; text && i < n; i++) {
        double v = util_value(t, i);
        if (!(v >= 1 && v <= 255 && v == floor(v))) {
            free(text);
            ms_record_error(MS_ERR_FORMAT, "%s: meta/config is not a configuration", path);
            return NULL;
        }
        text[i] = (char)(unsigned char)v;
    }
    if (text)
        text[n] = '\0';
    return text;
}

/* Every leaf of the checkpoint's parameters has the key, dtype and shape of
 * the task's model and finite values. */
static ms_status check_params(const ms_container *v, const ms_container *model, const char *path)
{
    for (int i = 0; i < ms_container_size(model); i++) {
        const char *k = ms_container_key(model, i);
        if (!ms_container_has(v, k))
            return ms_record_error(MS_ERR_FORMAT, "%s: params/%s is missing", path, k);
    }
    for (int i = 0; i < ms_container_size(v); i++) {
        const char *k = ms_container_key(v, i);
        const ms_tensor *t = ms_container_at(v, i);
        const ms_tensor *m = ms_container_has(model, k) ? ms_container_get(model, k) : NULL;
        if (!m)
            return ms_record_error(MS_ERR_FORMAT, "%s: params/%s is not a parameter of the task's "
                                   "model", path, k);
        bool same = ms_tensor_dtype(t) == ms_tensor_dtype(m) && ms_tensor_ndim(t) == ms_tensor_ndim(m);
        for (int d = 0; same && d < ms_tensor_ndim(t); d++)
            same = ms_tensor_shape(t)[d] == ms_tensor_shape(m)[d];
        if (!same)
            return ms_record_error(MS_ERR_FORMAT, "%s: params/%s has another dtype or shape than "
                                   "the task's model", path, k);
        for (int64_t j = 0; j < ms_tensor_numel(t); j++)
            if (!isfinite(util_value(t, j)))
                return ms_record_error(MS_ERR_FORMAT, "%s: params/%s holds a NaN or an infinity",
                                       path, k);
    }
    return MS_OK;
}

/* The initial meta-parameters: the task's variables, and with learned
 * rates (metasgd, mamlpp) "inner_lr/<key chain>" for each inner variable,
 * every element --inner-lr (Meta-SGD: the variable's shape; MAML++ LSLR:
 * [inner steps]). */
static ms_container *initial_params(const config *c, const metastep_task *task)
{
    ms_container *v = task->init_variables(c->seed, c->dtype);
    if (!v || !learned_rates(c))
        return v;
    ms_container *all = variant_with_rates(v, c->adapt_head ? c->head_v : NULL,
                                           c->algo == ALGO_MAMLPP, c->inner_steps, c->inner_lr);
    ms_container_release(v);
    return all;
}

/* The ANIL head's key chain prefix, from the task's model. */
static bool setup_head(config *c, const metastep_task *task)
{
    if (!c->adapt_head)
        return true;
    ms_container *v = task->init_variables(c->seed, c->dtype);
    if (!v)
        return false;
    variant_head(v, c->head_buf, sizeof c->head_buf, c->head_v);
    ms_container_release(v);
    return true;
}

/* Held-out evaluation of meta-parameters with learned rates or a head:
 * the plugin's evaluate knows only a scalar rate on every variable. */
static ms_status eval_variant(const metastep_task *task, const ms_container *params,
                              const char *const *inner_v, double lr, int tasks, int k,
                              ms_dtype dt, metastep_eval *ev)
{
    ms_container *model = NULL, *rates = NULL;
    ms_status st = variant_split(params, &model, &rates);
    /* classification or not: the plugin's own evaluation of one task says */
    metastep_eval probe = eval_blank();
    if (st == MS_OK)
        st = task->evaluate(model, 1, k, lr, HELDOUT_SEED, dt, &probe);
    if (st == MS_OK) {
        variant_adapt a = {.rates = ms_container_size(rates) ? rates : NULL,
                           .per_step = variant_per_step(model, rates), .inner_v = inner_v,
                           .lr = lr};
        st = variant_evaluate(task, model, &a, tasks, k, HELDOUT_SEED, dt, probe.has_accuracy, ev);
    }
    ms_container_release(model);
    ms_container_release(rates);
    return st;
}

static ms_status evaluate_params(const config *c, const metastep_task *task,
                                 const ms_container *vars, metastep_eval *ev)
{
    if (!learned_rates(c) && !c->adapt_head)
        return task->evaluate(vars, c->eval_tasks, c->k, c->inner_lr, HELDOUT_SEED, c->dtype, ev);
    return eval_variant(task, vars, c->adapt_head ? c->head_v : NULL, c->inner_lr, c->eval_tasks,
                        c->k, c->dtype, ev);
}

/* Load c->resume's checkpoint; MS_OK, or an error recorded.  *config_rc is
 * set to 2 when the checkpoint's configuration differs from c's (message
 * printed). */
static ms_status load_checkpoint(const config *c, const metastep_task *task, ms_container **vars,
                                 metastep_optim_state *opt, long *step, int *config_rc)
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
    ms_container *v = ms_container_new(), *state = ms_container_new(), *model = NULL;
    st = params && v && state ? MS_OK
         : ms_record_error(MS_ERR_FORMAT, "%s is not a metastep train checkpoint", path);
    /* meta/step: a whole number of steps, 0..100000000 */
    ms_tensor *ts = ms_container_get(ck, "meta/step");
    double sv = ts && ms_tensor_numel(ts) == 1 && ms_tensor_ndim(ts) <= 1 ? util_value(ts, 0) : NAN;
    if (st == MS_OK && !ts)
        st = ms_record_error(MS_ERR_FORMAT, "%s: meta/step is missing (not a metastep train "
                             "checkpoint)", path);
    else if (st == MS_OK && !(sv >= 0 && sv <= 100000000 && sv == floor(sv)))
        st = ms_record_error(MS_ERR_FORMAT, "%s: meta/step is %s, not a step count in "
                             "0..100000000", path, ms_tensor_numel(ts) != 1 ? "not one number" :
                             isnan(sv) ? "NaN" : isinf(sv) ? "infinite" : "out of range or fractional");
    /* meta/config: the flags of the run */
    if (st == MS_OK && ms_container_has(ck, "meta/config")) {
        char *old = checkpoint_config(ms_container_get(ck, "meta/config"), path);
        char *cur = config_text(c, task);
        if (!old || !cur) {
            st = old ? ms_record_error(MS_ERR_NOMEM, "out of memory") : ms_last_error(NULL);
        } else {
            char msg[2048] = "";
            if (config_diff(old, cur, msg, sizeof msg) && !c->force_resume) {
                fprintf(stderr, "metastep train: the checkpoint in %s was written with other flags: "
                                "%s.  Give the same flags, or add --force-resume to continue with "
                                "the new ones.\n", c->resume, msg);
                *config_rc = 2;
                st = MS_ERR_INVALID_ARG;
            } else if (msg[0] && !c->quiet) {
                fprintf(stderr, "metastep train: --force-resume: continuing with other flags (%s)\n",
                        msg);
            }
        }
        free(old);
        free(cur);
    } else if (st == MS_OK && !c->quiet) {
        fprintf(stderr, "metastep train: %s records no configuration; the flags are not checked\n",
                path);
    }
    for (int i = 0; st == MS_OK && i < ms_container_size(params); i++)
        st = ms_container_set(v, ms_container_key(params, i) + 7, ms_container_at(params, i));
    if (st == MS_OK) {
        model = initial_params(c, task);
        st = model ? check_params(v, model, path) : ms_last_error(NULL);
    }
    for (int i = 0; st == MS_OK && os && i < ms_container_size(os); i++)
        st = ms_container_set(state, ms_container_key(os, i) + 6, ms_container_at(os, i));
    if (st == MS_OK && os)
        st = metastep_optim_state_restore(opt, state);
    if (st == MS_OK) {
        *step = (long)sv;
        *vars = v;
        v = NULL;
    }
    ms_container_release(model);
    ms_container_release(v);
    ms_container_release(state);
    ms_container_release(params);
    ms_container_release(os);
    ms_container_release(ck);
    return st;
}

/* ----------------------------------------------------------- the log */

#define LOG_HEADER "step,train_loss,heldout_loss_0,heldout_loss_1,seconds,heldout_acc_0," \
                   "heldout_acc_1,heldout_loss_10,heldout_acc_10\n"

/* On resume: keep log.csv's whole rows of steps 1..upto (one each, in order)
 * and drop the rest (rows written after the checkpoint, a torn last row);
 * a log of the 7-column format gains the two new columns.  False (errno)
 * when it cannot be rewritten. */
static bool log_cut(const char *path, long upto)
{
    FILE *f = fopen(path, "r");
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    if (!out) {
        if (f)
            fclose(f);
        return false;
    }
    len = (size_t)snprintf(out, cap, "%s", LOG_HEADER);
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    long next = 1;
    bool first = true, old_format = false;
    while (f && (n = getline(&line, &lcap, f)) > 0) {
        if (line[n - 1] != '\n')
            break; /* torn */
        if (first) {
            first = false;
            old_format = strstr(line, "heldout_loss_10") == NULL;
            continue;
        }
        char *end;
        long s = strtol(line, &end, 10);
        if (end == line || *end != ',' || s != next || s > upto)
            continue;
        next++;
        if (len + (size_t)n + 16 >= cap) {
            char *grown = realloc(out, cap = 2 * cap + (size_t)n + 16);
            if (!grown) {
                free(out);
                free(line);
                fclose(f);
                return false;
            }
            out = grown;
        }
        memcpy(out + len, line, (size_t)n);
        len += (size_t)n;
        if (old_format) {
            len--;
            len += (size_t)snprintf(out + len, cap - len, ",nan,nan\n");
        }
    }
    free(line);
    if (f)
        fclose(f);
    bool ok = util_write_atomic(path, out, len);
    free(out);
    return ok;
}

#ifdef MS_HAVE_PLOT
/* curves.png of the whole run (from log.csv): the training loss raw (faint)
 * and smoothed, the held-out loss after 0, 1 and 10 steps (and accuracy). */
static bool write_curves(const char *dir, bool accuracy)
{
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    run_log l;
    if (!run_log_read(path, &l)) {
        fprintf(stderr, "metastep: curves.png: cannot read %s\n", path);
        return false;
    }
    long w = l.n / 40 > 1 ? l.n / 40 : 1;
    double *sm = run_log_smooth(l.train, l.n, w);
    char smlabel[96];
    snprintf(smlabel, sizeof smlabel, "meta-training loss, moving average of %ld steps", w);
    plot_series s[5] = {
        {.label = "meta-training loss (query, after adaptation)", .x = l.step, .y = l.train,
         .n = (int)l.n, .style = PLOT_LINE, .rgb = {0.75, 0.82, 0.92}},
        {.label = w > 1 ? smlabel : NULL, .x = l.step, .y = sm, .n = sm && w > 1 ? (int)l.n : 0,
         .style = PLOT_LINE, .rgb = {0.122, 0.467, 0.706}},
        {.label = "held-out query loss, 0 steps", .x = l.es, .y = l.h[0], .n = (int)l.ne,
         .style = PLOT_DASHED, .rgb = {1.000, 0.498, 0.055}},
        {.label = "held-out query loss, 1 step", .x = l.es, .y = l.h[1], .n = (int)l.ne,
         .style = PLOT_LINE_MARKERS, .rgb = {0.173, 0.627, 0.173}},
        {.label = "held-out query loss, 10 steps", .x = l.es, .y = l.h[2], .n = (int)l.ne,
         .style = PLOT_LINE_MARKERS, .rgb = {0.839, 0.153, 0.157}},
    };
    plot_series sa[3] = {
        {.label = "held-out query accuracy, 0 steps", .x = l.es, .y = l.acc[0], .n = (int)l.ne,
         .style = PLOT_DASHED, .rgb = {1.000, 0.498, 0.055}},
        {.label = "held-out query accuracy, 1 step", .x = l.es, .y = l.acc[1], .n = (int)l.ne,
         .style = PLOT_LINE_MARKERS, .rgb = {0.173, 0.627, 0.173}},
        {.label = "held-out query accuracy, 10 steps", .x = l.es, .y = l.acc[2], .n = (int)l.ne,
         .style = PLOT_LINE_MARKERS, .rgb = {0.839, 0.153, 0.157}},
    };
    plot_panel p[2] = {
        {.title = "meta-training", .xlabel = "meta-step", .ylabel = accuracy ? "loss" : "MSE",
         .log_y = true, .series = s, .nseries = 5},
        {.title = "held-out accuracy", .xlabel = "meta-step", .ylabel = "accuracy",
         .ylim = {0, 1}, .series = sa, .nseries = 3},
    };
    snprintf(path, sizeof path, "%s/curves.png", dir);
    bool ok = plot_png(path, accuracy ? 1500 : 900, 560, p, accuracy ? 2 : 1, 2, err, sizeof err) == 0;
    if (!ok)
        fprintf(stderr, "metastep: curves.png: %s\n", err);
    free(sm);
    run_log_free(&l);
    return ok;
}
#endif

/* ----------------------------------------------------------- the loop */

/* MAML or FOMAML as Ivy has them: none of the variants' options. */
static bool plain(const config *c)
{
    return (c->algo == ALGO_MAML || c->algo == ALGO_FOMAML) && !c->adapt_head &&
           !c->msl_anneal && !c->first_order_until;
}

/* Whether the meta-steps run as a compiled plan: Ivy's three steps only (the
 * variants, whose learned rates and step weights change every meta-step,
 * iMAML, and every step under mpirun, whose tasks are shared out, run
 * eagerly).  --engine auto compiles unless the tasks of an
 * unbatched step run on several threads (a plan replays on one) or
 * checkpointed MAML is asked for (its memory budget counts live tensors, not
 * a plan's arena). */
static bool compiled(const config *c)
{
    if ((!plain(c) && c->algo != ALGO_REPTILE) || world_env_size() > 1) /* MPI: shards */
        return false;
    return c->engine == ENGINE_COMPILED ||
           (c->engine == ENGINE_AUTO && (c->batched || c->threads <= 1) && !c->checkpoint_given);
}

/* One meta step; with a plan slot, compiled (the plan is made on first use,
 * include/metastep/plan.h), else with the step functions. */
static ms_status meta_step(const config *c, const metastep_task *task, const ms_container *batch,
                           const ms_container *vars, long step, metastep_plan **plan,
                           metastep_result *r)
{
    ms_container *model = NULL, *rates = NULL;
    if (learned_rates(c) && variant_split(vars, &model, &rates) != MS_OK)
        return ms_last_error(NULL);
    if (model)
        vars = model;
    ms_container *v = c->batched ? ms_container_replicate(vars, c->meta_batch) : ms_container_copy(vars);
    double *w = NULL;
    if (!v || (c->msl_anneal && !(w = malloc(sizeof *w * ((size_t)c->inner_steps + 1))))) {
        ms_container_release(model);
        ms_container_release(rates);
        ms_container_release(v);
        return v ? ms_record_error(MS_ERR_NOMEM, "out of memory") : ms_last_error(NULL);
    }
    ms_status st = MS_OK;
    metastep_reptile_options ro = METASTEP_REPTILE_OPTIONS_DEFAULT;
    ro.batched = c->batched;
    ro.threads = c->threads;
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = c->batched;
    o.threads = c->threads;
    o.checkpoint_every = c->algo == ALGO_MAML ? c->checkpoint_every : 0;
    o.checkpoint_budget_mib = c->algo == ALGO_MAML ? c->memory_budget : 0;
    o.shard = ro.shard = world_shard(c->meta_batch); /* NULL unless under mpirun */
    if (plan && !*plan)
        st = c->algo == ALGO_REPTILE
                 ? metastep_plan_reptile(task->inner_cost, c->inner_steps, c->inner_lr, &ro, plan)
                 : (c->algo == ALGO_MAML ? metastep_plan_maml : metastep_plan_fomaml)(
                       task->inner_cost, task->outer_cost, c->inner_steps, c->inner_lr, &o, plan);
    if (st == MS_OK && plan) {
        st = metastep_plan_run(*plan, batch, v, r);
    } else if (st == MS_OK && c->algo == ALGO_IMAML) {
        metastep_imaml_options io = METASTEP_IMAML_OPTIONS_DEFAULT;
        io.lambda = c->lambda;
        io.cg_steps = c->cg_steps;
        st = metastep_imaml_step(batch, task->inner_cost, task->outer_cost, v, c->inner_steps,
                                 c->inner_lr, &io, r);
    } else if (st == MS_OK && c->algo == ALGO_REPTILE) {
        st = metastep_reptile_step(batch, task->inner_cost, v, c->inner_steps, c->inner_lr, &ro, r);
    } else if (st == MS_OK && plain(c)) {
        st = (c->algo == ALGO_MAML ? metastep_maml_step : metastep_fomaml_step)(
            batch, task->inner_cost, task->outer_cost, v, c->inner_steps, c->inner_lr, &o, r);
    } else if (st == MS_OK) {
        /* the variants (docs/variants.md) */
        o.inner_v = c->adapt_head ? c->head_v : NULL;
        o.inner_learning_rates = rates;
        o.inner_lr_per_step = c->algo == ALGO_MAMLPP;
        if (w && metastep_msl_weights(c->inner_steps, step, c->msl_anneal, w))
            o.step_weights = w;
        long fo_until = c->algo == ALGO_FOMAML ? step + 1 : c->first_order_until;
        st = metastep_annealed_maml_step(step, fo_until, batch, task->inner_cost,
                                         task->outer_cost, v, c->inner_steps, c->inner_lr, &o, r);
    }
    free(w);
    ms_container_release(model);
    ms_container_release(rates);
    ms_container_release(v);
    return st;
}

/* A JSON object {"0": x, "1": y, "10": z} of evaluation values; a NaN or
 * infinity is null, and *nonfinite is set. */
static void json_points(FILE *f, const metastep_eval *ev, const double *v, bool *nonfinite)
{
    fputc('{', f);
    for (int i = 0; i < METASTEP_EVAL_POINTS; i++) {
        fprintf(f, "%s\"%d\": ", i ? ", " : "", ev->steps[i]);
        util_json_number(f, v[i]);
        if (!isfinite(v[i]))
            *nonfinite = true;
    }
    fputc('}', f);
}

/* The "heldout" object's members after {"tasks": N (shared by train's
 * summary.json and eval --json). */
static void json_heldout(FILE *f, const metastep_task *task, const metastep_eval *ev,
                         const char *indent)
{
    bool nonfinite = false;
    fprintf(f, ", \"loss_after_steps\": ");
    json_points(f, ev, ev->loss, &nonfinite);
    if (ev->has_accuracy) {
        fprintf(f, ",\n%s\"accuracy_after_steps\": ", indent);
        json_points(f, ev, ev->accuracy, &nonfinite);
        if (has_ci(task, ev)) {
            double ci[METASTEP_EVAL_POINTS];
            for (int i = 0; i < METASTEP_EVAL_POINTS; i++)
                ci[i] = isfinite(ev->accuracy_ci95[i]) ? ev->accuracy_ci95[i] : 0.0;
            fprintf(f, ",\n%s\"accuracy_ci95\": ", indent);
            json_points(f, ev, ci, &nonfinite);
        }
    }
    if (nonfinite)
        fprintf(f, ",\n%s\"null_reason\": \"null: the value was NaN or infinite (the adapted "
                   "model diverged; try a smaller --inner-lr)\"", indent);
}

/* summary.json, written atomically; false (message printed) on failure. */
static bool write_summary(const config *c, const metastep_task *task, long steps_done,
                          double seconds, const metastep_eval *ev, bool interrupted_run,
                          const char *diverged)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/summary.json", c->out);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        fprintf(stderr, "metastep: cannot write %s: %s\n", path, strerror(errno));
        return false;
    }
    const char *be = metastep_current_backend();
    fprintf(f, "{\n  \"task\": ");
    util_json_string(f, task->header.name);
    fprintf(f, ",\n  \"algo\": \"%s\",\n  \"backend\": ", algo_names[c->algo]);
    util_json_string(f, be ? be : "");
    fprintf(f, ",\n  \"backend_description\": ");
    util_json_string(f, be ? metastep_backend_description(be) : "");
    fprintf(f, ",\n  \"config\": {\"meta_steps\": %ld, \"meta_batch\": %d, \"inner_steps\": %d, "
            "\"inner_lr\": ", c->meta_steps, c->meta_batch, c->inner_steps);
    util_json_number(f, c->inner_lr);
    fprintf(f, ", \"outer_lr\": ");
    util_json_number(f, c->outer_lr);
    fprintf(f, ", \"outer_optim\": \"%s\", \"k\": %d, \"batched\": %s, \"seed\": %llu, "
            "\"dtype\": \"%s\"", c->outer_adam ? "adam" : "sgd", c->k,
            c->batched ? "true" : "false", (unsigned long long)c->seed, ms_dtype_name(c->dtype));
    if (c->adapt_head || c->msl_anneal || c->first_order_until)
        fprintf(f, ", \"adapt\": \"%s\", \"msl_anneal\": %ld, \"first_order_until\": %ld",
                c->adapt_head ? "head" : "all", c->msl_anneal, c->first_order_until);
    fprintf(f, "},\n");
    fprintf(f, "  \"steps_done\": %ld,\n  \"interrupted\": %s,\n  \"diverged\": %s,\n",
            steps_done, interrupted_run ? "true" : "false", diverged ? "true" : "false");
    if (diverged) {
        fprintf(f, "  \"diverged_reason\": ");
        util_json_string(f, diverged);
        fprintf(f, ",\n");
    }
    fprintf(f, "  \"seconds\": %.3f,\n  \"meta_steps_per_second\": %.2f,\n", seconds,
            seconds > 0 ? (double)steps_done / seconds : 0.0);
    fprintf(f, "  \"heldout\": {\"tasks\": %d", c->eval_tasks);
    json_heldout(f, task, ev, "              ");
    fprintf(f, "}");
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
    bool ok = fclose(f) == 0 && text && util_write_atomic(path, text, len);
    if (!ok)
        fprintf(stderr, "metastep: cannot write %s: %s\n", path, strerror(errno));
    free(text);
    return ok;
}

/* ------------------------------------------------------- the options */

enum {
    O_TASK = 256, O_BACKEND, O_OUT, O_RESUME, O_ALGO, O_OPTIM, O_DTYPE, O_STEPS, O_BATCH,
    O_INNER_STEPS, O_K, O_EVAL_TASKS, O_EVAL_EVERY, O_INNER_LR, O_OUTER_LR, O_SEED, O_BATCHED,
    O_QUIET, O_FORCE, O_OVERWRITE, O_PARAMS, O_TASKS, O_JSON, O_THREADS, O_ENGINE, O_CKPT_EVERY,
    O_LAMBDA, O_CG_STEPS, O_MEM_BUDGET, O_ADAPT, O_MSL, O_FO_UNTIL, O_SAVE_EVERY,
    O_HELP = 'h'
};

static const struct option train_options[] = {
    {"task", required_argument, NULL, O_TASK}, {"backend", required_argument, NULL, O_BACKEND},
    {"out", required_argument, NULL, O_OUT}, {"resume", required_argument, NULL, O_RESUME},
    {"algo", required_argument, NULL, O_ALGO}, {"outer-optim", required_argument, NULL, O_OPTIM},
    {"dtype", required_argument, NULL, O_DTYPE}, {"meta-steps", required_argument, NULL, O_STEPS},
    {"meta-batch", required_argument, NULL, O_BATCH},
    {"inner-steps", required_argument, NULL, O_INNER_STEPS},
    {"k", required_argument, NULL, O_K}, {"shots", required_argument, NULL, O_K},
    {"eval-tasks", required_argument, NULL, O_EVAL_TASKS},
    {"eval-every", required_argument, NULL, O_EVAL_EVERY},
    {"inner-lr", required_argument, NULL, O_INNER_LR},
    {"outer-lr", required_argument, NULL, O_OUTER_LR}, {"seed", required_argument, NULL, O_SEED},
    {"batched", no_argument, NULL, O_BATCHED}, {"quiet", no_argument, NULL, O_QUIET},
    {"force-resume", no_argument, NULL, O_FORCE}, {"overwrite", no_argument, NULL, O_OVERWRITE},
    {"threads", required_argument, NULL, O_THREADS},
    {"engine", required_argument, NULL, O_ENGINE},
    {"checkpoint-every", required_argument, NULL, O_CKPT_EVERY},
    {"memory-budget", required_argument, NULL, O_MEM_BUDGET},
    {"lambda", required_argument, NULL, O_LAMBDA}, {"cg-steps", required_argument, NULL, O_CG_STEPS},
    {"adapt", required_argument, NULL, O_ADAPT}, {"msl-anneal", required_argument, NULL, O_MSL},
    {"first-order-until", required_argument, NULL, O_FO_UNTIL},
    {"save-every", required_argument, NULL, O_SAVE_EVERY},
    {"help", no_argument, NULL, O_HELP}, {NULL, 0, NULL, 0},
};

typedef struct parsed {
    config *c;
    bool help, out_given;
    /* eval */
    const char *params;
    int tasks;
    bool json, dtype_given, msl_given;
} parsed;

static bool dtype_opt(const char *v, ms_dtype *dt)
{
    const char *d[] = {"float32", "float64"};
    int k = util_choice(v, d, 2);
    *dt = k == 1 ? MS_F64 : MS_F32;
    return k >= 0;
}

static bool train_opt(void *user, int id, const char *v)
{
    parsed *p = user;
    config *c = p->c;
    switch (id) {
    case O_HELP: p->help = true; return true;
    case 'q': case O_QUIET: c->quiet = true; return true;
    case O_BATCHED: c->batched = true; return true;
    case O_FORCE: c->force_resume = true; return true;
    case O_OVERWRITE: c->overwrite = true; return true;
    case O_TASK: c->task = v; return true;
    case O_BACKEND: c->backend = v; return true;
    case O_OUT: c->out = v; p->out_given = true; return true;
    case O_RESUME: c->resume = v; return true;
    case O_PARAMS: p->params = v; return true;
    case O_JSON: p->json = true; return true;
    case O_TASKS: return util_int(v, 1, 100000, &p->tasks);
    case O_ALGO: {
        int k = util_choice(v, algo_names, NALGOS);
        c->algo = (algo)(k < 0 ? 0 : k);
        return k >= 0;
    }
    case O_OPTIM: {
        const char *o[] = {"adam", "sgd"};
        int k = util_choice(v, o, 2);
        c->outer_adam = k == 0;
        return k >= 0;
    }
    case O_DTYPE: p->dtype_given = true; return dtype_opt(v, &c->dtype);
    case O_STEPS: return util_long(v, 0, 100000000, &c->meta_steps);
    case O_BATCH: return util_int(v, 1, 100000, &c->meta_batch);
    case O_INNER_STEPS: return util_int(v, 0, 10000, &c->inner_steps);
    case O_K: return util_int(v, 1, 100000, &c->k);
    case O_EVAL_TASKS: return util_int(v, 1, 100000, &c->eval_tasks);
    case O_EVAL_EVERY: return util_int(v, 1, 100000000, &c->eval_every);
    case O_THREADS: return util_int(v, 1, 1024, &c->threads);
    case O_ENGINE: {
        int k = util_choice(v, engine_names, 3);
        c->engine = k < 0 ? 0 : k;
        return k >= 0;
    }
    case O_CKPT_EVERY: c->checkpoint_given = true; return util_int(v, -1, 100000, &c->checkpoint_every);
    case O_MEM_BUDGET:
        c->checkpoint_given = true;
        return util_double(v, &c->memory_budget) && c->memory_budget > 0 && isfinite(c->memory_budget);
    case O_LAMBDA: return util_double(v, &c->lambda) && c->lambda > 0 && isfinite(c->lambda);
    case O_CG_STEPS: return util_int(v, 1, 100000, &c->cg_steps);
    case O_ADAPT: {
        const char *a[] = {"all", "head"};
        int k = util_choice(v, a, 2);
        c->adapt_head = k == 1;
        return k >= 0;
    }
    case O_MSL: p->msl_given = true; return util_long(v, 0, 100000000, &c->msl_anneal);
    case O_FO_UNTIL: return util_long(v, 0, 100000000, &c->first_order_until);
    case O_SAVE_EVERY: return util_long(v, 0, 100000000, &c->save_every);
    case O_INNER_LR: return util_double(v, &c->inner_lr);
    case O_OUTER_LR: return util_double(v, &c->outer_lr) && c->outer_lr > 0;
    case O_SEED: {
        long s;
        bool ok = util_long(v, 0, 1L << 62, &s);
        c->seed = (uint64_t)s;
        return ok;
    }
    default: return false;
    }
}

/* An option the command does not know: a task option (value may be NULL). */
static bool task_opt(void *user, const char *key, size_t klen, const char *value)
{
    parsed *p = user;
    config *c = p->c;
    if (c->nopts == MAX_TASK_OPTS || klen >= sizeof c->opt_buf[0]) {
        fprintf(stderr, "metastep: too many task options, or too long, at '--%.*s'\n", (int)klen, key);
        return false;
    }
    snprintf(c->opt_buf[c->nopts], sizeof c->opt_buf[0], "%.*s", (int)klen, key);
    c->opt_key[c->nopts] = c->opt_buf[c->nopts];
    c->opt_val[c->nopts++] = value;
    return true;
}

static int parse_train(int argc, char **argv, config *c)
{
    *c = (config){.task = NULL, .out = "out", .algo = ALGO_MAML, .meta_steps = 2000,
                  .meta_batch = 25, .inner_steps = 1, .k = 10, .eval_tasks = 100,
                  .eval_every = 0, .inner_lr = 0.01, .outer_lr = 1e-3, .outer_adam = true,
                  .seed = 0, .dtype = MS_F32, .lambda = 1.0, .cg_steps = 5};
    long cores = sysconf(_SC_NPROCESSORS_ONLN) / world_local_size(); /* MPI: ranks share a node */
    c->threads = cores > 1 ? (int)(cores < 1024 ? cores : 1024) : 1;
    parsed p = {.c = c};
    if (util_parse_options("train", argc, argv, train_options, train_opt, task_opt, &p) != 0)
        return 2;
    if (p.help) {
        train_usage(stdout);
        return 0;
    }
    if (!c->task) {
        fprintf(stderr, "metastep train: --task is required (try --help)\n");
        return 2;
    }
    if (c->checkpoint_given && c->algo != ALGO_MAML) {
        fprintf(stderr, "metastep train: --checkpoint-every and --memory-budget apply to "
                        "--algo maml (second order) only\n");
        return 2;
    }
    if (c->algo == ALGO_IMAML && c->batched) {
        fprintf(stderr, "metastep train: --algo imaml runs the tasks one by one; drop --batched\n");
        return 2;
    }
    if (c->resume && p.out_given) {
        fprintf(stderr, "metastep train: --out and --resume cannot be combined: --resume DIR "
                        "continues the run in DIR and writes there\n");
        return 2;
    }
    if (c->resume && c->overwrite) {
        fprintf(stderr, "metastep train: --overwrite and --resume cannot be combined\n");
        return 2;
    }
    if (c->algo == ALGO_MAMLPP && !p.msl_given)
        c->msl_anneal = MAMLPP_MSL_ANNEAL;
    if (c->algo == ALGO_REPTILE && (c->adapt_head || c->msl_anneal)) {
        fprintf(stderr, "metastep train: --%s is not an option of reptile\n",
                c->adapt_head ? "adapt head" : "msl-anneal");
        return 2;
    }
    if (c->first_order_until && (c->algo == ALGO_FOMAML || c->algo == ALGO_REPTILE)) {
        fprintf(stderr, "metastep train: --first-order-until needs a second-order algorithm "
                        "(maml, metasgd, mamlpp)\n");
        return 2;
    }
    if (c->algo == ALGO_MAMLPP && c->inner_steps < 1) {
        fprintf(stderr, "metastep train: --algo mamlpp learns a rate per inner step: give "
                        "--inner-steps 1 or more\n");
        return 2;
    }
    if (c->resume)
        c->out = c->resume;
    if (c->eval_every == 0)
        c->eval_every = c->meta_steps >= 50 ? (int)(c->meta_steps / 50) : 1;
    return -1;
}

/* The output directory: for --resume an existing directory (never created);
 * otherwise created, and refused when it holds a run (log.csv) unless
 * --overwrite, which removes that run's files.  0, or the exit status. */
static int prepare_out(const config *c)
{
    struct stat sb;
    if (c->resume) {
        if (stat(c->resume, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "metastep train: cannot resume %s: %s\n", c->resume,
                    stat(c->resume, &sb) != 0 ? strerror(errno) : "not a directory");
            return 1;
        }
    } else {
        if (!util_mkdirs(c->out)) {
            fprintf(stderr, "metastep train: cannot create %s: %s\n", c->out, strerror(errno));
            return 1;
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/log.csv", c->out);
        if (stat(path, &sb) == 0 && !c->overwrite) {
            fprintf(stderr, "metastep train: %s already holds a run (log.csv); continue it with "
                            "--resume %s, or replace it with --overwrite\n", c->out, c->out);
            return 2;
        }
        if (c->overwrite) {
            const char *files[] = {"log.csv", "checkpoint.safetensors", "params.safetensors",
                                   "summary.json", "curves.png", "fits.png", "episodes.png"};
            for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
                snprintf(path, sizeof path, "%s/%s", c->out, files[i]);
                if (unlink(path) != 0 && errno != ENOENT && errno != EISDIR) {
                    fprintf(stderr, "metastep train: cannot remove %s: %s\n", path, strerror(errno));
                    return 1;
                }
            }
        }
    }
    util_remove_stale_temporaries(c->out);
    return 0;
}

/* Exit statuses besides 0 (done), 1 (error), 2 (usage) and 130 (interrupted,
 * checkpoint written). */
#define EXIT_DIVERGED 3
#define EXIT_UNWRITTEN 4
/* A training loss this many times the run's first one is divergence. */
#define EXPLODED 1e6

/* Write checkpoint and parameters (in that order: parameters only after the
 * checkpoint is written), so that the directory holds one step's state.
 * True, or false after a message naming the file. */
static bool save_state(const config *c, const metastep_task *task, const ms_container *vars,
                       const ms_container *os, long step)
{
    ms_clear_error();
    if (save_checkpoint(c, task, vars, os, step) != MS_OK) {
        fail_ms("cannot write the checkpoint");
        ms_clear_error();
        return false;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/params.safetensors", c->out);
    if (ms_container_save(vars, path) != MS_OK) {
        fail_ms("cannot write the parameters");
        ms_clear_error();
        return false;
    }
    return true;
}

static int train_main(int argc, char **argv);

int cmd_train(int argc, char **argv)
{
    int rc = world_init(); /* MPI, when launched by mpirun */
    return rc ? rc : world_finish(train_main(argc, argv));
}

static int train_main(int argc, char **argv)
{
    config c;
    int rc = parse_train(argc, argv, &c);
    if (rc >= 0)
        return rc;
    rc = 0;
    const metastep_task *task;
    if (!setup_backend(c.backend))
        return 1;
    /* --threads N cores: batched steps and evaluation get N kernel threads,
     * the worker pool 1 per task while N tasks run (metastep backends) */
    metastep_set_backend_threads(c.threads);
    if (metastep_load_task(c.task, &task) != MS_OK)
        return fail_ms("cannot load the task plugin");
    if ((rc = configure_task("train", task, c.opt_key, c.opt_val, c.nopts)) != 0)
        return rc;
    if (!setup_head(&c, task))
        return fail_ms("cannot initialise the variables");
    if ((rc = world_rank() == 0 ? prepare_out(&c) : 0) != 0 ||
        (rc = world_private_run(&c.out, &c.resume, &c.quiet, &c.force_resume, c.batched)) != 0)
        return rc;
    metastep_optimizer outer = c.outer_adam ? metastep_adam(0.9, 0.999, 1e-8) : metastep_sgd(0.0, false);
    metastep_optim_state *opt = metastep_optim_state_new(&outer);
    ms_container *vars = NULL;
    long start = 0;
    if (c.resume) {
        int config_rc = 0;
        if (load_checkpoint(&c, task, &vars, opt, &start, &config_rc) != MS_OK) {
            metastep_optim_state_release(opt);
            return config_rc ? config_rc : fail_ms("cannot resume");
        }
    } else {
        vars = initial_params(&c, task);
    }
    if (!vars) {
        metastep_optim_state_release(opt);
        return fail_ms("cannot initialise the variables");
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/log.csv", c.out);
    FILE *log = NULL;
    if (c.resume && !log_cut(path, start)) {
        fprintf(stderr, "metastep train: cannot rewrite %s: %s\n", path, strerror(errno));
    } else if ((log = fopen(path, c.resume ? "a" : "w")) != NULL) {
        setvbuf(log, NULL, _IOLBF, 0); /* whole lines: one write each */
        if (!c.resume)
            fputs(LOG_HEADER, log);
    } else {
        fprintf(stderr, "metastep train: cannot write %s: %s\n", path, strerror(errno));
    }
    /* MPI: every rank is ready, or they all stop here */
    if (!log || (rc = world_agree(0)) != 0) {
        if (log)
            fclose(log);
        ms_container_release(vars);
        metastep_optim_state_release(opt);
        return log ? rc : EXIT_UNWRITTEN;
    }
    /* under mpirun a Ctrl-C ends every rank (mpirun's SIGTERM): the run
     * continues from the last --save-every checkpoint */
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, world_size() > 1 ? NULL : &sa, &old);
    bool tty = isatty(STDERR_FILENO), accuracy = false;
    metastep_eval last_ev = eval_blank(); /* the evaluation of the last step, if any */
    long last_ev_step = -1;
    if (!c.quiet)
        fprintf(stderr, "metastep train: %s on '%s' with backend %s, %ld meta-steps of %d tasks%s"
                "%s%d%s\n", algo_names[c.algo], task->header.name, metastep_current_backend(),
                c.meta_steps, c.meta_batch, c.batched ? " (batched)" : "",
                world_size() > 1 ? " shared by " : "", world_size() > 1 ? world_size() : 0,
                world_size() > 1 ? " MPI ranks" : "");
    double t0 = now(), last_print = 0, loss = NAN, rate = 0, first_loss = NAN;
    long step = start, done = 0;
    /* the last state whose loss was sound, kept for a divergence */
    ms_container *good_vars = NULL, *good_os = NULL;
    long good_step = -1;
    metastep_plan *plan = NULL;
    char diverged[512] = "";
    bool log_failed = false, ckpt_failed = false;
    for (; step < c.meta_steps && !interrupted; step++) {
        ms_scope_push();
        uint64_t bseed = c.seed * 1000003ull + (uint64_t)step + 1;
        ms_container *batch = task->sample(c.meta_batch, c.k, bseed, c.dtype);
        metastep_result r = {0};
        ms_status st = batch ? meta_step(&c, task, batch, vars, step, compiled(&c) ? &plan : NULL,
                                         &r)
                             : ms_last_error(NULL);
        ms_container *next = NULL;
        if (st == MS_OK) {
            loss = ms_tensor_item(r.cost);
            if (isnan(first_loss))
                first_loss = loss;
            if (!isfinite(loss))
                snprintf(diverged, sizeof diverged, "the meta-training loss is %g at step %ld",
                         loss, step + 1);
            else if (first_loss > 0 && loss > EXPLODED * first_loss)
                snprintf(diverged, sizeof diverged, "the meta-training loss %g at step %ld is "
                         "over %g times the first one (%g)", loss, step + 1, EXPLODED, first_loss);
        } else if (st == MS_ERR_NUMERIC) {
            const char *msg = NULL;
            ms_last_error(&msg);
            snprintf(diverged, sizeof diverged, "%s", msg ? msg : "a non-finite cost");
        }
        if (st == MS_OK && !diverged[0]) {
            ms_container_release(good_vars);
            ms_container_release(good_os);
            good_vars = ms_container_copy(vars);
            good_os = metastep_optim_state_save(opt);
            good_step = step;
            next = metastep_optim_step(opt, vars, r.grads, c.outer_lr, true);
            if (next) {
                ms_container_release(vars);
                vars = next;
            }
        }
        metastep_result_release(&r);
        ms_container_release(batch);
        ms_scope_pop();
        if (diverged[0])
            break;
        if (!next) {
            fail_ms("meta-step failed");
            rc = 1;
            break;
        }
        done++;
        double t = now() - t0;
        rate = (double)done / (t > 0 ? t : 1e-9);
        bool eval_now = world_rank() == 0 && /* MPI: rank 0 evaluates and logs */
                        ((step + 1) % c.eval_every == 0 || step + 1 == c.meta_steps);
        metastep_eval ev = eval_blank();
        if (eval_now) {
            if (evaluate_params(&c, task, vars, &ev) == MS_OK) {
                last_ev = ev;
                last_ev_step = step + 1;
                accuracy = accuracy || ev.has_accuracy;
            } else {
                ev = eval_blank();
                ms_clear_error();
            }
        }
        if (!ev.has_accuracy)
            ev.accuracy[0] = ev.accuracy[1] = ev.accuracy[2] = NAN;
        if (!log_failed &&
            fprintf(log, "%ld,%.6g,%.6g,%.6g,%.3f,%.6g,%.6g,%.6g,%.6g\n", step + 1, loss,
                    ev.loss[0], ev.loss[1], t, ev.accuracy[0], ev.accuracy[1], ev.loss[2],
                    ev.accuracy[2]) < 0) {
            fprintf(stderr, "metastep train: cannot write %s: %s\n", path, strerror(errno));
            log_failed = true;
        }
        if ((tty && t - last_print > 0.1) || (!tty && eval_now)) {
            progress(&c, step + 1, c.meta_steps, rate, loss, t0, tty, false);
            last_print = t;
        }
        if (c.save_every > 0 && (step + 1) % c.save_every == 0 && world_rank() == 0 &&
            step + 1 < c.meta_steps) {
            ms_container *os = metastep_optim_state_save(opt);
            if (!save_state(&c, task, vars, os, step + 1))
                ckpt_failed = true; /* reported; the run goes on, and exits 4 */
            ms_container_release(os);
        }
    }
    double seconds = now() - t0;
    if (rc != 1 && tty && !diverged[0])
        progress(&c, step, c.meta_steps, rate, loss, t0, tty, true);
    if (fclose(log) != 0 && !log_failed) {
        fprintf(stderr, "metastep train: cannot write %s: %s\n", path, strerror(errno));
        log_failed = true;
    }
    sigaction(SIGINT, &old, NULL);
    metastep_plan_free(plan);
    ms_clear_error();
    if (diverged[0]) {
        /* keep the last sound state: the step before the divergence */
        if (tty && !c.quiet)
            fputc('\n', stderr);
        if (world_rank() == 0)
            fprintf(stderr, "metastep train: diverged: %s.\n", diverged);
        metastep_eval none = eval_blank();
        if (world_rank() != 0) {
            /* rank 0 keeps the last sound state */
        } else if (good_vars && good_step > start) {
            if (save_state(&c, task, good_vars, good_os, good_step) &&
                write_summary(&c, task, good_step - start, seconds, &none, false, diverged))
                fprintf(stderr, "metastep train: kept the checkpoint and parameters of step %ld, "
                                "the last sound one, in %s\n", good_step, c.out);
        } else {
            fprintf(stderr, "metastep train: no sound step in this run; %s is left as it was\n",
                    c.out);
            write_summary(&c, task, 0, seconds, &none, false, diverged);
        }
        rc = EXIT_DIVERGED;
    } else if (rc != 1) {
        ms_container *os = metastep_optim_state_save(opt);
        if (!save_state(&c, task, vars, os, step))
            rc = EXIT_UNWRITTEN;
        ms_container_release(os);
    }
    if (rc == 0 && !interrupted && world_rank() == 0) {
        /* the same variables on the same tasks: reuse the last step's evaluation */
        metastep_eval ev = last_ev;
        if (last_ev_step != step &&
            evaluate_params(&c, task, vars, &ev) != MS_OK)
            rc = fail_ms("final evaluation failed");
        if (!write_summary(&c, task, done, seconds, &ev, false, NULL))
            rc = EXIT_UNWRITTEN;
#ifdef MS_HAVE_PLOT
        bool plots = write_curves(c.out, accuracy || ev.has_accuracy);
        plots = write_fits(&c, task, vars) && plots;
        if (ev.has_accuracy)
            plots = write_episodes(&c, task, vars) && plots;
        if (!plots && rc == 0)
            rc = EXIT_UNWRITTEN;
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
    } else if (interrupted && rc == 0) {
        metastep_eval none = eval_blank();
        if (!write_summary(&c, task, done, seconds, &none, true, NULL)) {
            rc = EXIT_UNWRITTEN;
        } else {
            fprintf(stderr, "metastep train: interrupted at step %ld; checkpoint in %s "
                            "(continue with --resume %s)\n", step, c.out, c.out);
            rc = 130;
        }
    } else if (interrupted && rc == EXIT_UNWRITTEN) {
        fprintf(stderr, "metastep train: interrupted at step %ld, but the checkpoint could not be "
                        "written: the run cannot be continued from this step\n", step);
    }
    if ((log_failed || ckpt_failed) && (rc == 0 || rc == 130))
        rc = EXIT_UNWRITTEN;
    ms_container_release(good_vars);
    ms_container_release(good_os);
    ms_container_release(vars);
    metastep_optim_state_release(opt);
    return rc;
}

static const struct option eval_options[] = {
    {"task", required_argument, NULL, O_TASK}, {"params", required_argument, NULL, O_PARAMS},
    {"backend", required_argument, NULL, O_BACKEND},
    {"inner-lr", required_argument, NULL, O_INNER_LR},
    {"k", required_argument, NULL, O_K}, {"shots", required_argument, NULL, O_K},
    {"tasks", required_argument, NULL, O_TASKS}, {"dtype", required_argument, NULL, O_DTYPE},
    {"json", no_argument, NULL, O_JSON}, {"adapt", required_argument, NULL, O_ADAPT},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

int cmd_eval(int argc, char **argv)
{
    config c = {.k = 10, .inner_lr = 0.01, .dtype = MS_F32};
    parsed p = {.c = &c, .tasks = 100};
    if (util_parse_options("eval", argc, argv, eval_options, train_opt, task_opt, &p) != 0)
        return 2;
    if (p.help) {
        eval_usage(stdout);
        return 0;
    }
    int k = c.k, tasks = p.tasks;
    double lr = c.inner_lr;
    if (!c.task || !p.params) {
        fprintf(stderr, "metastep eval: --task and --params are required (try --help)\n");
        return 2;
    }
    const metastep_task *task;
    if (!setup_backend(c.backend))
        return 1;
    if (metastep_load_task(c.task, &task) != MS_OK)
        return fail_ms("cannot load the task plugin");
    int rc = configure_task("eval", task, c.opt_key, c.opt_val, c.nopts);
    if (rc != 0)
        return rc;
    ms_container *vars = NULL;
    if (ms_container_load(p.params, &vars) != MS_OK)
        return fail_ms("cannot load the parameters");
    /* the dtype is the file's */
    ms_dtype dt = c.dtype;
    if (ms_container_size(vars) > 0) {
        ms_dtype file_dt = ms_tensor_dtype(ms_container_at(vars, 0));
        if (p.dtype_given && file_dt != dt) {
            fprintf(stderr, "metastep eval: %s holds %s parameters, not --dtype %s\n", p.params,
                    ms_dtype_name(file_dt), ms_dtype_name(dt));
            ms_container_release(vars);
            return 2;
        }
        dt = file_dt;
    }
    metastep_eval ev = eval_blank();
    bool rates = false;
    for (int i = 0; i < ms_container_size(vars); i++)
        rates = rates || !strncmp(ms_container_key(vars, i), METASTEP_INNER_LR_PREFIX,
                                  strlen(METASTEP_INNER_LR_PREFIX));
    ms_status st;
    if (rates || c.adapt_head) { /* learned rates, ANIL: docs/variants.md */
        ms_container *model = NULL, *r = NULL;
        if (c.adapt_head && variant_split(vars, &model, &r) == MS_OK)
            variant_head(model, c.head_buf, sizeof c.head_buf, c.head_v);
        ms_container_release(model);
        ms_container_release(r);
        st = eval_variant(task, vars, c.adapt_head ? c.head_v : NULL, lr, tasks, k, dt, &ev);
    } else {
        st = task->evaluate(vars, tasks, k, lr, HELDOUT_SEED, dt, &ev);
    }
    ms_container_release(vars);
    if (st != MS_OK)
        return fail_ms("evaluation failed");
    if (p.json) {
        printf("{\"tasks\": %d", tasks);
        json_heldout(stdout, task, &ev, "");
        printf("}\n");
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
