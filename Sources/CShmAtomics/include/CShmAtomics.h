// CShmAtomics: C11 atomics on plain pointers into shared memory.
//
// Swift cannot import `_Atomic` types, and the words we synchronise on live in memory mapped from
// a memfd, addressed by raw pointers. These `static inline` functions use the compiler's
// `__atomic` builtins, which operate on ordinary `uint64_t *` / `uint32_t *`; in release builds
// they inline completely (x86-64: acquire/release loads and stores are plain moves, fetch-add is
// `lock xadd`, compare-exchange is `lock cmpxchg`, the seq_cst fence is `mfence`).
//
// Naming: CShmAtomics_<width>_<operation>_<ordering>. Every caller names its ordering explicitly
// and names, in a comment, the operation that pairs with it in the other thread or process.
#ifndef CSHMATOMICS_H
#define CSHMATOMICS_H

#include <stdbool.h>
#include <stdint.h>

#define CSHMATOMICS_INLINE static inline __attribute__((always_inline))

// Generates loads, stores, read-modify-writes and compare-exchange for one width.
#define CSHMATOMICS_DEFINE(W, T)                                                                   \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_load_relaxed(const T *p) {                              \
        return __atomic_load_n(p, __ATOMIC_RELAXED);                                               \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_load_acquire(const T *p) {                              \
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);                                               \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_load_seq_cst(const T *p) {                              \
        return __atomic_load_n(p, __ATOMIC_SEQ_CST);                                               \
    }                                                                                              \
    CSHMATOMICS_INLINE void CShmAtomics_##W##_store_relaxed(T *p, T v) {                           \
        __atomic_store_n(p, v, __ATOMIC_RELAXED);                                                  \
    }                                                                                              \
    CSHMATOMICS_INLINE void CShmAtomics_##W##_store_release(T *p, T v) {                          \
        __atomic_store_n(p, v, __ATOMIC_RELEASE);                                                  \
    }                                                                                              \
    CSHMATOMICS_INLINE void CShmAtomics_##W##_store_seq_cst(T *p, T v) {                           \
        __atomic_store_n(p, v, __ATOMIC_SEQ_CST);                                                  \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_fetch_add_relaxed(T *p, T v) {                          \
        return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);                                         \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_fetch_add_release(T *p, T v) {                          \
        return __atomic_fetch_add(p, v, __ATOMIC_RELEASE);                                         \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_fetch_add_acq_rel(T *p, T v) {                          \
        return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);                                         \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_fetch_add_seq_cst(T *p, T v) {                          \
        return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);                                         \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_exchange_acq_rel(T *p, T v) {                           \
        return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL);                                        \
    }                                                                                              \
    CSHMATOMICS_INLINE T CShmAtomics_##W##_exchange_seq_cst(T *p, T v) {                           \
        return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);                                        \
    }                                                                                              \
    /* Strong compare-exchange. On failure `*expected` receives the current value (acquire). */    \
    CSHMATOMICS_INLINE bool CShmAtomics_##W##_compare_exchange_acq_rel(T *p, T *expected, T desired) { \
        return __atomic_compare_exchange_n(p, expected, desired, false, __ATOMIC_ACQ_REL,          \
                                           __ATOMIC_ACQUIRE);                                      \
    }                                                                                              \
    CSHMATOMICS_INLINE bool CShmAtomics_##W##_compare_exchange_seq_cst(T *p, T *expected, T desired) { \
        return __atomic_compare_exchange_n(p, expected, desired, false, __ATOMIC_SEQ_CST,          \
                                           __ATOMIC_SEQ_CST);                                      \
    }

CSHMATOMICS_DEFINE(u64, uint64_t)
CSHMATOMICS_DEFINE(u32, uint32_t)

#undef CSHMATOMICS_DEFINE

/// Acquire fence: later loads and stores are not reordered before earlier loads.
CSHMATOMICS_INLINE void CShmAtomics_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

/// Release fence: earlier loads and stores are not reordered after later stores.
CSHMATOMICS_INLINE void CShmAtomics_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

/// Full fence. The only fence that orders an earlier store before a later load (store-buffering,
/// Dekker): on x86-64 it is `mfence`, the one reordering TSO allows.
CSHMATOMICS_INLINE void CShmAtomics_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/// Compiler-only barrier: no instruction, but the compiler may not move memory accesses across it.
CSHMATOMICS_INLINE void CShmAtomics_compiler_barrier(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

/// Copies `count` bytes out of shared memory that the producer may be overwriting at the same
/// moment (a lossy reader's copy-then-validate): relaxed atomic 8-byte loads, so that the race is a
/// deliberate, well-defined one (ThreadSanitizer sees atomic loads, not a plain racing read), and
/// the caller validates afterwards (an acquire fence, then the producer's tail intent). `source` is
/// 8-byte aligned and `count` is rounded up to whole words: the caller guarantees that the rounded
/// range lies inside the record (records are padded to at least 8 bytes) and that `destination`
/// holds it.
CSHMATOMICS_INLINE void CShmAtomics_copy_racing(void *destination, const void *source, uint64_t count) {
    const uint64_t *from = (const uint64_t *)source;
    uint64_t *to = (uint64_t *)destination;
    uint64_t words = (count + 7) / 8;
    for (uint64_t index = 0; index < words; index++) {
        to[index] = __atomic_load_n(from + index, __ATOMIC_RELAXED);
    }
}

/// Prefetch hints (no effect on correctness): bring the line at `address` towards this core's
/// cache, for reading or for writing. Swift has no prefetch intrinsic.
CSHMATOMICS_INLINE void CShmAtomics_prefetch_read(const void *address) { __builtin_prefetch(address, 0, 3); }
CSHMATOMICS_INLINE void CShmAtomics_prefetch_write(const void *address) { __builtin_prefetch(address, 1, 3); }

/// Spin-wait hint (`pause` on x86-64, `yield` on AArch64): lets the sibling hyper-thread run and
/// avoids the memory-order machine clear when the awaited store arrives.
CSHMATOMICS_INLINE void CShmAtomics_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
#endif
}

#endif  // CSHMATOMICS_H
