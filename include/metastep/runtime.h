/* metastep — choosing the compute backend at run time.
 *
 * Backends are shared objects found by name: metastep_set_backend("openblas")
 * looks for libmetastep-backend-openblas.so in, in order, the directories of
 * METASTEP_BACKEND_PATH (colon-separated, any number of entries), the build
 * tree (only for a library running uninstalled from it), and the install
 * libdir's metastep/ folder.  A name containing '/' is a path to the .so.
 * The active backend is the top of a process-wide stack, like Ivy's
 * set_backend/unset_backend; when the stack is empty the default is the
 * backend named by METASTEP_BACKEND, or "ref" when that is unset.
 * Loaded backends stay loaded until process exit.
 */
#ifndef METASTEP_RUNTIME_H
#define METASTEP_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metastep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Load (once) and push a backend.  On failure nothing is pushed and the
 * status is MS_ERR_BACKEND, with a message naming the file and the reason:
 * unknown name (listing the backends found and every directory searched),
 * dlopen failure (dlerror's text), missing entry symbol, wrong ABI major,
 * short table, NULL name/description, or init failure. */
ms_status metastep_set_backend(const char *name);

/* Pop the stack.  MS_ERR_INVALID_ARG when it is empty (the default stays). */
ms_status metastep_unset_backend(void);

/* A backend for the calling thread only, overriding the process-wide stack
 * on this thread until the matching metastep_unset_thread_backend (a
 * per-thread stack, nestable up to 64 deep).  Other threads keep the
 * process-wide backend, so threads can each compute on their own backend at
 * the same time.  Errors as metastep_set_backend; MS_ERR_INVALID_ARG when
 * this thread's stack is full.  A thread should pop what it pushed before it
 * exits. */
ms_status metastep_set_thread_backend(const char *name);

/* Pop this thread's override stack.  MS_ERR_INVALID_ARG when it is empty. */
ms_status metastep_unset_thread_backend(void);

/* The threads each kernel call of the calling thread's active backend may use
 * internally (ABI 1.2 set_num_threads: OpenBLAS's threads, oneDNN's OpenMP
 * threads): n >= 1 sets it for calls from this thread from now on (OpenBLAS's
 * setting is process-wide, so there for every thread); n <= 0 only asks.
 * Returns the count before the call, or 0 when the backend does not thread
 * internally (then nothing is set).  The meta steps' worker pool sets 1 while
 * tasks run on several threads and restores the count after; `metastep
 * train --threads N` sets N, so that tasks x kernel threads stay within N. */
int metastep_set_backend_threads(int n);

/* Name of the active backend on this thread: the top of its own override
 * stack if it has one, else the process-wide stack's ("ref" by default); NULL with the error set if
 * the default named by METASTEP_BACKEND cannot be loaded.  The string is owned
 * by the backend and lives until exit. */
const char *metastep_current_backend(void);

/* Description of a loaded backend by name; NULL if not loaded. */
const char *metastep_backend_description(const char *name);

/* Discover backends: calls fn(name, path, user) once per backend file found on
 * the search path (first directory wins for duplicate names).  Returns the
 * number found.  Files are not loaded. */
int metastep_list_backends(void (*fn)(const char *name, const char *path, void *user),
                           void *user);

/* The directories searched, in order, as one colon-separated string in a
 * buffer the caller provides; returns the length it needs (snprintf-like). */
size_t metastep_backend_search_path(char *buf, size_t cap);

/* How many calls of each kernel family the active backend has handed to the
 * reference backend ("fallbacks") since load, summed over families when
 * kernel < 0.  Kernel families are numbered as ms_kernel in backend.h. */
uint64_t metastep_fallback_count(const char *backend, int kernel);

/* Load a backend (once) without pushing it, and give its kernel table, for
 * tools such as the conformance suite that call kernels directly.  The
 * table lives until exit.  Errors as metastep_set_backend. */
struct ms_backend;
ms_status metastep_load_backend(const char *name, const struct ms_backend **table);

#ifdef __cplusplus
}
#endif
#endif
