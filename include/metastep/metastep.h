/* metastep — gradient-based meta-learning in C.  Includes every public header. */
#ifndef METASTEP_H
#define METASTEP_H

#include "metastep/status.h"
#include "metastep/tensor.h"
#include "metastep/ops.h"
#include "metastep/runtime.h"
#include "metastep/autodiff.h"
#include "metastep/container.h"
#include "metastep/optim.h"
#include "metastep/meta.h"
#include "metastep/plan.h"
#include "metastep/imaml.h"
#include "metastep/variants.h"
#include "metastep/task.h"

#endif
