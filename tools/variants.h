/* The metastep command's side of the variants beyond Ivy (docs/variants.md):
 * the meta-parameters of Meta-SGD and MAML++ (the model's variables plus the
 * learned rates under "inner_lr/"), the ANIL head, and held-out evaluation
 * with learned rates and masks (the task plugins' evaluate knows only a
 * scalar rate on every variable). */
#ifndef METASTEP_TOOLS_VARIANTS_H
#define METASTEP_TOOLS_VARIANTS_H

#include <stdbool.h>

#include "metastep/metastep.h"

/* How a task adapts: learned rates (or NULL: lr), per step, and which
 * variables (inner_v NULL: all). */
typedef struct variant_adapt {
    const ms_container *rates; /* keyed by the variables' key chains */
    bool per_step;             /* rates of shape [S]: step i >= S uses slice S - 1 */
    const char *const *inner_v;
    double lr;
} variant_adapt;

/* The ANIL head of a model: the key chain prefix of its last variable up to
 * the last '/' ("l3" for l3/b, "head" for head/b), or the whole key when it
 * has no '/', written into buf; chains[0] = buf, chains[1] = NULL. */
void variant_head(const ms_container *model, char *buf, size_t cap, const char *chains[2]);

/* Split meta-parameters into the model's variables and the learned rates
 * (prefix removed; an empty container when there are none).  MS_OK or the
 * error recorded. */
ms_status variant_split(const ms_container *params, ms_container **model, ms_container **rates);

/* Whether rates are per step: some rate's shape differs from its
 * variable's (LSLR [S]); Meta-SGD rates have their variables' shapes. */
bool variant_per_step(const ms_container *model, const ms_container *rates);

/* model plus initial learned rates (value lr; per_step: shape [steps])
 * under "inner_lr/" for the inner variables; a new container or NULL. */
ms_container *variant_with_rates(const ms_container *model, const char *const *inner_v,
                                 bool per_step, int steps, double lr);

/* One task's model variables after `steps` adaptation steps on its support
 * set (sub: one task's sub-batch, with a task axis of 1); a new container. */
ms_container *variant_adapt_task(const metastep_task *task, const ms_container *sub,
                                 const ms_container *model, const variant_adapt *a, int steps);

/* Held-out evaluation as the plugins' evaluate (the same tasks: the task's
 * sample_heldout, else sample, with seed; the query loss and, for
 * classification tasks (accuracy: true), accuracy with its 95% interval
 * after 0, 1 and 10 steps, each task adapting on its own) but adapting as
 * a says. */
ms_status variant_evaluate(const metastep_task *task, const ms_container *model,
                           const variant_adapt *a, int num_tasks, int k, uint64_t seed,
                           ms_dtype dt, bool accuracy, metastep_eval *out);

#endif
