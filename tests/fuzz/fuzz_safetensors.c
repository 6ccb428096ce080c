/* libFuzzer target for the safetensors loader (core/container/safetensors.c).
 *
 * Not part of the meson build (CI builds with gcc).  Build and run by hand
 * from the repository root with Debian's clang 14:
 *
 *   clang -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L \
 *     -DMS_BUILDING_CORE -DMS_NO_ALLOC_CACHE \
 *     -DMS_BUILD_BACKEND_DIR='"build/backends"' -DMS_INSTALL_BACKEND_DIR='"/nonexistent"' \
 *     -DMS_BUILD_PLUGIN_DIR='"build/plugins"' \
 *     -Iinclude -Icore $(find core -name '*.c') tests/fuzz/fuzz_safetensors.c \
 *     -ljansson -lm -ldl -lpthread -o /tmp/fuzz_safetensors
 *   mkdir -p /tmp/st-corpus
 *   /tmp/fuzz_safetensors -max_total_time=300 -max_len=4096 \
 *     -dict=tests/fuzz/safetensors.dict -artifact_prefix=tests/fuzz/regressions/ \
 *     /tmp/st-corpus tests/fuzz/corpus
 *
 * The load path needs no backend kernel (tensors are made with
 * ms__tensor_tmp and filled by memcpy), so no METASTEP_BACKEND_PATH is
 * needed.  Crashers land in tests/fuzz/regressions/; test_safetensors loads
 * every file there (and in corpus/) and expects an error or a container. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container/container.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one(const uint8_t *data, size_t size)
{
    int64_t live = ms_live_tensors();
    ms_clear_error();
    ms_container *c = (ms_container *)1;
    ms_status st = ms__container_load_mem(data, size, "fuzz", &c);
    const char *msg;
    ms_status rec = ms_last_error(&msg);
    if (st == MS_OK) {
        if (!c || rec != MS_OK)
            abort();
        /* Everything loaded must fit in the input. */
        uint64_t bytes = 0;
        for (int i = 0; i < ms_container_size(c); i++) {
            const ms_tensor *t = ms_container_at(c, i);
            if (!t || !ms_container_key(c, i))
                abort();
            bytes += (uint64_t)ms_tensor_numel(t) * ms_dtype_size(ms_tensor_dtype(t));
        }
        if (bytes > size)
            abort();
        ms_container_release(c);
    } else {
        if (c != NULL || rec != st || (st != MS_ERR_FORMAT && st != MS_ERR_NOMEM) ||
            !strstr(msg, "fuzz"))
            abort();
    }
    if (ms_live_tensors() != live)
        abort();
    ms_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    /* jansson is not instrumented, so most mutations of the JSON would die
     * at the header-length check: also try the input with its length field
     * set to end just after the last '}', so the JSON and the offset checks
     * get exercised too. */
    if (size < 9)
        return 0;
    size_t end = size;
    while (end > 8 && data[end - 1] != '}')
        end--;
    uint64_t hlen = end - 8, old = 0;
    for (int i = 7; i >= 0; i--)
        old = (old << 8) | data[i];
    if (end == 8 || hlen == old)
        return 0;
    uint8_t *copy = malloc(size);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    for (int i = 0; i < 8; i++)
        copy[i] = (uint8_t)(hlen >> (8 * i));
    one(copy, size);
    free(copy);
    return 0;
}
