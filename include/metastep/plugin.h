/* metastep — the header every runtime plugin table starts with.
 *
 * Backends (backend.h) and task plugins share one loader in core: it finds the
 * shared object, calls its entry symbol, and checks this header (ABI major,
 * table size) before anything else is read.  A table grows only at its end;
 * `size` is sizeof the table the plugin was compiled against.
 */
#ifndef METASTEP_PLUGIN_H
#define METASTEP_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks a plugin's entry function as exported (plugins are built with
 * -fvisibility=hidden so that nothing else leaks). */
#define MS_PLUGIN_EXPORT __attribute__((visibility("default")))

typedef struct ms_plugin_header {
    uint32_t abi_major;      /* must equal the frontend's major for this plugin kind */
    uint32_t abi_minor;      /* newer minors only append slots */
    size_t size;             /* sizeof the whole table as the plugin was built */
    const char *name;        /* short name, e.g. "openblas"; non-NULL */
    const char *description; /* one human-readable line (library, version, ISA); non-NULL */
} ms_plugin_header;

#ifdef __cplusplus
}
#endif
#endif
