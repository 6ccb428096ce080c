/* A valid third-party-style backend, "partial", that implements only the
 * unary kernel and only for float32: float64 calls answer MS_ERR_UNSUPPORTED
 * and every other slot is NULL, so the frontend serves them from ref and
 * counts fallbacks (tests/test_loader.c). */
#include <math.h>
#include <stdint.h>

#include "metastep/backend.h"

static ms_status partial_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    const float *a = x;
    float *b = y;
    switch (op) {
    case MS_UNARY_NEG: for (int64_t i = 0; i < n; i++) b[i] = -a[i]; break;
    case MS_UNARY_TANH: for (int64_t i = 0; i < n; i++) b[i] = tanhf(a[i]); break;
    case MS_UNARY_EXP: for (int64_t i = 0; i < n; i++) b[i] = expf(a[i]); break;
    default: return MS_ERR_UNSUPPORTED;
    }
    return MS_OK;
}

static const ms_backend partial_backend = {
    .header = {MS_BACKEND_ABI_MAJOR, MS_BACKEND_ABI_MINOR, sizeof(ms_backend), "partial",
               "test backend: float32 neg/tanh/exp only, the rest via ref"},
    .unary = partial_unary,
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void);
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void) { return &partial_backend; }
