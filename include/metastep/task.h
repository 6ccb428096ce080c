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
 * A meta-batch is a container whose leaves have a leading task dimension:
 *   "support/x", "support/y"   the K support points of every task
 *   "query/x",   "query/y"     the K query points
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
#define METASTEP_TASK_ABI_MINOR 0
#define METASTEP_TASK_ENTRY_SYMBOL "metastep_task_entry"

/* Held-out evaluation: after 0, 1 and 10 adaptation steps. */
#define METASTEP_EVAL_POINTS 3
typedef struct metastep_eval {
    int steps[METASTEP_EVAL_POINTS];       /* 0, 1, 10 */
    double loss[METASTEP_EVAL_POINTS];     /* mean query loss over the tasks */
    double accuracy[METASTEP_EVAL_POINTS]; /* mean query accuracy, when has_accuracy */
    bool has_accuracy;
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
} metastep_task;

#define METASTEP_TASK_MIN_SIZE (offsetof(metastep_task, truth) + sizeof(void *))

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
