// Chained content hash of full KV blocks: the hash of block i covers its tokens and the hash
// of block i-1, so equal hashes mean equal prefixes (up to 64-bit collisions; a hit also
// compares the block's own tokens).
#pragma once

#include <cstddef>
#include <cstdint>

#include "types.h"

namespace editx::sched {

// Parent hash of block 0.
constexpr uint64_t kRootHash = 0x45444954582d5254ULL;  // "EDITX-RT"

// splitmix64 finaliser: cheap, and every input bit affects every output bit.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint64_t block_hash(uint64_t parent, const TokenId* tokens, int32_t n) {
  uint64_t h = mix64(parent);
  for (int32_t i = 0; i < n; ++i) h = mix64(h ^ static_cast<uint64_t>(tokens[i]));
  return h;
}

// Identity hasher for maps keyed by block hashes (already well mixed).
struct PrehashedKey {
  std::size_t operator()(uint64_t h) const { return static_cast<std::size_t>(h); }
};

}  // namespace editx::sched
