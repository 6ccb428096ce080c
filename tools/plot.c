/* metastep — PNG line plots with cairo (see plot.h).
 *
 * Each panel is laid out in its grid cell from the outside in: title and
 * x-axis text fix the plot height, which fixes the y ticks, whose widest
 * label fixes the left margin and so the plot width, which fixes the x
 * ticks.  Tick counts start from a density per pixel and are lowered until
 * neighbouring labels no longer collide.  Drawing is clipped to the cell,
 * and data to the frame; segments are clipped in double precision first so
 * huge coordinates never reach cairo's fixed-point rasteriser.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* fileno, fstat */
#endif
#include "plot.h"

#include <cairo.h>
#include <sys/stat.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TICKS 96
#define MAX_DIM 16384
#define FONT "sans-serif"
#define PLOT_PI 3.14159265358979323846

static void set_err(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* matplotlib's tab10 */
static const double PALETTE[10][3] = {
    {0.122, 0.467, 0.706}, {1.000, 0.498, 0.055}, {0.173, 0.627, 0.173},
    {0.839, 0.153, 0.157}, {0.580, 0.404, 0.741}, {0.549, 0.337, 0.294},
    {0.890, 0.467, 0.761}, {0.498, 0.498, 0.498}, {0.737, 0.741, 0.133},
    {0.090, 0.745, 0.812},
};

/* ---- axes and ticks ---------------------------------------------------- */

typedef struct tick {
    double t;          /* position in axis space (log10 of the value on log axes) */
    bool major;        /* labelled, with a grid line */
    char label[64];    /* text, or the mantissa "10" when exp[0] != 0 */
    char exp[12];      /* superscript exponent, "" → none */
} tick;

typedef struct axis {
    bool log;
    double lo, hi;     /* visible range in axis space, lo < hi */
    tick ticks[MAX_TICKS];
    int nticks;
} axis;

static bool val_ok(double v, bool log)
{
    return isfinite(v) && (!log || v > 0);
}

static double to_axis(double v, bool log)
{
    return log ? log10(v) : v;
}

/* Smallest 1-2-5 step that is at least `raw`. */
static double nice_step(double raw)
{
    if (!(raw > 0) || !isfinite(raw))
        return 1;
    double mag = pow(10, floor(log10(raw)));
    double norm = raw / mag;
    double m = norm <= 1 + 1e-9 ? 1 : norm <= 2 + 1e-9 ? 2 : norm <= 5 + 1e-9 ? 5 : 10;
    return m * mag;
}

/* Formats v, a multiple of `step`, with just the decimals the step needs;
 * exponent notation ("2.5e-07", "1.2e6") for very large or small values. */
static void fmt_value(char *buf, size_t cap, double v, double step)
{
    if (fabs(v) < step * 1e-6)
        v = 0; /* no "-0" or "1e-17" */
    double a = fabs(v);
    int sexp = (int)floor(log10(step) + 1e-9);
    if (a == 0) {
        snprintf(buf, cap, "0");
    } else if (a < 1e6 && sexp >= -5) {
        snprintf(buf, cap, "%.*f", sexp < 0 ? -sexp : 0, v);
    } else {
        int digits = (int)floor(log10(a) + 1e-9) - sexp;
        digits = digits < 0 ? 0 : digits > 6 ? 6 : digits;
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%.*e", digits, v);
        char *ep = strchr(tmp, 'e');
        if (ep) {
            *ep = '\0';
            snprintf(buf, cap, "%se%d", tmp, (int)strtol(ep + 1, NULL, 10));
        } else {
            snprintf(buf, cap, "%s", tmp);
        }
    }
}

static tick *add_tick(axis *ax, double t, bool major)
{
    if (ax->nticks >= MAX_TICKS)
        return NULL;
    tick *tk = &ax->ticks[ax->nticks++];
    tk->t = t;
    tk->major = major;
    tk->label[0] = tk->exp[0] = '\0';
    return tk;
}

static bool in_range(const axis *ax, double t)
{
    double eps = (ax->hi - ax->lo) * 1e-9;
    return t >= ax->lo - eps && t <= ax->hi + eps;
}

/* About `target` ticks at multiples of a 1-2-5 step, in value space (also
 * used on a log axis spanning too little for decade or 1-2-5 ticks). */
static void ticks_linear(axis *ax, int target)
{
    double vlo = ax->log ? pow(10, ax->lo) : ax->lo;
    double vhi = ax->log ? pow(10, ax->hi) : ax->hi;
    double step = nice_step((vhi - vlo) / target);
    double k0 = ceil(vlo / step - 1e-9), k1 = floor(vhi / step + 1e-9);
    for (int i = 0; i < MAX_TICKS && k0 + i <= k1; i++) {
        double v = (k0 + i) * step;
        if (ax->log && v <= 0)
            continue;
        double t = to_axis(v, ax->log);
        if (!in_range(ax, t))
            continue;
        tick *tk = add_tick(ax, t, true);
        if (tk)
            fmt_value(tk->label, sizeof tk->label, v, step);
    }
}

/* Decades (every 1, 2, 5, 10, ... decades, at most `target` labelled,
 * the others as minor ticks, plus 2..9 minor ticks when few decades); with
 * fewer than three decades in range, 1-2-5 values if at most `target` of
 * them, else decades if two, else linear. */
static void ticks_log(axis *ax, int target)
{
    double d0 = ceil(ax->lo - 1e-9), d1 = floor(ax->hi + 1e-9);
    double ndec = d1 - d0 + 1;
    static const int mant[3] = {1, 2, 5};
    int n125 = 0; /* 1-2-5 values in range */
    for (double d = floor(ax->lo); ndec < 3 && d <= ceil(ax->hi); d++)
        for (int j = 0; j < 3; j++)
            if (in_range(ax, d + log10(mant[j])))
                n125++;
    if (ndec >= 2 && !(ndec < 3 && n125 <= target)) {
        double stride = 1;
        while (ceil(ndec / stride) > target)
            stride = nice_step(stride * 1.0001);
        bool minors = stride == 1 && ndec <= 8;
        for (double d = floor(ax->lo); d <= d1 && ax->nticks < MAX_TICKS; d++) {
            if (d >= d0) {
                bool major = fmod(fabs(d), stride) == 0;
                if (major || ndec <= 40) {
                    tick *tk = add_tick(ax, d, major);
                    if (tk && major) {
                        snprintf(tk->label, sizeof tk->label, "10");
                        snprintf(tk->exp, sizeof tk->exp, "%.0f", d);
                    }
                }
            }
            for (int m = 2; minors && m <= 9; m++) {
                double t = d + log10(m);
                if (in_range(ax, t))
                    add_tick(ax, t, false);
            }
        }
        return;
    }
    if (n125 < 2 || n125 > target) {
        ticks_linear(ax, target);
        return;
    }
    for (double d = floor(ax->lo); d <= ceil(ax->hi); d++)
        for (int m = 1; m <= 9; m++) {
            double t = d + log10(m);
            if (!in_range(ax, t))
                continue;
            bool major = m == 1 || m == 2 || m == 5;
            tick *tk = add_tick(ax, t, major);
            if (tk && major)
                fmt_value(tk->label, sizeof tk->label, m * pow(10, d), pow(10, d));
        }
}

static void make_ticks(axis *ax, int target)
{
    ax->nticks = 0;
    if (ax->log)
        ticks_log(ax, target);
    else
        ticks_linear(ax, target);
}

/* Sets the visible range from the data range [lo, hi] (axis space, n
 * drawable points) or the fixed limits. */
static void set_range(axis *ax, double lo, double hi, int n, const double lim[2])
{
    if (lim[0] < lim[1] && isfinite(lim[0]) && isfinite(lim[1]) && (!ax->log || lim[0] > 0)) {
        ax->lo = fmax(to_axis(lim[0], ax->log), -DBL_MAX / 4);
        ax->hi = fmin(to_axis(lim[1], ax->log), DBL_MAX / 4);
        if (ax->lo < ax->hi)
            return;
    }
    if (n == 0) {
        ax->lo = 0;
        ax->hi = 1;
        return;
    }
    /* keep hi - lo and the tick arithmetic finite */
    lo = fmax(lo, -DBL_MAX / 4);
    hi = fmin(hi, DBL_MAX / 4);
    double mid = lo / 2 + hi / 2, r = hi - lo;
    if (!(r > 1e-12 * fmax(fabs(lo), fabs(hi)))) { /* constant data */
        double d = ax->log ? 1 : mid != 0 ? fabs(mid) * 0.1 : 1;
        lo = mid - d;
        hi = mid + d;
    } else if (isfinite(r)) {
        lo -= 0.05 * r;
        hi += 0.05 * r;
    }
    ax->lo = lo;
    ax->hi = hi;
}

/* ---- drawing helpers --------------------------------------------------- */

typedef struct fig {
    cairo_t *cr;
    double s;                              /* scale of this cell */
    double fs_title, fs_label, fs_tick, fs_legend;
    double pad, ticklen, lw, marker;
} fig;

static void font(cairo_t *cr, double size, bool bold)
{
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
}

static double text_w(cairo_t *cr, const char *s)
{
    cairo_text_extents_t te;
    cairo_text_extents(cr, s, &te);
    return te.x_advance;
}

static double font_ascent(cairo_t *cr)
{
    cairo_font_extents_t fe;
    cairo_font_extents(cr, &fe);
    return fe.ascent;
}

static double font_height(cairo_t *cr)
{
    cairo_font_extents_t fe;
    cairo_font_extents(cr, &fe);
    return fe.ascent + fe.descent;
}

static double tick_label_w(const fig *f, const tick *tk)
{
    font(f->cr, f->fs_tick, false);
    double w = text_w(f->cr, tk->label);
    if (tk->exp[0]) {
        font(f->cr, f->fs_tick * 0.72, false);
        w += text_w(f->cr, tk->exp) + f->fs_tick * 0.05;
        font(f->cr, f->fs_tick, false);
    }
    return w;
}

/* Draws a tick label with its left end at x and baseline y. */
static void draw_tick_label(const fig *f, const tick *tk, double x, double y)
{
    cairo_t *cr = f->cr;
    font(cr, f->fs_tick, false);
    cairo_move_to(cr, x, y);
    cairo_show_text(cr, tk->label);
    if (tk->exp[0]) {
        double w = text_w(cr, tk->label) + f->fs_tick * 0.05;
        font(cr, f->fs_tick * 0.72, false);
        cairo_move_to(cr, x + w, y - f->fs_tick * 0.42);
        cairo_show_text(cr, tk->exp);
        font(cr, f->fs_tick, false);
    }
}

static double max_label_w(const fig *f, const axis *ax)
{
    double w = 0;
    for (int i = 0; i < ax->nticks; i++)
        if (ax->ticks[i].major)
            w = fmax(w, tick_label_w(f, &ax->ticks[i]));
    return w;
}

static bool has_sup(const axis *ax)
{
    for (int i = 0; i < ax->nticks; i++)
        if (ax->ticks[i].exp[0])
            return true;
    return false;
}

/* Smallest pixel distance between neighbouring major ticks. */
static double min_major_gap(const axis *ax, double pixels)
{
    double gap = INFINITY, prev = NAN;
    for (int i = 0; i < ax->nticks; i++) {
        if (!ax->ticks[i].major)
            continue;
        if (!isnan(prev))
            gap = fmin(gap, fabs(ax->ticks[i].t - prev) / (ax->hi - ax->lo) * pixels);
        prev = ax->ticks[i].t;
    }
    return gap;
}

/* Picks the densest ticks whose labels do not collide over `pixels`. */
static void fit_ticks(const fig *f, axis *ax, double pixels, bool horizontal)
{
    int target = (int)(pixels / (f->fs_tick * (horizontal ? 6.0 : 3.2)));
    target = target < 2 ? 2 : target > 10 ? 10 : target;
    for (;; target--) {
        make_ticks(ax, target);
        double need = horizontal ? max_label_w(f, ax) + f->fs_tick
                                 : f->fs_tick * (has_sup(ax) ? 2.0 : 1.6);
        if (target <= 2 || min_major_gap(ax, pixels) >= need)
            break;
    }
}

typedef struct rect {
    double x, y, w, h;
} rect;

/* Liang-Barsky: clips segment (x0,y0)-(x1,y1) to r; false if outside. */
static bool clip_seg(rect r, double *x0, double *y0, double *x1, double *y1)
{
    double dx = *x1 - *x0, dy = *y1 - *y0, u0 = 0, u1 = 1;
    if (!isfinite(dx) || !isfinite(dy))
        return false;
    double p[4] = {-dx, dx, -dy, dy};
    double q[4] = {*x0 - r.x, r.x + r.w - *x0, *y0 - r.y, r.y + r.h - *y0};
    double bound[4] = {r.x, r.x + r.w, r.y, r.y + r.h};
    int k0 = -1, k1 = -1; /* the boundary that set u0, u1 */
    for (int i = 0; i < 4; i++) {
        if (p[i] == 0) {
            if (q[i] < 0)
                return false;
        } else {
            double u = q[i] / p[i];
            if (p[i] < 0) {
                if (u > u1)
                    return false;
                if (u > u0)
                    u0 = u, k0 = i;
            } else {
                if (u < u0)
                    return false;
                if (u < u1)
                    u1 = u, k1 = i;
            }
        }
    }
    double ax = *x0 + u0 * dx, ay = *y0 + u0 * dy;
    double bx = *x0 + u1 * dx, by = *y0 + u1 * dy;
    /* snap to the clipping boundary: with a huge coordinate, x0 + u*dx
     * cancels catastrophically */
    if (k0 >= 0)
        *(k0 < 2 ? &ax : &ay) = bound[k0];
    if (k1 >= 0)
        *(k1 < 2 ? &bx : &by) = bound[k1];
    *x0 = ax, *y0 = ay, *x1 = bx, *y1 = by;
    return true;
}

/* The plot area of a panel and its axes. */
typedef struct frame {
    rect r;
    axis x, y;
} frame;

/* Pixel position of point i of series s, or false if it is not drawable
 * (or the coordinates blow up). */
static bool to_px(const frame *fr, const plot_series *s, int i, double *px, double *py)
{
    if (!val_ok(s->x[i], fr->x.log) || !val_ok(s->y[i], fr->y.log))
        return false;
    double tx = to_axis(s->x[i], fr->x.log), ty = to_axis(s->y[i], fr->y.log);
    *px = fr->r.x + (tx - fr->x.lo) / (fr->x.hi - fr->x.lo) * fr->r.w;
    *py = fr->r.y + fr->r.h - (ty - fr->y.lo) / (fr->y.hi - fr->y.lo) * fr->r.h;
    return isfinite(*px) && isfinite(*py);
}

static bool has_line(plot_style st)
{
    return st == PLOT_LINE || st == PLOT_DASHED || st == PLOT_LINE_MARKERS;
}

static bool has_markers(plot_style st)
{
    return st == PLOT_MARKERS || st == PLOT_LINE_MARKERS;
}

static const double *series_rgb(const plot_series *s, int index)
{
    if (s->rgb[0] == 0 && s->rgb[1] == 0 && s->rgb[2] == 0)
        return PALETTE[index % 10];
    return s->rgb;
}

static void line_style(const fig *f, plot_style st)
{
    cairo_set_line_width(f->cr, f->lw);
    cairo_set_line_join(f->cr, CAIRO_LINE_JOIN_ROUND);
    cairo_set_line_cap(f->cr, st == PLOT_DASHED ? CAIRO_LINE_CAP_BUTT : CAIRO_LINE_CAP_ROUND);
    if (st == PLOT_DASHED) {
        double dash[2] = {6 * f->s, 3.5 * f->s};
        cairo_set_dash(f->cr, dash, 2, 0);
    } else {
        cairo_set_dash(f->cr, NULL, 0, 0);
    }
}

static void marker(const fig *f, double x, double y, const double *rgb)
{
    cairo_t *cr = f->cr;
    cairo_new_sub_path(cr);
    cairo_arc(cr, x, y, f->marker, 0, 2 * PLOT_PI);
    cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_set_line_width(cr, 0.8 * f->s);
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_stroke(cr);
}

/* Builds a polyline from points fed one at a time: clips each segment in
 * double precision, joins contiguous pieces, strokes every MAX_SEGS
 * segments (cairo's stroker slows down badly on one long self-overlapping
 * path), and draws a dot for a point that has no neighbour. */
#define MAX_SEGS 1024
typedef struct pen {
    cairo_t *cr;
    rect big;          /* clip bounds */
    bool have_prev;    /* a previous point in this run */
    bool run_segs;     /* the run has had a segment */
    double px, py;     /* previous point */
    bool down;         /* the path's current point is (lx, ly) */
    double lx, ly;
    int segs;          /* segments in the unstroked path */
} pen;

static void pen_flush(pen *p)
{
    if (p->segs == 0)
        return;
    cairo_stroke(p->cr);
    p->segs = 0;
    if (p->down)
        cairo_move_to(p->cr, p->lx, p->ly);
}

static void pen_break(pen *p)
{
    if (p->have_prev && !p->run_segs && p->px >= p->big.x && p->px <= p->big.x + p->big.w &&
        p->py >= p->big.y && p->py <= p->big.y + p->big.h) {
        cairo_move_to(p->cr, p->px, p->py); /* an isolated point */
        cairo_close_path(p->cr);
        p->segs++;
        p->down = false;
    }
    p->have_prev = p->run_segs = false;
}

static void pen_to(pen *p, double x, double y)
{
    if (p->have_prev && (x != p->px || y != p->py)) {
        double ax = p->px, ay = p->py, bx = x, by = y;
        if (clip_seg(p->big, &ax, &ay, &bx, &by)) {
            if (!p->down || ax != p->lx || ay != p->ly)
                cairo_move_to(p->cr, ax, ay);
            cairo_line_to(p->cr, bx, by);
            p->lx = bx, p->ly = by;
            p->down = bx == x && by == y;
            if (++p->segs >= MAX_SEGS)
                pen_flush(p);
        } else {
            p->down = false;
        }
        p->run_segs = true;
    } else if (p->have_prev) {
        return; /* repeated point */
    }
    p->px = x, p->py = y, p->have_prev = true;
}

/* Per-pixel-column decimation (M4): of consecutive points in one pixel
 * column only the first, the lowest, the highest and the last are drawn,
 * in their original order -- the same picture, a bounded path length. */
typedef struct column {
    bool on;
    double c;                 /* floor(x) of the column */
    int i[4];                 /* indices of first, min, max, last */
    double x[4], y[4];
} column;

static void column_flush(column *c, pen *p)
{
    if (!c->on)
        return;
    int ord[4] = {0, 1, 2, 3};
    if (c->i[2] < c->i[1])
        ord[1] = 2, ord[2] = 1;
    int last = -1;
    for (int k = 0; k < 4; k++) {
        int j = ord[k];
        if (c->i[j] == last)
            continue;
        if (k > 0 && k < 3 && (c->i[j] == c->i[0] || c->i[j] == c->i[3]))
            continue;
        pen_to(p, c->x[j], c->y[j]);
        last = c->i[j];
    }
    c->on = false;
}

static void column_add(column *c, pen *p, int i, double x, double y)
{
    double col = floor(x);
    if (c->on && col != c->c)
        column_flush(c, p);
    if (!c->on) {
        c->on = true;
        c->c = col;
        for (int k = 0; k < 4; k++)
            c->i[k] = i, c->x[k] = x, c->y[k] = y;
        return;
    }
    if (y < c->y[1])
        c->i[1] = i, c->x[1] = x, c->y[1] = y;
    if (y > c->y[2])
        c->i[2] = i, c->x[2] = x, c->y[2] = y;
    c->i[3] = i, c->x[3] = x, c->y[3] = y;
}

static void draw_series(const fig *f, const frame *fr, const plot_series *s, int index)
{
    cairo_t *cr = f->cr;
    const double *rgb = series_rgb(s, index);
    if (has_line(s->style)) {
        line_style(f, s->style);
        cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
        cairo_new_path(cr);
        /* generous bounds for the double-precision clip; cairo clips exactly */
        double m = 4 * f->lw + 2;
        pen p = {.cr = cr, .big = {fr->r.x - m, fr->r.y - m, fr->r.w + 2 * m, fr->r.h + 2 * m}};
        column col = {.on = false};
        for (int i = 0; i < s->n; i++) {
            double x, y;
            if (to_px(fr, s, i, &x, &y)) {
                column_add(&col, &p, i, x, y);
            } else {
                column_flush(&col, &p);
                pen_break(&p);
            }
        }
        column_flush(&col, &p);
        pen_break(&p);
        cairo_stroke(cr);
    }
    if (has_markers(s->style)) {
        double r = f->marker + 1;
        for (int i = 0; i < s->n; i++) {
            double x, y;
            if (to_px(fr, s, i, &x, &y) && x >= fr->r.x - r && x <= fr->r.x + fr->r.w + r &&
                y >= fr->r.y - r && y <= fr->r.y + fr->r.h + r)
                marker(f, x, y, rgb);
        }
    }
}

/* How much of the data a legend box at r would hide. */
static int legend_hits(const fig *f, const frame *fr, const plot_panel *p, rect r)
{
    int hits = 0;
    rect rm = {r.x - f->marker, r.y - f->marker, r.w + 2 * f->marker, r.h + 2 * f->marker};
    for (int k = 0; k < p->nseries; k++) {
        const plot_series *s = &p->series[k];
        bool prev = false;
        double px = 0, py = 0;
        for (int i = 0; i < s->n; i++) {
            double x, y;
            if (!to_px(fr, s, i, &x, &y)) {
                prev = false;
                continue;
            }
            if (has_markers(s->style) && x >= rm.x && x <= rm.x + rm.w && y >= rm.y &&
                y <= rm.y + rm.h)
                hits += 3;
            if (has_line(s->style) && prev) {
                double ax = px, ay = py, bx = x, by = y;
                if (clip_seg(r, &ax, &ay, &bx, &by))
                    hits++;
            }
            px = x, py = y, prev = true;
        }
    }
    return hits;
}

static void draw_legend(const fig *f, const frame *fr, const plot_panel *p)
{
    cairo_t *cr = f->cr;
    int n = 0;
    double tw = 0;
    font(cr, f->fs_legend, false);
    for (int k = 0; k < p->nseries; k++)
        if (p->series[k].label && p->series[k].label[0]) {
            n++;
            tw = fmax(tw, text_w(cr, p->series[k].label));
        }
    if (n == 0)
        return;
    double pad = f->pad, sample = 24 * f->s, row = f->fs_legend * 1.35;
    double w = pad + sample + 0.8 * pad + tw + pad, h = n * row + pad;
    double in = 0.8 * pad;
    rect cand[4] = {
        {fr->r.x + fr->r.w - in - w, fr->r.y + in, w, h},              /* upper right */
        {fr->r.x + in, fr->r.y + in, w, h},                            /* upper left */
        {fr->r.x + fr->r.w - in - w, fr->r.y + fr->r.h - in - h, w, h}, /* lower right */
        {fr->r.x + in, fr->r.y + fr->r.h - in - h, w, h},              /* lower left */
    };
    int best = 0, best_hits = -1;
    for (int c = 0; c < 4; c++) {
        int hits = legend_hits(f, fr, p, cand[c]);
        if (best_hits < 0 || hits < best_hits)
            best = c, best_hits = hits;
    }
    rect r = cand[best];
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_rectangle(cr, r.x, r.y, r.w, r.h);
    cairo_set_source_rgba(cr, 1, 1, 1, 0.88);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.75, 0.75, 0.75);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    int j = 0;
    for (int k = 0; k < p->nseries; k++) {
        const plot_series *s = &p->series[k];
        if (!s->label || !s->label[0])
            continue;
        const double *rgb = series_rgb(s, k);
        double yc = r.y + pad / 2 + (j + 0.5) * row, x0 = r.x + pad;
        if (has_line(s->style)) {
            line_style(f, s->style);
            cairo_set_source_rgb(cr, rgb[0], rgb[1], rgb[2]);
            cairo_move_to(cr, x0, yc);
            cairo_line_to(cr, x0 + sample, yc);
            cairo_stroke(cr);
        }
        if (has_markers(s->style))
            marker(f, x0 + sample / 2, yc, rgb);
        font(cr, f->fs_legend, false);
        cairo_text_extents_t te;
        cairo_text_extents(cr, "x", &te);
        cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
        cairo_move_to(cr, x0 + sample + 0.8 * pad, yc - te.y_bearing / 2);
        cairo_show_text(cr, s->label);
        j++;
    }
}

/* Scales the font down so that text fits in `room` pixels (not below 60%). */
static double fit_font(cairo_t *cr, const char *text, double size, bool bold, double room)
{
    font(cr, size, bold);
    double w = text_w(cr, text);
    if (w > room && w > 0)
        size *= fmax(0.6, room / w);
    font(cr, size, bold);
    return size;
}

/* ---- one panel --------------------------------------------------------- */

static void draw_panel(fig *f, const plot_panel *p, rect cell)
{
    cairo_t *cr = f->cr;
    double s = sqrt(cell.w * cell.h / (640.0 * 480.0));
    s = s < 0.8 ? 0.8 : s > 1.8 ? 1.8 : s;
    f->s = s;
    f->fs_title = 14 * s;
    f->fs_label = 12.5 * s;
    f->fs_tick = 11 * s;
    f->fs_legend = 11 * s;
    f->pad = 7 * s;
    f->ticklen = 4 * s;
    f->lw = 1.8 * s;
    f->marker = 3.6 * s;

    cairo_save(cr);
    cairo_rectangle(cr, cell.x, cell.y, cell.w, cell.h);
    cairo_clip(cr);

    frame fr;
    memset(&fr, 0, sizeof fr);
    fr.x.log = p->log_x;
    fr.y.log = p->log_y;

    /* data ranges over the drawable points */
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    int npts = 0;
    for (int k = 0; k < p->nseries; k++) {
        const plot_series *sr = &p->series[k];
        for (int i = 0; i < sr->n; i++) {
            if (!val_ok(sr->x[i], p->log_x) || !val_ok(sr->y[i], p->log_y))
                continue;
            double tx = to_axis(sr->x[i], p->log_x), ty = to_axis(sr->y[i], p->log_y);
            xlo = fmin(xlo, tx), xhi = fmax(xhi, tx);
            ylo = fmin(ylo, ty), yhi = fmax(yhi, ty);
            npts++;
        }
    }
    set_range(&fr.x, xlo, xhi, npts, p->xlim);
    set_range(&fr.y, ylo, yhi, npts, p->ylim);

    /* vertical layout */
    font(cr, f->fs_tick, false);
    double tick_h = font_height(cr), tick_asc = font_ascent(cr);
    font(cr, f->fs_label, false);
    double label_h = font_height(cr), label_asc = font_ascent(cr);
    double title_size = 0, title_asc = 0, title_h = 0;
    if (p->title && p->title[0]) {
        title_size = fit_font(cr, p->title, f->fs_title, true, cell.w - 2 * f->pad);
        title_h = font_height(cr);
        title_asc = font_ascent(cr);
    }
    double top = f->pad + (title_h > 0 ? title_h + 0.5 * f->pad : 0.5 * tick_h);
    double sup = p->log_x ? 0.4 * f->fs_tick : 0;
    double bottom = f->ticklen + 0.4 * f->pad + sup + tick_h + f->pad +
                    (p->xlabel && p->xlabel[0] ? label_h + 0.3 * f->pad : 0);
    fr.r.y = round(cell.y + top);
    fr.r.h = fmax(1, round(cell.h - top - bottom));
    fit_ticks(f, &fr.y, fr.r.h, false);

    /* horizontal layout */
    double ylabel_room = p->ylabel && p->ylabel[0] ? label_h + 0.6 * f->pad : 0;
    double left = f->pad + ylabel_room + max_label_w(f, &fr.y) + f->ticklen + 0.6 * f->pad;
    double right = 2.5 * f->pad;
    fr.r.x = round(cell.x + left);
    fr.r.w = fmax(1, round(cell.w - left - right));
    fit_ticks(f, &fr.x, fr.r.w, true);
    /* keep the last x label inside the cell */
    for (int i = fr.x.nticks - 1; i >= 0; i--) {
        if (!fr.x.ticks[i].major)
            continue;
        double px = fr.r.x + (fr.x.ticks[i].t - fr.x.lo) / (fr.x.hi - fr.x.lo) * fr.r.w;
        double over = px + tick_label_w(f, &fr.x.ticks[i]) / 2 - (cell.x + cell.w - f->pad / 2);
        if (over > 0)
            fr.r.w = fmax(1, fr.r.w - ceil(over));
        break;
    }

    /* grid */
    cairo_set_line_width(cr, 1);
    cairo_set_dash(cr, NULL, 0, 0);
    for (int pass = 0; pass < 2; pass++) { /* minor then major */
        for (int i = 0; i < fr.x.nticks; i++) {
            const tick *tk = &fr.x.ticks[i];
            if (tk->major != (pass == 1))
                continue;
            double px = floor(fr.r.x + (tk->t - fr.x.lo) / (fr.x.hi - fr.x.lo) * fr.r.w) + 0.5;
            cairo_move_to(cr, px, fr.r.y);
            cairo_line_to(cr, px, fr.r.y + fr.r.h);
        }
        for (int i = 0; i < fr.y.nticks; i++) {
            const tick *tk = &fr.y.ticks[i];
            if (tk->major != (pass == 1))
                continue;
            double py = floor(fr.r.y + fr.r.h - (tk->t - fr.y.lo) / (fr.y.hi - fr.y.lo) * fr.r.h) + 0.5;
            cairo_move_to(cr, fr.r.x, py);
            cairo_line_to(cr, fr.r.x + fr.r.w, py);
        }
        double g = pass ? 0.88 : 0.95;
        cairo_set_source_rgb(cr, g, g, g);
        cairo_stroke(cr);
    }

    /* data */
    cairo_save(cr);
    cairo_rectangle(cr, fr.r.x, fr.r.y, fr.r.w, fr.r.h);
    cairo_clip(cr);
    for (int k = 0; k < p->nseries; k++)
        draw_series(f, &fr, &p->series[k], k);
    cairo_restore(cr);

    /* frame and ticks */
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_set_line_width(cr, 1);
    cairo_set_source_rgb(cr, 0.25, 0.25, 0.25);
    cairo_rectangle(cr, fr.r.x + 0.5, fr.r.y + 0.5, fr.r.w - 1, fr.r.h - 1);
    cairo_stroke(cr);
    for (int i = 0; i < fr.x.nticks; i++) {
        const tick *tk = &fr.x.ticks[i];
        double px = floor(fr.r.x + (tk->t - fr.x.lo) / (fr.x.hi - fr.x.lo) * fr.r.w) + 0.5;
        double len = tk->major ? f->ticklen : f->ticklen * 0.6;
        cairo_move_to(cr, px, fr.r.y + fr.r.h);
        cairo_line_to(cr, px, fr.r.y + fr.r.h + len);
    }
    for (int i = 0; i < fr.y.nticks; i++) {
        const tick *tk = &fr.y.ticks[i];
        double py = floor(fr.r.y + fr.r.h - (tk->t - fr.y.lo) / (fr.y.hi - fr.y.lo) * fr.r.h) + 0.5;
        double len = tk->major ? f->ticklen : f->ticklen * 0.6;
        cairo_move_to(cr, fr.r.x, py);
        cairo_line_to(cr, fr.r.x - len, py);
    }
    cairo_stroke(cr);

    /* tick labels */
    cairo_set_source_rgb(cr, 0.15, 0.15, 0.15);
    double xbase = fr.r.y + fr.r.h + f->ticklen + 0.4 * f->pad + sup + tick_asc;
    for (int i = 0; i < fr.x.nticks; i++) {
        const tick *tk = &fr.x.ticks[i];
        if (!tk->major)
            continue;
        double px = fr.r.x + (tk->t - fr.x.lo) / (fr.x.hi - fr.x.lo) * fr.r.w;
        draw_tick_label(f, tk, px - tick_label_w(f, tk) / 2, xbase);
    }
    font(cr, f->fs_tick, false);
    cairo_text_extents_t digit;
    cairo_text_extents(cr, "0", &digit);
    for (int i = 0; i < fr.y.nticks; i++) {
        const tick *tk = &fr.y.ticks[i];
        if (!tk->major)
            continue;
        double py = fr.r.y + fr.r.h - (tk->t - fr.y.lo) / (fr.y.hi - fr.y.lo) * fr.r.h;
        double x = fr.r.x - f->ticklen - 0.6 * f->pad - tick_label_w(f, tk);
        draw_tick_label(f, tk, x, py - digit.y_bearing / 2);
    }

    /* axis labels and title */
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    if (p->xlabel && p->xlabel[0]) {
        fit_font(cr, p->xlabel, f->fs_label, false, fr.r.w);
        double w = text_w(cr, p->xlabel);
        cairo_move_to(cr, fr.r.x + fr.r.w / 2 - w / 2,
                      xbase + tick_h - tick_asc + 0.3 * f->pad + label_asc);
        cairo_show_text(cr, p->xlabel);
    }
    if (p->ylabel && p->ylabel[0]) {
        fit_font(cr, p->ylabel, f->fs_label, false, fr.r.h);
        double w = text_w(cr, p->ylabel);
        cairo_save(cr);
        cairo_move_to(cr, cell.x + f->pad + label_asc, fr.r.y + fr.r.h / 2 + w / 2);
        cairo_rotate(cr, -PLOT_PI / 2);
        cairo_show_text(cr, p->ylabel);
        cairo_restore(cr);
    }
    if (title_h > 0) {
        font(cr, title_size, true);
        double w = text_w(cr, p->title);
        double cx = fr.r.x + fr.r.w / 2 - w / 2;
        cx = fmax(cell.x + f->pad, fmin(cx, cell.x + cell.w - f->pad - w));
        cairo_move_to(cr, cx, cell.y + f->pad + title_asc);
        cairo_show_text(cr, p->title);
    }

    if (npts == 0) {
        font(cr, f->fs_label, false);
        const char *msg = "(no data)";
        double w = text_w(cr, msg);
        cairo_set_source_rgb(cr, 0.55, 0.55, 0.55);
        cairo_move_to(cr, fr.r.x + fr.r.w / 2 - w / 2, fr.r.y + fr.r.h / 2 + label_asc / 2);
        cairo_show_text(cr, msg);
    }
    draw_legend(f, &fr, p);
    cairo_restore(cr);
}

/* ---- output ------------------------------------------------------------ */

typedef struct sink {
    FILE *f;
    int err; /* errno of the first failed write */
} sink;

static cairo_status_t write_png(void *closure, const unsigned char *data, unsigned int len)
{
    sink *k = closure;
    if (fwrite(data, 1, len, k->f) != len) {
        if (!k->err)
            k->err = errno ? errno : EIO;
        return CAIRO_STATUS_WRITE_ERROR;
    }
    return CAIRO_STATUS_SUCCESS;
}

/* Write surf (destroyed) to path; on failure remove the partial file. */
static int save_png(cairo_surface_t *surf, const char *path, char *err, size_t cap)
{
    cairo_status_t st;
    sink k = {fopen(path, "wb"), 0};
    if (!k.f) {
        set_err(err, cap, "plot: cannot open %s: %s", path, strerror(errno));
        cairo_surface_destroy(surf);
        return -1;
    }
    /* on failure only a regular file is removed: never a device or a FIFO */
    struct stat sb;
    bool regular = fstat(fileno(k.f), &sb) == 0 && S_ISREG(sb.st_mode);
    errno = 0;
    st = cairo_surface_write_to_png_stream(surf, write_png, &k);
    cairo_surface_destroy(surf);
    if (fclose(k.f) != 0 && !k.err && st == CAIRO_STATUS_SUCCESS)
        k.err = errno ? errno : EIO;
    if (st != CAIRO_STATUS_SUCCESS || k.err) {
        if (k.err)
            set_err(err, cap, "plot: cannot write %s: %s", path, strerror(k.err));
        else
            set_err(err, cap, "plot: cannot write %s: %s", path, cairo_status_to_string(st));
        if (regular)
            remove(path);
        return -1;
    }
    return 0;
}

/* End drawing on cr (destroyed) and write surf (destroyed) to path: a
 * drawing error is reported before anything is written. */
static int finish_png(cairo_t *cr, cairo_surface_t *surf, const char *path, char *err,
                      size_t cap)
{
    cairo_status_t st = cairo_status(cr);
    cairo_destroy(cr);
    cairo_surface_flush(surf);
    if (st == CAIRO_STATUS_SUCCESS)
        st = cairo_surface_status(surf);
    if (st != CAIRO_STATUS_SUCCESS) {
        set_err(err, cap, "plot: cairo: %s", cairo_status_to_string(st));
        cairo_surface_destroy(surf);
        return -1;
    }
    return save_png(surf, path, err, cap);
}

static int check_args(const char *path, int width, int height, const plot_panel *panels,
                      int npanels, int cols, char *err, size_t cap)
{
    if (!path || !path[0]) {
        set_err(err, cap, "plot: no output path");
        return -1;
    }
    if (width < 1 || width > MAX_DIM || height < 1 || height > MAX_DIM) {
        set_err(err, cap, "plot: image size %dx%d not in 1..%d", width, height, MAX_DIM);
        return -1;
    }
    if (!panels || npanels < 1) {
        set_err(err, cap, "plot: no panels");
        return -1;
    }
    if (cols < 1) {
        set_err(err, cap, "plot: %d columns", cols);
        return -1;
    }
    for (int j = 0; j < npanels; j++) {
        const plot_panel *p = &panels[j];
        if (p->nseries < 0 || (p->nseries > 0 && !p->series)) {
            set_err(err, cap, "plot: panel %d: invalid series list", j);
            return -1;
        }
        for (int k = 0; k < p->nseries; k++) {
            const plot_series *s = &p->series[k];
            if (s->n < 0 || (s->n > 0 && (!s->x || !s->y))) {
                set_err(err, cap, "plot: panel %d series %d: invalid points", j, k);
                return -1;
            }
        }
    }
    return 0;
}

int plot_png(const char *path, int width, int height, const plot_panel *panels, int npanels,
             int cols, char *err, size_t cap)
{
    if (err && cap)
        err[0] = '\0';
    if (check_args(path, width, height, panels, npanels, cols, err, cap))
        return -1;
    if (cols > npanels)
        cols = npanels;
    int rows = (npanels + cols - 1) / cols;

    cairo_surface_t *surf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_t *cr = cairo_create(surf);
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_BEST);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    fig f = {.cr = cr};
    double cw = (double)width / cols, ch = (double)height / rows;
    for (int j = 0; j < npanels; j++) {
        rect cell = {(j % cols) * cw, (j / cols) * ch, cw, ch};
        draw_panel(&f, &panels[j], cell);
    }
    return finish_png(cr, surf, path, err, cap);
}

/* ---- image grids ------------------------------------------------------- */

int plot_images_png(const char *path, const char *title, const plot_image_row *rows, int nrows,
                    int cell, char *err, size_t cap)
{
    if (err && cap)
        err[0] = '\0';
    if (!path || !path[0] || !rows || nrows < 1 || cell < 8 || cell > 1024) {
        set_err(err, cap, "plot: invalid image grid arguments");
        return -1;
    }
    int maxn = 1;
    for (int r = 0; r < nrows; r++) {
        if (rows[r].n < 0 || (rows[r].n > 0 && !rows[r].images)) {
            set_err(err, cap, "plot: image row %d: invalid images", r);
            return -1;
        }
        for (int i = 0; i < rows[r].n; i++) {
            const plot_image *im = &rows[r].images[i];
            if (im->gap)
                continue;
            if (!im->pix || (im->c != 1 && im->c != 3) || im->h < 1 || im->w < 1) {
                set_err(err, cap, "plot: image row %d image %d: invalid image", r, i);
                return -1;
            }
        }
        maxn = rows[r].n > maxn ? rows[r].n : maxn;
    }
    double pad = cell * 0.08, cap_h = cell * 0.22, row_title = cell * 0.26,
           top = title ? cell * 0.4 : pad;
    double cw = cell + pad, rh = row_title + cell + 2 * cap_h + pad;
    /* wide enough for the titles too */
    double text = 0;
    cairo_surface_t *probe = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1);
    cairo_t *pc = cairo_create(probe);
    if (title) {
        font(pc, cell * 0.2, true);
        text = text_w(pc, title);
    }
    font(pc, cell * 0.15, true);
    for (int r = 0; r < nrows; r++)
        if (rows[r].title)
            text = fmax(text, text_w(pc, rows[r].title));
    cairo_destroy(pc);
    cairo_surface_destroy(probe);
    int width = (int)ceil(fmax(pad + maxn * cw, 2 * pad + text)),
        height = (int)ceil(top + nrows * rh + pad);
    if (width > MAX_DIM || height > MAX_DIM) {
        set_err(err, cap, "plot: image grid of %dx%d pixels is too large", width, height);
        return -1;
    }
    cairo_surface_t *surf = cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height);
    cairo_t *cr = cairo_create(surf);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    if (title) {
        font(cr, cell * 0.2, true);
        cairo_set_source_rgb(cr, 0, 0, 0);
        cairo_move_to(cr, pad, top * 0.7);
        cairo_show_text(cr, title);
    }
    for (int r = 0; r < nrows; r++) {
        double y0 = top + r * rh;
        if (rows[r].title) {
            font(cr, cell * 0.15, true);
            cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
            cairo_move_to(cr, pad, y0 + row_title * 0.75);
            cairo_show_text(cr, rows[r].title);
        }
        for (int i = 0; i < rows[r].n; i++) {
            const plot_image *im = &rows[r].images[i];
            if (im->gap)
                continue;
            double x0 = pad + i * cw, yi = y0 + row_title;
            /* the pixels, nearest neighbour, gray or RGB in [0, 1] */
            double sx = (double)cell / im->w, sy = (double)cell / im->h;
            for (int y = 0; y < im->h; y++)
                for (int x = 0; x < im->w; x++) {
                    double v[3];
                    for (int k = 0; k < 3; k++) {
                        double p = im->pix[(size_t)(im->c == 3 ? k : 0) * im->h * im->w +
                                           (size_t)y * im->w + x];
                        v[k] = isfinite(p) ? (p < 0 ? 0 : p > 1 ? 1 : p) : 0;
                    }
                    cairo_set_source_rgb(cr, v[0], v[1], v[2]);
                    cairo_rectangle(cr, x0 + x * sx, yi + y * sy, sx + 0.5, sy + 0.5);
                    cairo_fill(cr);
                }
            if (im->frame) {
                if (im->frame == 1)
                    cairo_set_source_rgb(cr, 0.17, 0.63, 0.17);
                else
                    cairo_set_source_rgb(cr, 0.84, 0.15, 0.16);
                cairo_set_line_width(cr, cell * 0.04);
                cairo_rectangle(cr, x0, yi, cell, cell);
                cairo_stroke(cr);
            }
            const char *lines[2] = {im->caption, im->caption2};
            for (int l = 0; l < 2; l++) {
                if (!lines[l] || !lines[l][0])
                    continue;
                double size = fit_font(cr, lines[l], cell * 0.14, false, cell + pad * 0.8);
                font(cr, size, false);
                cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
                cairo_move_to(cr, x0, yi + cell + cap_h * (l + 0.8));
                cairo_show_text(cr, lines[l]);
            }
        }
    }
    return finish_png(cr, surf, path, err, cap);
}
