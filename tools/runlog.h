/* log.csv of `metastep train` read back: the whole run (a resumed run's
 * earlier steps too), for curves.png. */
#ifndef METASTEP_TOOLS_RUNLOG_H
#define METASTEP_TOOLS_RUNLOG_H

#include <stdbool.h>

typedef struct run_log {
    long n, ne;                 /* rows; rows with a held-out evaluation */
    double *step, *train;       /* n: step and meta-training loss of every row */
    double *es, *h[3], *acc[3]; /* ne: held-out loss and accuracy after 0, 1, 10 steps */
} run_log;

/* Read the whole rows of a log.csv (the header and a torn last row are
 * skipped; a 7-column log has no 10-step values: NaN).  False when the file
 * cannot be read or memory runs out. */
bool run_log_read(const char *path, run_log *l);
void run_log_free(run_log *l);
/* A centred moving average of y[0..n) over a window of w (shrinking at the
 * ends, NaN values left out); a new array, or NULL when out of memory. */
double *run_log_smooth(const double *y, long n, long w);

#endif
