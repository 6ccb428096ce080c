/* metastep — a small PNG line-plot module on cairo, used by `metastep train`
 * to draw curves.png (meta-training and held-out query loss over meta-steps)
 * and fits.png (a grid of held-out sine tasks: the true curve, the support
 * points, the prediction before and after adaptation).
 *
 * One call draws a whole figure: a grid of panels, each with its own axes
 * (linear or logarithmic, "nice" 1-2-5 / decade ticks with labels and light
 * grid lines), title, axis labels and legend box, on a white background with
 * antialiased lines.  The module keeps no state and holds no pointer past the
 * call; it is safe to call from several threads at once on different paths.
 *
 * Built only when cairo is found (meson defines MS_HAVE_PLOT for users of
 * plot_dep); callers should guard their use with #ifdef MS_HAVE_PLOT.
 */
#ifndef METASTEP_TOOLS_PLOT_H
#define METASTEP_TOOLS_PLOT_H

#include <stdbool.h>
#include <stddef.h>

/* How a series is drawn. */
typedef enum plot_style {
    PLOT_LINE,          /* solid line through consecutive points */
    PLOT_MARKERS,       /* a filled circle at each point, no line */
    PLOT_DASHED,        /* dashed line through consecutive points */
    PLOT_LINE_MARKERS   /* solid line plus a marker at each point */
} plot_style;

/* One data series of a panel.  Borrowed by plot_png for the call only.
 *
 * Points whose x or y is NaN or infinite are skipped, as are points with a
 * non-positive coordinate on a logarithmic axis; a line is broken at a
 * skipped point (the points on either side are not joined).  A series with
 * n == 0 is allowed (drawn as nothing, still listed in the legend if it has
 * a label); x and y may then be NULL.  Series are drawn in order, so later
 * series are on top (put markers last to keep them visible).  Lines of
 * long series are reduced to the first, lowest, highest and last point of
 * each pixel column -- the same picture -- so 10^5+ points draw quickly. */
typedef struct plot_series {
    const char *label;      /* legend text; NULL or "" → not in the legend */
    const double *x, *y;    /* n points each; may be NULL only when n == 0 */
    int n;                  /* number of points, >= 0 */
    plot_style style;
    double rgb[3];          /* colour, components in [0, 1]; all zero →
                               the automatic palette (tab10), indexed by the
                               series' position in its panel, so parallel
                               series lists get the same colours in every
                               panel.  For black use e.g. {0.1, 0.1, 0.1}. */
} plot_series;

/* One panel (one set of axes).  Borrowed by plot_png for the call only.
 * Axis ranges are automatic (the range of the drawable points plus a 5%
 * margin; a zero range, e.g. constant data, is widened around the value; no
 * drawable point at all gives [0, 1], or [1, 10] on a log axis, and the
 * panel shows "(no data)") unless fixed by xlim / ylim. */
typedef struct plot_panel {
    const char *title;      /* above the panel; NULL → none */
    const char *xlabel;     /* below the x axis; NULL → none */
    const char *ylabel;     /* left of the y axis, rotated; NULL → none */
    bool log_x, log_y;      /* logarithmic axis: ticks at decades, or at
                               1-2-5 values when less than three decades
                               are in range and they fit, or at plain nice
                               values when the range is shorter still */
    double xlim[2], ylim[2];/* fixed axis range when lim[0] < lim[1] (and
                               lim[0] > 0 on a log axis); otherwise (e.g.
                               both zero) automatic.  Points outside are
                               clipped at the frame. */
    const plot_series *series; /* nseries entries; may be NULL if nseries == 0 */
    int nseries;            /* >= 0 */
} plot_panel;

/* Draw `npanels` panels, row by row, in a grid of `cols` columns (clamped to
 * npanels; rows = ceil(npanels / cols)), into a width×height pixel RGB PNG at
 * `path` (created or truncated).  Font sizes and line widths scale with the
 * size of a grid cell.  Nothing is kept past the call.
 *
 * Returns 0 on success.  On failure returns -1, writes a NUL-terminated
 * message (truncated to cap bytes) to err when err != NULL and cap > 0, and
 * removes the file it had started writing at `path` (if a regular file).  Failures: invalid
 * arguments (NULL path or panels, width or height not in 1..16384, npanels <
 * 1, cols < 1, a series with n < 0 or NULL x/y with n > 0, a panel with
 * nseries < 0 or NULL series with nseries > 0), a cairo error (e.g. out of
 * memory), or the file not openable / not writable (message has strerror). */
int plot_png(const char *path, int width, int height,
             const plot_panel *panels, int npanels, int cols,
             char *err, size_t cap);

/* One image of a grid (episodes.png): c (1 gray or 3 RGB) channel-major
 * planes of h x w values in [0, 1] (clamped; non-finite → 0), drawn
 * nearest-neighbour into a square cell, with up to two caption lines below
 * and an optional coloured frame.  Borrowed for the call only. */
typedef struct plot_image {
    const float *pix;
    int c, h, w;
    const char *caption, *caption2; /* NULL → none */
    int frame;                      /* 0 none, 1 green (right), 2 red (wrong) */
    bool gap;                       /* an empty cell (pix ignored) */
} plot_image;

typedef struct plot_image_row {
    const char *title; /* above the row; NULL → none */
    const plot_image *images;
    int n;
} plot_image_row;

/* Draw rows of images, each image in a cell x cell pixel square, under an
 * optional figure title, into a PNG at path (size follows from the rows).
 * Returns 0, or -1 with a message in err as plot_png (invalid arguments:
 * cell not in 8..1024, no rows, an image without pixels or with c not 1 or
 * 3, a figure larger than 16384 pixels). */
int plot_images_png(const char *path, const char *title, const plot_image_row *rows, int nrows,
                    int cell, char *err, size_t cap);

#endif /* METASTEP_TOOLS_PLOT_H */
