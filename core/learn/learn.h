/* core/learn: the top layer — optimizers and the meta steps (MAML, FOMAML,
 * Reptile), and where new algorithms go (Meta-SGD, MAML++, iMAML,
 * checkpointed MAML), each in a file of its own. */
#ifndef METASTEP_CORE_LEARN_H
#define METASTEP_CORE_LEARN_H

#include "autodiff/autodiff.h"


#endif
