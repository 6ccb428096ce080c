/* core/ops: every differentiable op (metastep/ops.h), forward through a
 * backend kernel and, beside it, its backward written with the public ops so
 * that gradients can be differentiated again.  New ops go here (their kernels
 * in include/metastep/backend.h and backends/).  Nothing private is exported:
 * the layers above use the public ops. */
#ifndef METASTEP_CORE_OPS_H
#define METASTEP_CORE_OPS_H

#include "tensor/tensor.h"


#endif
