/* A third-party-style backend whose unary kernel is wrong: tanh is off by
 * 1e-3.  `metastep conformance --backend <path to this .so>` must fail it and
 * name "tanh".  Same loops as thirdparty_good.c otherwise. */
#define TANH_ERROR 1e-3
#define BACKEND_NAME "thirdparty-bad"
#define BACKEND_DESCRIPTION "third-party test backend: tanh deliberately off by 1e-3"
#include "thirdparty_good.c"
