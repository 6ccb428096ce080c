/* The one loader for every kind of runtime plugin (backends, task plugins):
 * discovery on a search path, dlopen, the entry symbol, and the header
 * checks, each refusal with its own message naming the file. */
#define _GNU_SOURCE /* dladdr */
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"

typedef struct search_dirs {
    char *buf;          /* the dirs, NUL-separated, owned */
    const char **dir;   /* n entries pointing into buf, owned */
    int n;
} search_dirs;

static void dirs_free(search_dirs *d)
{
    free(d->buf);
    free(d->dir);
}

static int build_tree_state; /* 0 unknown, 1 yes, 2 no */
static pthread_once_t build_tree_once = PTHREAD_ONCE_INIT;

static void check_build_tree(void)
{
    Dl_info info;
    char *self = NULL, *lib_dir = NULL, *built = NULL;
    if (dladdr((void *)&ms__plugin_search_path, &info) && info.dli_fname &&
        strchr(info.dli_fname, '/')) {
        self = realpath(info.dli_fname, NULL);
        char *slash = self ? strrchr(self, '/') : NULL;
        if (slash)
            *slash = '\0';
        lib_dir = self;
    }
    built = realpath(MS_BUILD_LIB_DIR, NULL);
    build_tree_state = lib_dir && built && strcmp(lib_dir, built) == 0 ? 1 : 2;
    free(self);
    free(built);
}

/* Whether this libmetastep is the one in its own build tree (an uninstalled
 * run: tests, benchmarks, the demo), which alone may search the build tree.
 * An installed library never does: a build tree is often a temporary
 * directory that anyone could recreate with planted plugins. */
static bool from_build_tree(void)
{
    pthread_once(&build_tree_once, check_build_tree);
    return build_tree_state == 1;
}

/* The search path: $path_env's entries (any number), then the build tree
 * (uninstalled runs only), then the install directory.  On allocation
 * failure the list is empty. */
static void dirs_collect(const ms_plugin_kind *k, search_dirs *d)
{
    const char *env = getenv(k->path_env);
    const char *build = from_build_tree() ? k->build_dir : "";
    size_t len = (env ? strlen(env) : 0) + strlen(build) + strlen(k->install_dir) + 3;
    d->n = 0;
    d->dir = NULL;
    d->buf = malloc(len);
    if (!d->buf)
        return;
    snprintf(d->buf, len, "%s:%s:%s", env ? env : "", build, k->install_dir);
    size_t cap = 1;
    for (const char *p = d->buf; *p; p++)
        cap += *p == ':';
    d->dir = malloc(cap * sizeof *d->dir);
    if (!d->dir) {
        free(d->buf);
        d->buf = NULL;
        return;
    }
    for (char *p = d->buf, *q; p; p = q) {
        q = strchr(p, ':');
        if (q)
            *q++ = '\0';
        if (*p)
            d->dir[d->n++] = p;
    }
}

size_t ms__plugin_search_path(const ms_plugin_kind *k, char *buf, size_t cap)
{
    search_dirs d;
    dirs_collect(k, &d);
    size_t n = 0;
    if (cap)
        buf[0] = '\0';
    for (int i = 0; i < d.n; i++) {
        int w = snprintf(n < cap ? buf + n : NULL, n < cap ? cap - n : 0, "%s%s", i ? ":" : "",
                         d.dir[i]);
        n += (size_t)w;
    }
    dirs_free(&d);
    return n;
}

/* name of a plugin file "libmetastep-backend-NAME.so" -> NAME, or NULL */
static bool file_plugin_name(const ms_plugin_kind *k, const char *file, char *name, size_t cap)
{
    size_t pl = strlen(k->prefix), fl = strlen(file);
    if (fl <= pl + 3 || strncmp(file, k->prefix, pl) != 0 || strcmp(file + fl - 3, ".so") != 0)
        return false;
    size_t nl = fl - pl - 3;
    if (nl + 1 > cap)
        return false;
    memcpy(name, file + pl, nl);
    name[nl] = '\0';
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int ms__plugin_list(const ms_plugin_kind *k,
                    void (*fn)(const char *name, const char *path, void *user), void *user)
{
    search_dirs d;
    dirs_collect(k, &d);
    char **seen = NULL; /* names listed so far: the first directory wins */
    int nseen = 0, capseen = 0;
    for (int i = 0; i < d.n; i++) {
        DIR *dir = opendir(d.dir[i]);
        if (!dir)
            continue;
        /* the plugin names of this directory, sorted so that the listing
         * does not depend on readdir's order */
        char **names = NULL;
        size_t nnames = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            char name[256];
            if (!file_plugin_name(k, e->d_name, name, sizeof name))
                continue;
            if (nnames == cap) {
                size_t nc = cap ? cap * 2 : 16;
                char **nn = realloc(names, nc * sizeof *nn);
                if (!nn)
                    break;
                names = nn;
                cap = nc;
            }
            if (!(names[nnames] = strdup(name)))
                break;
            nnames++;
        }
        closedir(dir);
        if (nnames)
            qsort(names, nnames, sizeof *names, cmp_str);
        for (size_t f = 0; f < nnames; f++) {
            bool dup = false;
            for (int j = 0; j < nseen; j++)
                dup = dup || strcmp(seen[j], names[f]) == 0;
            if (!dup && nseen == capseen) {
                int nc = capseen ? capseen * 2 : 16;
                char **ns = realloc(seen, (size_t)nc * sizeof *ns);
                if (ns) {
                    seen = ns;
                    capseen = nc;
                }
            }
            if (!dup && nseen < capseen) {
                seen[nseen++] = names[f];
                if (fn) {
                    size_t len = strlen(d.dir[i]) + strlen(k->prefix) + strlen(names[f]) + 5;
                    char *path = malloc(len);
                    if (path) {
                        snprintf(path, len, "%s/%s%s.so", d.dir[i], k->prefix, names[f]);
                        fn(names[f], path, user);
                        free(path);
                    }
                }
            } else {
                free(names[f]);
            }
        }
        free(names);
    }
    for (int j = 0; j < nseen; j++)
        free(seen[j]);
    free(seen);
    dirs_free(&d);
    return nseen;
}

/* "a, b in DIR1; c in DIR2": the backends found, grouped by directory (the
 * message must stay short enough to keep the directories searched). */
typedef struct found_list {
    char text[2048];
    size_t n;
    char dir[1024];
} found_list;

static void found_append(found_list *f, const char *fmt, const char *a, const char *b)
{
    if (f->n < sizeof f->text) {
        int w = snprintf(f->text + f->n, sizeof f->text - f->n, fmt, a, b);
        f->n = w < 0 ? f->n : f->n + (size_t)w;
    }
}

static void add_found(const char *name, const char *path, void *user)
{
    found_list *f = user;
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path) : 0;
    if (f->n && strlen(f->dir) == dl && strncmp(f->dir, path, dl) == 0) {
        found_append(f, "%s%s", ", ", name);
        return;
    }
    if (f->n)
        found_append(f, " in %s%s", f->dir, "; ");
    found_append(f, "%s%s", name, "");
    snprintf(f->dir, sizeof f->dir, "%.*s", (int)dl, path);
}

static bool valid_name(const char *name)
{
    if (!*name || strlen(name) > 48)
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
            return false;
    return true;
}

static char *resolve(const ms_plugin_kind *k, const char *name)
{
    if (strchr(name, '/'))
        return strdup(name);
    if (!valid_name(name)) {
        ms__fail(MS_ERR_BACKEND, "%s '%s': not a valid name (1 to 48 letters, digits, '_', '-' "
                 "and '.'; give a path containing '/' to load a file)", k->kind, name);
        return NULL;
    }
    search_dirs d;
    dirs_collect(k, &d);
    char *path = NULL;
    for (int i = 0; i < d.n && !path; i++) {
        size_t len = strlen(d.dir[i]) + strlen(k->prefix) + strlen(name) + 5;
        char *p = malloc(len);
        if (!p)
            break;
        snprintf(p, len, "%s/%s%s.so", d.dir[i], k->prefix, name);
        if (access(p, F_OK) == 0)
            path = p;
        else
            free(p);
    }
    dirs_free(&d);
    if (!path) {
        found_list f = {.n = 0};
        ms__plugin_list(k, add_found, &f);
        if (f.n)
            found_append(&f, " in %s%s", f.dir, "");
        char dirs[2048];
        ms__plugin_search_path(k, dirs, sizeof dirs);
        ms__fail(MS_ERR_BACKEND, "unknown %s '%s' (no %s%s.so): found %s; searched %s", k->kind,
                 name, k->prefix, name, f.n ? f.text : "none", dirs);
    }
    return path;
}

ms_status ms__plugin_open(const ms_plugin_kind *k, const char *name, void **handle,
                          const ms_plugin_header **table, char **path_out)
{
    if (!name)
        return ms__fail(MS_ERR_NULL_ARG, "loading a %s: name is NULL", k->kind);
    char *path = resolve(k, name);
    if (!path)
        return MS_ERR_BACKEND;
    dlerror();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        ms__fail(MS_ERR_BACKEND, "%s '%s': dlopen failed: %s", k->kind, path, e ? e : "unknown");
        free(path);
        return MS_ERR_BACKEND;
    }
    ms_status st = MS_ERR_BACKEND;
    void *sym = dlsym(h, k->entry_symbol);
    if (!sym) {
        ms__fail(st, "%s '%s': no entry symbol %s (is it a metastep %s?)", k->kind, path,
                 k->entry_symbol, k->kind);
        goto refuse;
    }
    const ms_plugin_header *(*entry)(void);
    *(void **)&entry = sym;
    const ms_plugin_header *t = entry();
    if (!t) {
        ms__fail(st, "%s '%s': %s returned NULL", k->kind, path, k->entry_symbol);
        goto refuse;
    }
    if (t->abi_major != k->abi_major) {
        ms__fail(st, "%s '%s': built for %s ABI %u.%u, but this metastep speaks ABI %u.x",
                 k->kind, path, k->kind, t->abi_major, t->abi_minor, k->abi_major);
        goto refuse;
    }
    if (t->size < k->min_size) {
        ms__fail(st, "%s '%s': short table (%zu bytes; ABI %u needs at least %zu)", k->kind, path,
                 t->size, k->abi_major, k->min_size);
        goto refuse;
    }
    if (!t->name || !t->description) {
        ms__fail(st, "%s '%s': the table's name or description is NULL", k->kind, path);
        goto refuse;
    }
    *handle = h;
    *table = t;
    *path_out = path;
    return MS_OK;
refuse:
    dlclose(h);
    free(path);
    return st;
}
