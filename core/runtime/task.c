/* Task plugins, loaded by the same loader as backends. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "metastep/task.h"

#define MS_MAX_TASKS 32

static const ms_plugin_kind task_kind = {
    .kind = "task plugin",
    .prefix = "libmetastep-task-",
    .entry_symbol = METASTEP_TASK_ENTRY_SYMBOL,
    .path_env = "METASTEP_PLUGIN_PATH",
    .build_dir = MS_BUILD_PLUGIN_DIR,
    .install_dir = MS_INSTALL_BACKEND_DIR,
    .abi_major = METASTEP_TASK_ABI_MAJOR,
    .min_size = METASTEP_TASK_MIN_SIZE,
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const metastep_task *t;
    char *path;
} tasks[MS_MAX_TASKS];
static int ntasks;

static void unload(void)
{
    for (int i = 0; i < ntasks; i++)
        free(tasks[i].path);
    ntasks = 0;
}

ms_status metastep_load_task(const char *name, const metastep_task **task)
{
    if (!name || !task)
        return ms__fail(MS_ERR_NULL_ARG, "metastep_load_task: %s is NULL", name ? "task" : "name");
    pthread_mutex_lock(&lock);
    ms_status st = MS_OK;
    *task = NULL;
    for (int i = 0; i < ntasks && !*task; i++)
        if (strcmp(tasks[i].t->header.name, name) == 0 || strcmp(tasks[i].path, name) == 0)
            *task = tasks[i].t;
    if (!*task && ntasks == MS_MAX_TASKS)
        st = ms__fail(MS_ERR_BACKEND, "task plugin '%s': more than %d loaded", name, MS_MAX_TASKS);
    if (!*task && st == MS_OK) {
        void *h;
        const ms_plugin_header *hdr;
        char *path;
        st = ms__plugin_open(&task_kind, name, &h, &hdr, &path);
        if (st == MS_OK) {
            const metastep_task *t = (const metastep_task *)hdr;
            if (!t->init_variables || !t->inner_cost || !t->outer_cost || !t->sample ||
                !t->evaluate) {
                st = ms__fail(MS_ERR_BACKEND, "task plugin '%s': a required slot "
                              "(init_variables, inner_cost, outer_cost, sample, evaluate) is NULL",
                              path);
                free(path);
            } else {
                if (ntasks == 0)
                    atexit(unload);
                tasks[ntasks].t = t;
                tasks[ntasks++].path = path;
                *task = t;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    return st;
}

int metastep_list_tasks(void (*fn)(const char *, const char *, void *), void *user)
{
    return ms__plugin_list(&task_kind, fn, user);
}
