/* Sharded meta steps (metastep_options.shard): one task's contribution as a
 * record of bytes, so that processes can exchange them and each combine all
 * tasks in task order (meta.c's run_shard) exactly as one process does.
 *
 * A record: a fixed header (the task's status and message, its cost's dtype,
 * rank and value), then the gradient contribution's leaves in the layout's
 * order, then (when the step returns adapted variables) the adapted
 * variables' leaves.  Values are copied bytewise: a record round-trips every
 * bit, NaN payloads included. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"

#define REC_MSG 232

typedef struct rec_head {
    int32_t status, cost_dtype, cost_ndim, reserved;
    double cost; /* a float32 cost converts to double and back exactly */
    char msg[REC_MSG];
} rec_head;

ms_status ms__shard_validate(const char *fn, const metastep_shard *s, int num_tasks, bool batched,
                             bool stop)
{
    if (!s->exchange)
        return ms__fail(MS_ERR_NULL_ARG, "%s: the shard has no exchange function", fn);
    if (batched)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: a batched step cannot be sharded (it computes "
                        "every task as one batch and sums over the task axis in the backend's "
                        "order, which no split reproduces bit for bit); run it unbatched", fn);
    if (!stop)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: a step with stop_gradients off cannot be "
                        "sharded (its results keep a graph through every task)", fn);
    if (s->first < 0 || s->count < 0 || s->first > num_tasks || s->count > num_tasks - s->first)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: the shard's tasks [%d, %d) are outside the "
                        "%d tasks", fn, s->first, s->first + s->count, num_tasks);
    return MS_OK;
}

static size_t leaves_bytes(const ms_container *c)
{
    size_t b = 0;
    for (int i = 0; c && i < ms_container_size(c); i++) {
        const ms_tensor *t = ms_container_at(c, i);
        b += (size_t)ms_tensor_numel(t) * ms_dtype_size(ms_tensor_dtype(t));
    }
    return b;
}

ms_status ms__shard_layout_init(ms__shard_layout *l, const ms_container *grads_like,
                                const ms_container *vars_like)
{
    memset(l, 0, sizeof *l);
    l->grads = ms_container_copy(grads_like);
    l->vars = vars_like ? ms_container_copy(vars_like) : NULL;
    if (!l->grads || (vars_like && !l->vars)) {
        ms__shard_layout_free(l);
        return ms_last_error(NULL) != MS_OK ? ms_last_error(NULL) : MS_ERR_NOMEM;
    }
    l->bytes = sizeof(rec_head) + leaves_bytes(l->grads) + leaves_bytes(l->vars);
    return MS_OK;
}

void ms__shard_layout_free(ms__shard_layout *l)
{
    ms_container_release(l->grads);
    ms_container_release(l->vars);
    memset(l, 0, sizeof *l);
}

/* Copy c's leaves into p when they match like's keys, dtypes and element
 * counts (expand: c's leaves have a leading dimension of 1 more); NULL
 * after the end, or NULL with *why set on a mismatch. */
static char *put_leaves(char *p, const ms_container *c, const ms_container *like,
                        const char **why)
{
    if (ms_container_size(c) != ms_container_size(like)) {
        *why = "another number of leaves";
        return NULL;
    }
    for (int i = 0; i < ms_container_size(like); i++) {
        const ms_tensor *t = ms_container_at(c, i), *m = ms_container_at(like, i);
        if (strcmp(ms_container_key(c, i), ms_container_key(like, i)) != 0 ||
            ms_tensor_dtype(t) != ms_tensor_dtype(m) || ms_tensor_numel(t) != ms_tensor_numel(m)) {
            *why = ms_container_key(like, i);
            return NULL;
        }
        size_t b = (size_t)ms_tensor_numel(t) * ms_dtype_size(ms_tensor_dtype(t));
        memcpy(p, ms_tensor_data(t), b);
        p += b;
    }
    return p;
}

void ms__shard_pack(const ms__shard_layout *l, const char *fn, int task, ms_status st,
                    const char *msg, const ms_tensor *cost, const ms_container *grads,
                    const ms_container *vars, void *rec)
{
    rec_head h;
    memset(&h, 0, sizeof h);
    memset(rec, 0, l->bytes);
    const char *why = NULL;
    char *p = (char *)rec + sizeof h;
    if (st == MS_OK && (!cost || ms_tensor_numel(cost) != 1 || !grads || (l->vars && !vars)))
        why = "a missing result";
    if (st == MS_OK && !why)
        p = put_leaves(p, grads, l->grads, &why);
    if (st == MS_OK && !why && l->vars)
        put_leaves(p, vars, l->vars, &why);
    if (st == MS_OK && why) {
        st = MS_ERR_INTERNAL;
        snprintf(h.msg, sizeof h.msg, "%s: task %d's results do not fit the shard's layout (%s)",
                 fn, task, why);
    } else if (st != MS_OK) {
        snprintf(h.msg, sizeof h.msg, "%s", msg && *msg ? msg : ms_status_string(st));
    }
    h.status = (int32_t)st;
    if (st == MS_OK) {
        h.cost_dtype = (int32_t)ms_tensor_dtype(cost);
        h.cost_ndim = ms_tensor_ndim(cost);
        h.cost = ms_tensor_item(cost);
    }
    memcpy(rec, &h, sizeof h);
}

/* A container of like's keys whose leaves are read from *p (expand: with a
 * leading dimension of 1 more than like's). */
static ms_container *get_leaves(const char **p, const ms_container *like, bool expand,
                                const char *fn)
{
    ms_container *c = ms_container_new();
    for (int i = 0; c && i < ms_container_size(like); i++) {
        const ms_tensor *m = ms_container_at(like, i);
        int64_t shape[MS_MAX_DIMS + 1];
        int nd = ms_tensor_ndim(m);
        shape[0] = 1;
        memcpy(shape + (expand ? 1 : 0), ms_tensor_shape(m), sizeof(int64_t) * (size_t)nd);
        ms_tensor *t = ms_tensor_from_data(ms_tensor_dtype(m), nd + (expand ? 1 : 0), shape, *p);
        *p += (size_t)ms_tensor_numel(m) * ms_dtype_size(ms_tensor_dtype(m));
        if (ms__container_adopt(c, fn, ms_container_key(like, i), t) != MS_OK) {
            ms_container_release(c);
            return NULL;
        }
    }
    return c;
}

ms_status ms__shard_unpack(const ms__shard_layout *l, const char *fn, const void *rec,
                           ms_tensor **cost, ms_container **grads, ms_container **vars)
{
    *cost = NULL;
    *grads = *vars = NULL;
    rec_head h;
    memcpy(&h, rec, sizeof h);
    h.msg[REC_MSG - 1] = '\0';
    if (h.status != MS_OK)
        return ms__fail((ms_status)h.status, "%s", h.msg);
    if ((h.cost_dtype != MS_F32 && h.cost_dtype != MS_F64) || h.cost_ndim < 0 ||
        h.cost_ndim > MS_MAX_DIMS)
        return ms__fail(MS_ERR_INTERNAL, "%s: a malformed task record (cost dtype %d, rank %d)",
                        fn, h.cost_dtype, h.cost_ndim);
    int64_t ones[MS_MAX_DIMS];
    for (int i = 0; i < MS_MAX_DIMS; i++)
        ones[i] = 1;
    float f = (float)h.cost;
    ms_tensor *t = ms_tensor_from_data((ms_dtype)h.cost_dtype, h.cost_ndim, ones,
                                       h.cost_dtype == MS_F32 ? (const void *)&f
                                                              : (const void *)&h.cost);
    const char *p = (const char *)rec + sizeof h;
    *grads = t ? get_leaves(&p, l->grads, false, fn) : NULL;
    *vars = *grads && l->vars ? get_leaves(&p, l->vars, true, fn) : NULL;
    if (!t || !*grads || (l->vars && !*vars)) {
        ms_status st = ms_last_error(NULL);
        if (t && ms_scope_depth() == 0)
            ms_release(t);
        ms_container_release(*grads);
        ms_container_release(*vars);
        *grads = *vars = NULL;
        return st != MS_OK ? st : MS_ERR_INTERNAL;
    }
    *cost = ms_scope_depth() == 0 ? t : ms_retain(t);
    return MS_OK;
}
