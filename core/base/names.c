/* Names of kernels and ops, for tables and messages. */
#include "base/base.h"

#define NAME_OR_UNKNOWN(arr, i) \
    (((unsigned)(i) < sizeof(arr) / sizeof *(arr) && (arr)[i]) ? (arr)[i] : "unknown")

static const char *const kernel_names[] = {"unary", "binary", "reduce", "gemm", "copy",
                                           "softmax", "fill", "arange", "where",
                                           "conv2d", "conv2d_bwd_data", "conv2d_bwd_weights"};
static const char *const unary_names[] = {"neg", "abs", "sign", "exp", "log", "sqrt", "square",
                                          "reciprocal", "tanh", "sigmoid", "relu", "sin", "cos"};
static const char *const binary_names[] = {"add", "sub", "mul", "div", "pow", "maximum",
                                           "minimum", "equal", "not_equal", "less",
                                           "less_equal", "greater", "greater_equal"};
static const char *const reduce_names[] = {"sum", "mean", "max", "min"};

const char *ms_kernel_name(ms_kernel k) { return NAME_OR_UNKNOWN(kernel_names, k); }
const char *ms_unary_op_name(ms_unary_op op) { return NAME_OR_UNKNOWN(unary_names, op); }
const char *ms_binary_op_name(ms_binary_op op) { return NAME_OR_UNKNOWN(binary_names, op); }
const char *ms_reduce_op_name(ms_reduce_op op) { return NAME_OR_UNKNOWN(reduce_names, op); }
