/* Lets atheris's bundled libFuzzer see coverage when gcc's ASan runtime is preloaded (the
 * sanitizer build); tests/test_fuzz.py compiles it and preloads it ahead of libasan.
 *
 * gcc's libasan defines every __sanitizer_cov_* callback as a weak no-op. Preloaded, it
 * comes first in the process's global symbol scope, so when atheris (whose libFuzzer lives
 * in core_with_libfuzzer.so, loaded later and locally) registers its Python coverage
 * counters, the call binds to libasan's no-op: libFuzzer sees no coverage and never grows
 * its corpus. clang's asan_with_fuzzer.so, which atheris ships for this, cannot be used:
 * the extension is built by gcc and needs gcc's runtime, and two ASan runtimes abort.
 * Here each callback is defined strongly and forwards to libFuzzer's own definition in
 * the library named by $FASTCACHE_LIBFUZZER_SO, looked up once it is loaded.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void* libfuzzer_symbol(const char* name) {
    static void* handle;
    if (!handle) {
        const char* path = getenv("FASTCACHE_LIBFUZZER_SO");
        if (path) handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (!handle) {
            fprintf(stderr, "fuzz_sancov_shim: %s called before libFuzzer "
                            "($FASTCACHE_LIBFUZZER_SO) is loaded\n", name);
            abort();
        }
    }
    void* f = dlsym(handle, name);
    if (!f) {
        fprintf(stderr, "fuzz_sancov_shim: libFuzzer has no %s\n", name);
        abort();
    }
    return f;
}

#define FORWARD(name, params, args)                                   \
    void name params {                                                \
        static void(*target) params;                                  \
        if (!target) target = (void(*) params)libfuzzer_symbol(#name); \
        target args;                                                  \
    }

FORWARD(__sanitizer_cov_8bit_counters_init, (uint8_t* b, uint8_t* e), (b, e))
FORWARD(__sanitizer_cov_pcs_init, (const uintptr_t* b, const uintptr_t* e), (b, e))
FORWARD(__sanitizer_cov_trace_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp1, (uint8_t a, uint8_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp2, (uint16_t a, uint16_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp4, (uint32_t a, uint32_t b), (a, b))
FORWARD(__sanitizer_cov_trace_const_cmp8, (uint64_t a, uint64_t b), (a, b))
FORWARD(__sanitizer_cov_trace_switch, (uint64_t v, uint64_t* cases), (v, cases))
FORWARD(__sanitizer_cov_trace_div4, (uint32_t v), (v))
FORWARD(__sanitizer_cov_trace_div8, (uint64_t v), (v))
FORWARD(__sanitizer_cov_trace_gep, (uintptr_t i), (i))
FORWARD(__sanitizer_cov_trace_pc_indir, (uintptr_t callee), (callee))
