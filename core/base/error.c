/* The per-thread first error. */
#include <stdarg.h>
#include <stdio.h>

#include "base/base.h"

static _Thread_local ms_status last_status;
static _Thread_local char last_msg[1024];

static const char *const status_names[] = {
    [MS_OK] = "success",
    [MS_ERR_NULL_ARG] = "NULL argument",
    [MS_ERR_INVALID_ARG] = "invalid argument",
    [MS_ERR_DTYPE] = "dtype mismatch",
    [MS_ERR_SHAPE] = "shape mismatch",
    [MS_ERR_RANK] = "bad rank or axis",
    [MS_ERR_OVERFLOW] = "size overflow",
    [MS_ERR_NOMEM] = "out of memory",
    [MS_ERR_UNSUPPORTED] = "unsupported by backend",
    [MS_ERR_BACKEND] = "backend error",
    [MS_ERR_KEY] = "key chain error",
    [MS_ERR_GRAPH] = "autodiff graph error",
    [MS_ERR_NUMERIC] = "non-finite value",
    [MS_ERR_IO] = "I/O error",
    [MS_ERR_FORMAT] = "malformed file",
    [MS_ERR_INTERNAL] = "internal error",
};

const char *ms_status_string(ms_status s)
{
    if ((unsigned)s < sizeof status_names / sizeof *status_names && status_names[s])
        return status_names[s];
    return "unknown status";
}

ms_status ms_last_error(const char **msg)
{
    if (msg)
        *msg = last_status == MS_OK ? "" : last_msg;
    return last_status;
}

void ms_clear_error(void)
{
    last_status = MS_OK;
    last_msg[0] = '\0';
}

static ms_status record(ms_status st, const char *fmt, va_list ap)
{
    if (last_status != MS_OK || st == MS_OK)
        return st;
    last_status = st;
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    return st;
}

ms_status ms__fail(ms_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(st, fmt, ap);
    va_end(ap);
    return st;
}

ms_status ms_record_error(ms_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    record(st, fmt, ap);
    va_end(ap);
    return st;
}

const char *ms__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "(");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, ")");
    return buf;
}
