/* metastep — task plugins: families of few-shot tasks loaded at run time.
 *
 * A task plugin is a shared object exporting one function,
 *
 *     const metastep_task *metastep_task_entry(void);
 *
 * found by the same loader as backends: metastep_load_task("sine") looks for
 * libmetastep-task-sine.so in METASTEP_PLUGIN_PATH (colon-separated), then
 * the build tree, then <libdir>/metastep/; a name containing '/' is a path.
 * The table starts with the common plugin header and grows only at its end.
 *
 * ABI history: 1.0 ends at `truth`.  1.1 appends `configure` (task options)
 * and `sample_heldout`, and appends accuracy_ci95 to metastep_eval.  The
 * loader still accepts 1.0 tables (METASTEP_TASK_MIN_SIZE); a frontend reads
 * an appended slot only under METASTEP_TASK_HAS_SLOT.
 *
 * A meta-batch is a container whose leaves have a leading task dimension:
 *   "support/x", "support/y"   the K support points of every task (for
 *                              N-way classification, K per class)
 *   "query/x",   "query/y"     the query points (K, or as configured)
 * plus whatever else the plugin keeps there for itself (e.g. "task/..." for
 * the parameters that define each task).
 */
#ifndef METASTEP_TASK_H
#define METASTEP_TASK_H

#include <stdbool.h>
#include <stdint.h>

#include "metastep/meta.h"
#include "metastep/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define METASTEP_TASK_ABI_MAJOR 1
#define METASTEP_TASK_ABI_MINOR 1
#define METASTEP_TASK_ENTRY_SYMBOL "metastep_task_entry"

/* Held-out evaluation: after 0, 1 and 10 adaptation steps. */
#define METASTEP_EVAL_POINTS 3
typedef struct metastep_eval {
    int steps[METASTEP_EVAL_POINTS];       /* 0, 1, 10 */
    double loss[METASTEP_EVAL_POINTS];     /* mean query loss over the tasks */
    double accuracy[METASTEP_EVAL_POINTS]; /* mean query accuracy, when has_accuracy */
    bool has_accuracy;
    /* --- ABI 1.1: appended --- */
    /* Half-width of the 95% confidence interval of accuracy[i] over the
     * evaluated tasks (1.96 standard deviations of the per-task accuracy /
     * sqrt(num_tasks)), when has_accuracy.  A 1.0 plugin was built against
     * the struct without this member and never writes it: the caller (which
     * always allocates the struct) must initialise the whole struct before
     * calling evaluate, e.g. with NaN meaning "not reported", and read it
     * only from a plugin whose header.abi_minor >= 1. */
    double accuracy_ci95[METASTEP_EVAL_POINTS];
} metastep_eval;

typedef struct metastep_task {
    ms_plugin_header header; /* abi_major = METASTEP_TASK_ABI_MAJOR */

    /* The model's initial variables drawn from `seed`, shaped for one task
     * (no task axis).  A new container the caller releases, or NULL. */
    ms_container *(*init_variables)(uint64_t seed, ms_dtype dt);

    /* The inner (support) and outer (query) costs, for the meta steps.
     * Variables may carry a leading task axis (batched mode) or not. */
    metastep_cost_fn inner_cost;
    metastep_cost_fn outer_cost;

    /* A meta-batch of num_tasks tasks with k support and k query points
     * each, drawn from `seed` (the same seed gives the same tasks).  A new
     * container, or NULL with the error recorded. */
    ms_container *(*sample)(int num_tasks, int k, uint64_t seed, ms_dtype dt);

    /* Evaluate variables on num_tasks fresh tasks drawn from seed: adapt on
     * each task's support set with plain gradient descent at inner_lr and
     * report the query loss (and accuracy where it applies) after 0, 1 and
     * 10 steps. */
    ms_status (*evaluate)(const ms_container *variables, int num_tasks, int k, double inner_lr,
                          uint64_t seed, ms_dtype dt, metastep_eval *out);

    /* The model's prediction at x (shape (n, in)) for one task's variables,
     * for plots; NULL if the task has no low-dimensional picture. */
    ms_tensor *(*predict)(const ms_container *variables, const ms_tensor *x);

    /* The true function of task `task` of a meta-batch at x, for plots;
     * NULL when not applicable. */
    ms_tensor *(*truth)(const ms_container *batch, int task, const ms_tensor *x);

    /* --- ABI 1.1: appended slots.  A 1.0 table ends at `truth`: read these
     * only when METASTEP_TASK_HAS_SLOT(task, slot) and the slot is non-NULL.
     * A 1.1 plugin may leave any of them NULL. --- */

    /* Set one option of the task family, e.g. ("ways", "5") or ("data",
     * "/path/to/images").  key and value are borrowed for the call (the
     * plugin copies what it keeps) and are plain strings without leading
     * dashes.  Options are process-wide plugin state: the caller sets them
     * all before its first call to init_variables, sample, sample_heldout
     * or evaluate, and must call them again (with the same options) before
     * comparing runs.  An option may be set again; the last value wins.
     * Returns MS_OK, or with the error recorded: MS_ERR_KEY for a key the
     * task does not know, MS_ERR_INVALID_ARG for a value out of range
     * (the message names the key, the value and what is accepted).  Data
     * named by an option is read lazily, so a missing or malformed file is
     * reported by the first sample/evaluate (MS_ERR_IO / MS_ERR_FORMAT /
     * MS_ERR_INVALID_ARG), not by configure. */
    ms_status (*configure)(const char *key, const char *value);

    /* A meta-batch as `sample`, but from the held-out distribution that
     * `evaluate` draws from (e.g. disjoint classes), for plots of held-out
     * tasks: with the same num_tasks, k, seed and dt as evaluate, the same
     * tasks evaluate adapts on. */
    ms_container *(*sample_heldout)(int num_tasks, int k, uint64_t seed, ms_dtype dt);
} metastep_task;

/* The loader accepts any table at least as large as the ABI 1.0 table. */
#define METASTEP_TASK_MIN_SIZE (offsetof(metastep_task, truth) + sizeof(void *))
/* Whether table t (of header.size bytes) has the slot `slot` at all. */
#define METASTEP_TASK_HAS_SLOT(t, slot) \
    ((t)->header.size >= offsetof(metastep_task, slot) + sizeof((t)->slot))

/* Load (once) a task plugin by name or path.  The table lives until exit.
 * Errors: MS_ERR_BACKEND with a message naming the file and the reason, as
 * for backends (unknown name listing those found and the directories
 * searched, dlopen failure, missing entry symbol, wrong ABI, short table). */
ms_status metastep_load_task(const char *name, const metastep_task **task);

/* Discover task plugins as metastep_list_backends does; returns the count. */
int metastep_list_tasks(void (*fn)(const char *name, const char *path, void *user), void *user);

#ifdef __cplusplus
}
#endif
#endif
