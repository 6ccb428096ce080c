/* log.csv of metastep train read back for curves.png: the whole run. */
#define _GNU_SOURCE
#include "runlog.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void run_log_free(run_log *l)
{
    free(l->step);
    free(l->train);
    free(l->es);
    for (int i = 0; i < 3; i++) {
        free(l->h[i]);
        free(l->acc[i]);
    }
    *l = (run_log){0};
}

bool run_log_read(const char *path, run_log *l)
{
    *l = (run_log){0};
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    long cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t n;
    bool ok = true, header = true;
    while (ok && (n = getline(&line, &lcap, f)) > 0) {
        if (header || line[n - 1] != '\n') {
            header = false;
            continue;
        }
        double v[9];
        for (int i = 0; i < 9; i++)
            v[i] = NAN;
        char *p = line;
        for (int i = 0; i < 9 && *p && *p != '\n'; i++) {
            char *end;
            v[i] = strtod(p, &end);
            p = strchr(end, ',');
            if (!p)
                break;
            p++;
        }
        if (l->n == cap) {
            cap = cap ? 2 * cap : 1024;
            double **arrs[] = {&l->step, &l->train, &l->es, &l->h[0], &l->h[1], &l->h[2],
                               &l->acc[0], &l->acc[1], &l->acc[2]};
            for (int i = 0; ok && i < 9; i++) {
                double *g = realloc(*arrs[i], sizeof(double) * (size_t)cap);
                ok = g != NULL;
                if (g)
                    *arrs[i] = g;
            }
            if (!ok)
                break;
        }
        l->step[l->n] = v[0];
        l->train[l->n++] = v[1];
        if (isfinite(v[2]) || isfinite(v[3]) || isfinite(v[7])) {
            l->es[l->ne] = v[0];
            l->h[0][l->ne] = v[2];
            l->h[1][l->ne] = v[3];
            l->h[2][l->ne] = v[7];
            l->acc[0][l->ne] = v[5];
            l->acc[1][l->ne] = v[6];
            l->acc[2][l->ne++] = v[8];
        }
    }
    free(line);
    fclose(f);
    if (!ok)
        run_log_free(l);
    return ok;
}

/* A moving average of n values over a window of w (centred, shrinking at the
 * ends; NaN values left out); NULL when out of memory. */
double *run_log_smooth(const double *y, long n, long w)
{
    double *s = malloc(sizeof *s * (size_t)(n ? n : 1)), *cum = malloc(sizeof *cum * (size_t)(n + 1));
    long *cnt = malloc(sizeof *cnt * (size_t)(n + 1));
    if (s && cum && cnt) {
        cum[0] = 0;
        cnt[0] = 0;
        for (long i = 0; i < n; i++) {
            bool fin = isfinite(y[i]);
            cum[i + 1] = cum[i] + (fin ? y[i] : 0);
            cnt[i + 1] = cnt[i] + fin;
        }
        for (long i = 0; i < n; i++) {
            long a = i - w / 2 < 0 ? 0 : i - w / 2, b = i + w / 2 + 1 > n ? n : i + w / 2 + 1;
            s[i] = cnt[b] > cnt[a] ? (cum[b] - cum[a]) / (double)(cnt[b] - cnt[a]) : NAN;
        }
    } else {
        free(s);
        s = NULL;
    }
    free(cum);
    free(cnt);
    return s;
}

