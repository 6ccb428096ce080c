/* Deliberately broken backends for tests/test_loader.c: one source, one
 * defect per build (selected by a BROKEN_* define in meson.build). */
#include <stddef.h>

#include "metastep/backend.h"

/* both defined in every build; the table uses one */
__attribute__((unused)) static ms_status ok_init(void) { return MS_OK; }
__attribute__((unused)) static ms_status failing_init(void) { return MS_ERR_INTERNAL; }

static const ms_backend broken_backend = {
    .header = {
#if defined(BROKEN_WRONGMAJOR)
        .abi_major = MS_BACKEND_ABI_MAJOR + 1,
#else
        .abi_major = MS_BACKEND_ABI_MAJOR,
#endif
        .abi_minor = MS_BACKEND_ABI_MINOR,
#if defined(BROKEN_SHORT)
        .size = MS_BACKEND_MIN_SIZE - sizeof(void *),
#else
        .size = sizeof(ms_backend),
#endif
#if defined(BROKEN_NULLNAME)
        .name = NULL,
#else
        .name = BROKEN_NAME,
#endif
        .description = "a deliberately broken backend for the loader tests",
    },
#if defined(BROKEN_FAILINIT)
    .init = failing_init,
#else
    .init = ok_init,
#endif
};

#if defined(BROKEN_NOENTRY)
/* Exported, but under the wrong name: the loader must not find an entry. */
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry_v0(void);
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry_v0(void) { return &broken_backend; }
#else
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void);
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void) { return &broken_backend; }
#endif
