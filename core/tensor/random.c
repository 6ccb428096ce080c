/* Counter-based random numbers: value i of a tensor drawn with seed s is a
 * pure function of (s, i), so every backend, thread and run sees the same
 * tensors.  The mixing function is SplitMix64's finaliser applied to a
 * Weyl sequence keyed by the seed; two rounds decorrelate nearby seeds. */
#include <math.h>

#include "tensor/tensor.h"

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t draw(uint64_t seed, uint64_t counter)
{
    return mix(mix(seed + 0x9e3779b97f4a7c15ull) + counter * 0x9e3779b97f4a7c15ull);
}

/* uniform in [0, 1) with 53 random bits */
static double unit(uint64_t seed, uint64_t counter)
{
    return (double)(draw(seed, counter) >> 11) * 0x1.0p-53;
}

static ms_tensor *random_tensor(const char *fn, ms_dtype dt, int ndim, const int64_t *shape,
                                double a, double b, uint64_t seed, bool normal)
{
    if (!isfinite(a) || !isfinite(b) || (normal && b < 0) || (!normal && b < a)) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: parameters %g and %g are invalid", fn, a, b);
        return NULL;
    }
    ms_tensor *t = ms__tensor_new(fn, dt, ndim, shape);
    if (!t)
        return NULL;
    for (int64_t i = 0; i < t->numel; i++) {
        double v;
        if (normal) { /* Box-Muller on the pair of draws (2i, 2i+1) */
            double u1 = 1.0 - unit(seed, 2 * (uint64_t)i); /* (0, 1] */
            double u2 = unit(seed, 2 * (uint64_t)i + 1);
            v = a + b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        } else {
            v = a + (b - a) * unit(seed, (uint64_t)i);
        }
        if (dt == MS_F32)
            ((float *)t->data)[i] = (float)v;
        else
            ((double *)t->data)[i] = v;
    }
    return t;
}

ms_tensor *ms_random_normal(ms_dtype dt, int ndim, const int64_t *shape, double mean, double std,
                            uint64_t seed)
{
    return random_tensor("ms_random_normal", dt, ndim, shape, mean, std, seed, true);
}

ms_tensor *ms_random_uniform(ms_dtype dt, int ndim, const int64_t *shape, double low,
                             double high, uint64_t seed)
{
    return random_tensor("ms_random_uniform", dt, ndim, shape, low, high, seed, false);
}
