/* The two-layer tanh network the meta-step suites share:
 *   cost = mean((tanh(x @ W0 + b0) @ Wh + bh - y)^2)
 * over a task's sub-batch (1, P, ·) with plain variables or the batch
 * (T, P, ·) with per-task copies (T, ·, ·) alike.  keys names W0, b0, Wh, bh
 * (biases shaped (1, H) and (1, 1) so that they broadcast either way). */
#ifndef METASTEP_TESTS_TANH_NET_H
#define METASTEP_TESTS_TANH_NET_H

#include "metastep/metastep.h"

static const char *const TANH_NET_KEYS[4] = {"layer0/w", "layer0/b", "head/w", "head/b"};

static inline ms_tensor *tanh_net_cost(const ms_container *b, const ms_container *v,
                                       const char *const *keys, const char *x, const char *y)
{
    ms_tensor *h = ms_tanh(ms_add(ms_matmul(ms_container_get(b, x), ms_container_get(v, keys[0])),
                                  ms_container_get(v, keys[1])));
    ms_tensor *pred = ms_add(ms_matmul(h, ms_container_get(v, keys[2])), ms_container_get(v, keys[3]));
    return ms_mean(ms_square(ms_sub(pred, ms_container_get(b, y))), 0, NULL, false);
}

/* The inner (support "xs", "ys") and outer (query "xq", "yq") costs with
 * TANH_NET_KEYS. */
static inline ms_tensor *tanh_support_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return tanh_net_cost(b, v, TANH_NET_KEYS, "xs", "ys");
}
static inline ms_tensor *tanh_query_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return tanh_net_cost(b, v, TANH_NET_KEYS, "xq", "yq");
}

#endif
