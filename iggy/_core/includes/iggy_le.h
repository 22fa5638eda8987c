/* Little-endian loads and stores at any alignment. The wire and the segment files are
   little-endian; memcpy compiles to a single move on x86-64 and aarch64. */
#ifndef IGGY_LE_H
#define IGGY_LE_H
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "iggy's core assumes a little-endian host"
#endif

static inline uint16_t le_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t le_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t le_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void put_u16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void put_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
#endif
