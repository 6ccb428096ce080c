/* A third-party-style backend built outside backends/: it serves the unary
 * kernel with its own loops (correctly) and leaves every other slot NULL, so
 * the reference backend serves the rest.  `metastep conformance --backend
 * <path to this .so>` must pass it.  It declares ABI 1.0 and the 1.0 table
 * size, as a binary built against the 1.0 header would: the frontend must
 * not read the 1.1 slots (convolution) of it, and has ref serve them. */
#include <math.h>

#include "metastep/backend.h"

#define LOOP(T, F)                                                                              \
    do {                                                                                        \
        const T *x = xv;                                                                        \
        T *y = yv;                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                       \
            const T v = x[i];                                                                   \
            T r;                                                                                \
            switch (op) {                                                                       \
            case MS_UNARY_NEG: r = -v; break;                                                   \
            case MS_UNARY_ABS: r = fabs##F(v); break;                                           \
            case MS_UNARY_SIGN: r = v > 0 ? 1 : v < 0 ? -1 : v; break;                          \
            case MS_UNARY_EXP: r = exp##F(v); break;                                            \
            case MS_UNARY_LOG: r = log##F(v); break;                                            \
            case MS_UNARY_SQRT: r = sqrt##F(v); break;                                          \
            case MS_UNARY_SQUARE: r = v * v; break;                                             \
            case MS_UNARY_RECIPROCAL: r = 1 / v; break;                                         \
            case MS_UNARY_TANH: r = tanh##F(v); break;                                          \
            case MS_UNARY_SIGMOID: r = v >= 0 ? 1 / (1 + exp##F(-v)) : exp##F(v) / (1 + exp##F(v)); break; \
            case MS_UNARY_RELU: r = v <= 0 ? 0 : v; break;                                      \
            case MS_UNARY_SIN: r = sin##F(v); break;                                            \
            case MS_UNARY_COS: r = cos##F(v); break;                                            \
            default: r = v; break;                                                              \
            }                                                                                   \
            y[i] = r + (T)(op == MS_UNARY_TANH ? TANH_ERROR : 0);                               \
        }                                                                                       \
    } while (0)

#ifndef TANH_ERROR
#define TANH_ERROR 0
#define BACKEND_NAME "thirdparty-good"
#define BACKEND_DESCRIPTION "third-party test backend: its own unary loops, the rest from ref"
#endif

static ms_status tp_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *xv, void *yv)
{
    if ((int)op < 0 || op >= MS_UNARY_COUNT)
        return MS_ERR_UNSUPPORTED;
    if (dt == MS_F32)
        LOOP(float, f);
    else if (dt == MS_F64)
        LOOP(double, );
    else
        return MS_ERR_UNSUPPORTED;
    return MS_OK;
}

static const ms_backend table = {
    .header = {MS_BACKEND_ABI_MAJOR, 0, MS_BACKEND_MIN_SIZE, BACKEND_NAME, BACKEND_DESCRIPTION},
    .unary = tp_unary,
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void);
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void) { return &table; }
