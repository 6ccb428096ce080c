/* metastep — containers: ordered maps from key chains to tensors, mirroring
 * ivy.Container.
 *
 * A key chain is a '/'-separated path ("layer1/w"); a container is flat
 * internally, in insertion order, and prints nested like Ivy.  A container
 * holds one reference to each of its tensors.  Containers are not owned by
 * scopes: every function returning ms_container * gives the caller a
 * container to ms_container_release.  Functions returning tensors follow
 * tensor.h's ownership rules.  Every function accepts NULL and then returns
 * NULL / an error status; failures are recorded as in status.h.
 */
#ifndef METASTEP_CONTAINER_H
#define METASTEP_CONTAINER_H

#include <stdbool.h>
#include <stdio.h>

#include "metastep/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ms_container ms_container;

/* An empty container; NULL on allocation failure. */
ms_container *ms_container_new(void);
/* Drop the container and its references to its tensors.  NULL-safe. */
void ms_container_release(ms_container *c);
/* A new container with the same key chains and the same tensors (shared). */
ms_container *ms_container_copy(const ms_container *c);

/* Set key_chain to t (retains t; replaces and releases a previous tensor at
 * the same chain in place, keeping its position).  MS_ERR_KEY for an empty
 * chain, a chain with an empty component, or one that would make a leaf also
 * a subtree ("a" and "a/b"). */
ms_status ms_container_set(ms_container *c, const char *key_chain, ms_tensor *t);
/* The tensor at key_chain (borrowed: valid while c holds it); NULL with
 * MS_ERR_KEY recorded when absent. */
ms_tensor *ms_container_get(const ms_container *c, const char *key_chain);
/* Whether key_chain names a leaf. */
bool ms_container_has(const ms_container *c, const char *key_chain);
/* Number of leaves. */
int ms_container_size(const ms_container *c);
/* The i-th leaf's key chain and tensor in insertion order (borrowed); NULL
 * when i is out of range. */
const char *ms_container_key(const ms_container *c, int i);
ms_tensor *ms_container_at(const ms_container *c, int i);

/* A new container with the leaves selected by the NULL-terminated list of
 * key chains (a chain may name a subtree: "layer1" selects "layer1/w" and
 * "layer1/b"), in c's order.  MS_ERR_KEY when a chain matches nothing. */
ms_container *ms_container_at_key_chains(const ms_container *c, const char *const *chains);
/* A new container without those leaves.  MS_ERR_KEY when a chain matches nothing. */
ms_container *ms_container_prune_key_chains(const ms_container *c, const char *const *chains);
/* A new container: c with every leaf of `values` set (added or replaced). */
ms_container *ms_container_set_at_key_chains(const ms_container *c, const ms_container *values);

/* A new container with fn applied to every leaf (fn returns a new tensor
 * reference or NULL on failure; the container takes it). */
typedef ms_tensor *(*ms_container_map_fn)(const ms_tensor *t, const char *key_chain, void *user);
ms_container *ms_container_map(const ms_container *c, ms_container_map_fn fn, void *user);

/* Leafwise arithmetic; binary ops need the same key chains (in any order;
 * the result follows a's order): MS_ERR_KEY naming the first difference. */
ms_container *ms_container_add(const ms_container *a, const ms_container *b);
ms_container *ms_container_sub(const ms_container *a, const ms_container *b);
ms_container *ms_container_mul(const ms_container *a, const ms_container *b);
ms_container *ms_container_div(const ms_container *a, const ms_container *b);
ms_container *ms_container_add_scalar(const ms_container *a, double s);
ms_container *ms_container_mul_scalar(const ms_container *a, double s);
ms_container *ms_container_div_scalar(const ms_container *a, double s);
/* mean / sum of every leaf over `axis` (keepdims false). */
ms_container *ms_container_mean(const ms_container *c, int axis);
ms_container *ms_container_sum(const ms_container *c, int axis);
/* Split every leaf along axis 0 into n containers (n = the common leading
 * dimension; MS_ERR_SHAPE when leaves differ there).  With keepdims, each
 * piece keeps a leading axis of size 1.  *out receives a malloc'd array of n
 * containers (release each, then free the array). */
ms_status ms_container_unstack(const ms_container *c, bool keepdims, int *n,
                               ms_container ***out);
/* Concatenate n containers with identical key chains leafwise along axis. */
ms_container *ms_container_concat(int n, ms_container *const *cs, int axis);
ms_container *ms_container_expand_dims(const ms_container *c, int axis);
/* Every leaf gains a leading axis of size n holding n copies of it: the
 * per-task variables of a batched meta step (Ivy's
 * ivy.repeat(x[None], n, axis=0) on every leaf).  n >= 1. */
ms_container *ms_container_replicate(const ms_container *c, int64_t n);
ms_container *ms_container_stop_gradient(const ms_container *c);
/* Same key chains, shapes and values within rtol/atol (NumPy allclose). */
bool ms_container_allclose(const ms_container *a, const ms_container *b, double rtol,
                           double atol);
/* Same key chains with the same shapes. MS_OK or MS_ERR_KEY / MS_ERR_SHAPE. */
ms_status ms_container_assert_identical_structure(const ms_container *a,
                                                  const ms_container *b);

/* Print in Ivy's layout: "{\n    latent: ivy.array([-1.13723135])\n}",
 * subtrees nested four more spaces. */
ms_status ms_container_fprint(FILE *f, const ms_container *c);
/* Same text into a new malloc'd string; NULL on error. */
char *ms_container_to_string(const ms_container *c);

/* --- safetensors files (https://github.com/huggingface/safetensors) --- */

/* Write c to path in the safetensors format: an 8-byte little-endian header
 * length N, an N-byte JSON header {"<key chain>": {"dtype": "F32"|"F64",
 * "shape": [...], "data_offsets": [begin, end]}, ...} padded with spaces to a
 * multiple of 8, then the raw little-endian elements, tensors in c's
 * insertion order (offsets relative to the data section).  Key chains are the
 * tensor names ("layer1/w").  The file is written to a temporary file in the
 * same directory (named "<path>.tmp-<pid>-<n>"), synced and renamed over
 * path, so a failure never leaves a partial file at path.  c is only read.
 * Errors: MS_ERR_NULL_ARG (c or path NULL), MS_ERR_IO (naming path and the
 * system's reason; path is untouched), MS_ERR_KEY (a key chain that the
 * format cannot hold: "__metadata__" or one that is not UTF-8),
 * MS_ERR_INVALID_ARG (a released tensor), MS_ERR_NOMEM. */
ms_status ms_container_save(const ms_container *c, const char *path);

/* Read a safetensors file into a new container: *out receives a container
 * the caller releases with ms_container_release; it holds the only
 * reference to each of its tensors (they never belong to a scope, open or
 * not).  Leaves follow the header's order; "__metadata__" (an object of
 * strings) is checked and ignored.  Only F32 and F64 tensors are supported.
 * On failure *out is NULL (when out is non-NULL).  Errors: MS_ERR_NULL_ARG,
 * MS_ERR_IO (the file cannot be opened or read), MS_ERR_NOMEM, and
 * MS_ERR_FORMAT naming the file and the offending tensor for any malformed
 * content: a file shorter than 8 bytes, a header length over 100 MB or past
 * the end of the file, a header that is not a JSON object (with jansson's
 * message, line and column), duplicate names, entries missing "dtype",
 * "shape" or "data_offsets" or with the wrong JSON types, other dtypes
 * ("F16", "BF16", "I64", ...), negative or non-integer dimensions, rank over
 * MS_MAX_DIMS, a shape whose byte size differs from end - begin, offsets past
 * the data section, tensors that overlap or leave holes (they must cover the
 * data section exactly), names that are not key chains or that make a leaf
 * also a subtree ("a" and "a/b"). */
ms_status ms_container_load(const char *path, ms_container **out);

#ifdef __cplusplus
}
#endif
#endif
