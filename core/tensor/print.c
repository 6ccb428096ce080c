/* Printing in Ivy's layout, which is NumPy's array repr: every value in its
 * shortest round-trip form for the dtype but at most 8 fractional digits
 * (NumPy's floatmode "maxprec", precision 8), columns aligned on the decimal
 * point, scientific notation when magnitudes span more than 1e3 or reach
 * 1e8 (1e6 for float32) or fall below 1e-4, rows wrapped at 75 characters. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/tensor.h"

#define PREFIX "ivy.array("
#define LINE_WIDTH 75
/* Ivy's ivy.array_decimal_values and ivy.array_significant_figures */
static atomic_int decimal_values = 8, significant_figures = 10;
#define PRECISION (atomic_load_explicit(&decimal_values, memory_order_relaxed))

ms_status ms_set_print_options(int sig_figs, int decimals)
{
    if (sig_figs < 0 || sig_figs > 17 || decimals < 0 || decimals > 17)
        return ms__fail(MS_ERR_INVALID_ARG, "ms_set_print_options: significant figures %d and "
                        "decimal values %d must be in [0, 17]", sig_figs, decimals);
    atomic_store(&significant_figures, sig_figs);
    atomic_store(&decimal_values, decimals);
    return MS_OK;
}

void ms_get_print_options(int *sig_figs, int *decimals)
{
    if (sig_figs)
        *sig_figs = atomic_load(&significant_figures);
    if (decimals)
        *decimals = atomic_load(&decimal_values);
}

/* Ivy rounds every value to its significant figures in float64 before
 * NumPy prints it (ivy.vec_sig_fig); the rounded values then print as
 * float64 whatever the tensor's dtype. */
static ms_dtype print_dtype(const ms_tensor *t)
{
    return atomic_load_explicit(&significant_figures, memory_order_relaxed) ? MS_F64 : t->dtype;
}

static double sig_fig(double v)
{
    int sf = atomic_load_explicit(&significant_figures, memory_order_relaxed);
    if (!sf || !isfinite(v) || v == 0)
        return v;
    double mags = pow(10.0, sf - 1 - floor(log10(fabs(v))));
    if (!isfinite(mags) || !isfinite(v * mags))
        return v;
    return nearbyint(v * mags) / mags; /* NumPy's round: half to even */
}

typedef struct fmt {
    bool sci;
    int pad_left, pad_right; /* integer-part width, and the width after it */
    int sci_digits;          /* scientific: fraction digits of the mantissa */
    int exp_width;           /* scientific: exponent digits */
} fmt;

static double value_at(const ms_tensor *t, int64_t i)
{
    return sig_fig(t->dtype == MS_F32 ? (double)((const float *)t->data)[i]
                                      : ((const double *)t->data)[i]);
}

/* Fewest significant digits (1..17) that read back as v in its dtype. */
static int shortest_digits(double v, ms_dtype dt)
{
    char buf[64];
    for (int p = 0; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p, v);
        double r = strtod(buf, NULL);
        if (dt == MS_F32 ? (float)r == (float)v : r == v)
            return p + 1;
    }
    return 17;
}

/* Positional text of finite v: shortest round-trip, at most PRECISION
 * fraction digits, trailing zeros trimmed but the point kept ("1.", "0.5"). */
static void positional(double v, ms_dtype dt, char *out, size_t cap)
{
    int sig = shortest_digits(v, dt);
    int exp10 = v == 0 ? 0 : (int)floor(log10(fabs(v)));
    char e[64];
    snprintf(e, sizeof e, "%.*e", sig - 1, v);
    exp10 = atoi(strchr(e, 'e') + 1); /* the exponent after rounding */
    int frac = sig - 1 - exp10;
    if (frac < 0)
        frac = 0;
    if (frac > PRECISION)
        frac = PRECISION;
    snprintf(out, cap, "%.*f", frac, v);
    char *dot = strchr(out, '.');
    if (!dot) {
        strncat(out, ".", cap - strlen(out) - 1);
        return;
    }
    size_t n = strlen(out);
    while (n > 0 && out[n - 1] == '0' && &out[n - 1] > dot)
        out[--n] = '\0';
    if (strcmp(out, "-0.") == 0 && !signbit(v))
        snprintf(out, cap, "0.");
}

/* Scientific text as NumPy's first pass makes it: the shortest round-trip
 * mantissa for the dtype, at most PRECISION fraction digits, trailing zeros
 * trimmed but the point kept ("1.e-05", "1.5e+00"), exponent of at least
 * two digits. */
static void scientific(double v, ms_dtype dt, char *out, size_t cap)
{
    int sig = shortest_digits(v, dt);
    int digits = sig - 1 > PRECISION ? PRECISION : sig - 1;
    char m[64];
    snprintf(m, sizeof m, "%.*e", digits, v);
    char *e = strchr(m, 'e');
    int ex = atoi(e + 1);
    *e = '\0';
    size_t n = strlen(m);
    char *dot = strchr(m, '.');
    while (dot && n > 0 && m[n - 1] == '0' && &m[n - 1] > dot)
        m[--n] = '\0';
    if (!dot)
        strcat(m, ".");
    snprintf(out, cap, "%se%c%02d", m, ex < 0 ? '-' : '+', abs(ex));
}

static void non_finite(double v, char *out, size_t cap)
{
    snprintf(out, cap, "%s", isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
}

static fmt make_format(const ms_tensor *t)
{
    fmt f = {false, 0, 0, 0, 2};
    double maxv = 0, minv = INFINITY;
    bool any_finite = false, any_nonfinite = false, neg_inf = false;
    for (int64_t i = 0; i < t->numel; i++) {
        double v = value_at(t, i);
        if (!isfinite(v)) {
            any_nonfinite = true;
            neg_inf = neg_inf || (isinf(v) && v < 0);
            continue;
        }
        any_finite = true;
        double a = fabs(v);
        if (a != 0) {
            maxv = a > maxv ? a : maxv;
            minv = a < minv ? a : minv;
        }
    }
    /* NumPy's cutoff is 10**min(8, finfo(dtype).precision): 1e6 for float32 */
    double cutoff = print_dtype(t) == MS_F32 ? 1e6 : 1e8;
    if (maxv > 0 && (maxv >= cutoff || minv < 1e-4 || maxv / minv > 1e3))
        f.sci = true;
    char buf[128];
    for (int64_t i = 0; any_finite && i < t->numel; i++) {
        double v = value_at(t, i);
        if (!isfinite(v))
            continue;
        if (f.sci) {
            scientific(v, print_dtype(t), buf, sizeof buf);
            char *dot = strchr(buf, '.'), *e = strchr(buf, 'e');
            int il = (int)(dot - buf), fl = (int)(e - dot - 1), el = (int)strlen(e + 2);
            f.pad_left = il > f.pad_left ? il : f.pad_left;
            f.sci_digits = fl > f.sci_digits ? fl : f.sci_digits;
            f.exp_width = el > f.exp_width ? el : f.exp_width;
        } else {
            positional(v, print_dtype(t), buf, sizeof buf);
            char *dot = strchr(buf, '.');
            int il = (int)(dot - buf), fl = (int)strlen(dot + 1);
            f.pad_left = il > f.pad_left ? il : f.pad_left;
            f.pad_right = fl > f.pad_right ? fl : f.pad_right;
        }
    }
    if (f.sci) /* what follows the integer part: ".", digits, "e+", exponent */
        f.pad_right = f.sci_digits + 2 + f.exp_width;
    if (any_nonfinite) { /* "nan", "inf" or "-inf" must fit the column */
        int need = 3 + (neg_inf ? 1 : 0) - (f.pad_right + 1);
        f.pad_left = need > f.pad_left ? need : f.pad_left;
    }
    return f;
}

static void format_value(const ms_tensor *t, const fmt *f, double v, char *out, size_t cap)
{
    char core[128];
    if (!isfinite(v)) {
        non_finite(v, core, sizeof core);
        snprintf(out, cap, "%*s", f->pad_left + f->pad_right + 1, core);
        return;
    }
    if (f->sci) {
        /* the mantissa fraction is zero-padded to a common length (NumPy's
         * min_digits), the exponent to a common width */
        scientific(v, print_dtype(t), core, sizeof core);
        char *e = strchr(core, 'e');
        char *dot = strchr(core, '.');
        int fl = (int)(e - dot - 1), il = (int)(dot - core);
        int ex = atoi(e + 1);
        snprintf(out, cap, "%*s%.*s%.*se%c%0*d", f->pad_left - il, "", (int)(e - core), core,
                 f->sci_digits - fl, "00000000", ex < 0 ? '-' : '+', f->exp_width, abs(ex));
        return;
    }
    positional(v, print_dtype(t), core, sizeof core);
    char *dot = strchr(core, '.');
    int il = (int)(dot - core), fl = (int)strlen(dot + 1);
    snprintf(out, cap, "%*s%s%*s", f->pad_left - il, "", core, f->pad_right - fl, "");
}

typedef struct out {
    FILE *f;
    int col; /* current column */
} out;

static void emit(out *o, const char *s)
{
    fputs(s, o->f);
    const char *nl = strrchr(s, '\n');
    o->col = nl ? (int)strlen(nl + 1) : o->col + (int)strlen(s);
}

/* One axis of the array, NumPy's _formatArray without summarisation. */
static void format_axis(out *o, const ms_tensor *t, const fmt *f, int axis, int64_t offset,
                        int64_t stride_unit, int indent)
{
    int64_t n = t->shape[axis];
    int64_t inner = 1;
    for (int i = axis + 1; i < t->ndim; i++)
        inner *= t->shape[i];
    (void)stride_unit;
    emit(o, "[");
    if (axis == t->ndim - 1) {
        /* NumPy's _formatArray: the suffix ")" is taken off the line width,
         * each enclosing "[" takes one more, and every element (the last
         * too) leaves room for the "," or "]" after it */
        int limit = LINE_WIDTH - 1 - axis - 1;
        for (int64_t i = 0; i < n; i++) {
            char word[160];
            format_value(t, f, value_at(t, offset + i), word, sizeof word);
            if (i > 0 && o->col + 1 + (int)strlen(word) > limit) {
                /* wrap: NumPy leaves no space after the comma at a line end */
                fputs("\n", o->f);
                o->col = 0;
                for (int s = 0; s < indent + 1; s++)
                    emit(o, " ");
            } else if (i > 0) {
                emit(o, " ");
            }
            emit(o, word);
            if (i + 1 < n)
                emit(o, ",");
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            if (i > 0) {
                emit(o, ",");
                for (int b = 0; b < t->ndim - axis - 1; b++)
                    emit(o, "\n");
                for (int s = 0; s < indent + 1; s++)
                    emit(o, " ");
            }
            format_axis(o, t, f, axis + 1, offset + i * inner, stride_unit, indent + 1);
        }
    }
    emit(o, "]");
}

ms_status ms_tensor_fprint(FILE *file, const ms_tensor *t)
{
    if (!file)
        return ms__fail(MS_ERR_NULL_ARG, "ms_tensor_fprint: file is NULL");
    if (!t)
        return ms__fail(MS_ERR_NULL_ARG, "ms_tensor_fprint: t is NULL");
    if (!ms__check("ms_tensor_fprint", t, "t"))
        return MS_ERR_INVALID_ARG;
    out o = {file, 0};
    emit(&o, PREFIX);
    if (t->ndim == 0) {
        fmt f = make_format(t);
        char word[160];
        format_value(t, &f, value_at(t, 0), word, sizeof word);
        /* a lone value carries no column padding */
        const char *w = word;
        while (*w == ' ')
            w++;
        emit(&o, w);
    } else if (t->numel == 0) {
        emit(&o, "[]");
    } else {
        fmt f = make_format(t);
        format_axis(&o, t, &f, 0, 0, 1, (int)strlen(PREFIX));
    }
    emit(&o, ")");
    return MS_OK;
}

char *ms_tensor_to_string(const ms_tensor *t)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        ms__fail(MS_ERR_NOMEM, "ms_tensor_to_string: out of memory");
        return NULL;
    }
    ms_status st = ms_tensor_fprint(f, t);
    fclose(f);
    if (st != MS_OK) {
        free(buf);
        return NULL;
    }
    return buf;
}
