// CShmAtomics is header-only (every function is `static inline`); SwiftPM needs one source file
// per C target, and this one pins the assumptions the header makes.
#include "CShmAtomics.h"

_Static_assert(sizeof(uint64_t) == 8 && _Alignof(uint64_t) == 8, "64-bit words must be naturally aligned");
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "64-bit atomics must be lock-free");
_Static_assert(__atomic_always_lock_free(sizeof(uint32_t), 0), "32-bit atomics must be lock-free");
#include "CShmRingLayout.h"
