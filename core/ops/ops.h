/* core/ops: every differentiable op (metastep/ops.h), forward through a
 * backend kernel and, beside it, its backward written with the public ops so
 * that gradients can be differentiated again.  New ops go here (their kernels
 * in include/metastep/backend.h and backends/).  Nothing private is exported
 * to the layers above, which use the public ops. */
#ifndef METASTEP_CORE_OPS_H
#define METASTEP_CORE_OPS_H

#include "tensor/tensor.h"

/* Shared by the files of this layer (ops.c, nn.c). */
/* Record that fn's kernel failed with st (naming the backend), discard the
 * just-created y, and return NULL. */
MS_HIDDEN ms_tensor *ms__kernel_failed(const char *fn, ms_status st, ms_tensor *y);
/* Copy src read through (shape, strides ss, element offset) into a new
 * contiguous tensor of that shape (NULL + error on failure). */
MS_HIDDEN ms_tensor *ms__strided_copy(const char *fn, const ms_tensor *src, int nd,
                                      const int64_t *shape, const int64_t *ss, int64_t offset);

#endif
