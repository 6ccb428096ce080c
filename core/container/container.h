/* core/container: containers of tensors by key chain (ivy.Container) and
 * their safetensors files.  Above ops (container arithmetic is ops on every
 * leaf); below autodiff, whose ms_grad takes and returns containers. */
#ifndef METASTEP_CORE_CONTAINER_H
#define METASTEP_CORE_CONTAINER_H

#include "ops/ops.h"

/* --- containers (container.c) --- */
/* Store an op's result t at key in c, taking over the op's reference when no
 * scope owns it.  A NULL t (a failed op) gives an error naming the key. */
MS_HIDDEN ms_status ms__container_adopt(ms_container *c, const char *fn, const char *key,
                                        ms_tensor *t);

/* --- safetensors (safetensors.c) --- */
/* ms_container_load on n bytes at buf (which it only reads; n bytes past buf
 * are never touched); name (may be NULL) labels messages.  Used by
 * ms_container_load and by the fuzzer in tests/fuzz/. */
MS_HIDDEN ms_status ms__container_load_mem(const void *buf, size_t n, const char *name,
                                           ms_container **out);

#endif
