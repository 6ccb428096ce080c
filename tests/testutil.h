/* Helpers shared by the check suites: reading elements, the live-tensor
 * fixture that proves a test leaks nothing, and running a suite. */
#ifndef METASTEP_TESTS_TESTUTIL_H
#define METASTEP_TESTS_TESTUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "metastep/metastep.h"

/* Element i (flat, row-major) of a float32 or float64 tensor, as a double. */
static inline double at(const ms_tensor *t, int64_t i)
{
    return ms_tensor_dtype(t) == MS_F32 ? (double)((const float *)ms_tensor_data(t))[i]
                                        : ((const double *)ms_tensor_data(t))[i];
}

/* Checked fixture: every scope a test opens is closed and every tensor it
 * made is released by its end. */
static int64_t live_at_start;
static inline void setup_live(void)
{
    ms_clear_error();
    live_at_start = ms_live_tensors();
}
static inline void teardown_live(void)
{
    ck_assert_int_eq(ms_scope_depth(), 0);
    ck_assert_int_eq(ms_live_tensors(), live_at_start);
}

/* Run every test of s; the process's exit status. */
static inline int run_suite(Suite *s)
{
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
