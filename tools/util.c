/* Small helpers shared by the metastep command's subcommands. */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void util_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

int util_choice(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

bool util_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool util_int(const char *s, int lo, int hi, int *out)
{
    long v;
    if (!util_long(s, lo, hi, &v))
        return false;
    *out = (int)v;
    return true;
}

bool util_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

double util_value(const ms_tensor *t, int64_t i)
{
    return ms_tensor_dtype(t) == MS_F32 ? (double)((const float *)ms_tensor_data(t))[i]
                                        : ((const double *)ms_tensor_data(t))[i];
}

bool util_mkdirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = n ? ENAMETOOLONG : ENOENT;
        return false;
    }
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return false;
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return false;
    struct stat st;
    if (stat(buf, &st) != 0)
        return false;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return false;
    }
    return true;
}

/* Whether argv element `arg` spells the long option `name` in full
 * ("--name" or "--name=..."): abbreviations are not options of the command
 * (they may be a task's options). */
static bool spelled_out(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, "--", 2) == 0 && strncmp(arg + 2, name, n) == 0 &&
           (arg[2 + n] == '\0' || arg[2 + n] == '=');
}

int util_parse_options(const char *cmd, int argc, char **argv, const struct option *opts,
                       util_opt_fn fn, util_extra_fn extra, void *user)
{
    optind = 0; /* glibc: start afresh */
    opterr = 0;
    for (;;) {
        int cur = optind ? optind : 1, index = -1;
        int c = getopt_long(argc, argv, "+:hq", opts, &index);
        if (c == -1)
            break;
        const char *arg = cur < argc ? argv[cur] : "";
        if ((c != '?' && c != ':' && index >= 0 && !spelled_out(arg, opts[index].name)) ||
            (c == '?' && optopt == 0)) {
            /* not an option of the command: a task option, or unknown */
            if (strncmp(arg, "--", 2) != 0 || !arg[2] || arg[2] == '=') {
                fprintf(stderr, "metastep %s: unexpected argument '%s' (try --help)\n", cmd, arg);
                return 2;
            }
            const char *eq = strchr(arg, '=');
            size_t klen = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
            if (!extra) {
                fprintf(stderr, "metastep %s: unknown option '--%.*s' (try --help)\n", cmd,
                        (int)klen, arg + 2);
                return 2;
            }
            const char *value = eq ? eq + 1 : NULL;
            optind = cur + 1;
            if (!eq && cur + 1 < argc && strncmp(argv[cur + 1], "--", 2) != 0)
                value = argv[++optind - 1];
            if (!extra(user, arg + 2, klen, value))
                return 2;
            continue;
        }
        if (c == '?') {
            fprintf(stderr, "metastep %s: unknown option '-%c' (try --help)\n", cmd, optopt);
            return 2;
        }
        if (c == ':') {
            char name[128];
            const char *eq = strchr(arg, '=');
            snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - arg) : (int)strlen(arg), arg);
            fprintf(stderr, "metastep %s: missing value for '%s' (try --help)\n", cmd, name);
            return 2;
        }
        if (!fn(user, c, optarg)) {
            if (index < 0) {
                fprintf(stderr, "metastep %s: unknown option '-%c' (try --help)\n", cmd, c);
                return 2;
            }
            fprintf(stderr, "metastep %s: invalid value '%s' for --%s (try --help)\n", cmd,
                    optarg ? optarg : "", index >= 0 ? opts[index].name : "?");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "metastep %s: unexpected argument '%s' (try --help)\n", cmd, argv[optind]);
        return 2;
    }
    return 0;
}

/* The process with this id no longer exists. */
static bool pid_dead(long pid)
{
    return pid > 0 && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int util_remove_stale_temporaries(const char *dirpath)
{
    DIR *d = opendir(dirpath);
    if (!d)
        return 0;
    int removed = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        const char *t = strstr(e->d_name, ".tmp-");
        char *end;
        if (!t)
            continue;
        long pid = strtol(t + 5, &end, 10);
        if (end == t + 5 || *end != '-' || !end[1])
            continue;
        const char *p = end + 1;
        while (*p >= '0' && *p <= '9')
            p++;
        if (*p || !pid_dead(pid))
            continue;
        snprintf(path, sizeof path, "%s/%s", dirpath, e->d_name);
        if (unlink(path) == 0)
            removed++;
    }
    closedir(d);
    return removed;
}

bool util_write_atomic(const char *path, const char *text, size_t len)
{
    static unsigned counter;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%u", path, (long)getpid(), counter++);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd < 0)
        return false;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int err = w < 0 ? errno : ENOSPC;
            close(fd);
            unlink(tmp);
            errno = err;
            return false;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        errno = err;
        return false;
    }
    return true;
}

void util_json_number(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}
