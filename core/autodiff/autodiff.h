/* core/autodiff: ms_grad's backward sweep over the graph the ops record, and
 * ms_execute_with_gradients.  Nothing private is exported: the layers above
 * use the public metastep/autodiff.h. */
#ifndef METASTEP_CORE_AUTODIFF_H
#define METASTEP_CORE_AUTODIFF_H

#include "container/container.h"


#endif
