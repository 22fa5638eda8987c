/* XXH3-64 and XXH32 inlined from the system's header-only libxxhash (Debian libxxhash-dev).
   Inlining keeps the hot checksum loops free of a shared-library call and of the GIL. */
#ifndef IGGY_XXHASH_H
#define IGGY_XXHASH_H
#define XXH_INLINE_ALL
#include <xxhash.h>
#endif
