// Paged KV block manager: a fixed pool of blocks with reference counts, an LRU free list,
// and the prefix-cache index.
//
// Prefix cache: a block whose tokens' KV is known-valid records those tokens. Full blocks
// are indexed by their chained hash (`find_full`); blocks that overlap a prompt are also
// indexed by their parent hash (`find_by_parent`), so a new prompt that diverges inside a
// block can still copy its common part (copy-on-write of the last partial block). A freed
// block keeps its content and index entries until it is allocated again (evicted).
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "block_hash.h"
#include "free_list.h"
#include "types.h"

namespace editx::sched {

class BlockPool {
 public:
  BlockPool(int32_t num_blocks, int32_t block_size);

  int32_t num_blocks() const { return static_cast<int32_t>(meta_.size()); }
  int32_t block_size() const { return block_size_; }
  int32_t num_free() const { return free_.size(); }
  int32_t num_cached() const { return static_cast<int32_t>(by_hash_.size()); }
  int32_t ref(BlockId id) const { return meta_[id].ref; }

  // Takes the least recently freed block (ref 0 -> 1), evicting its cached content.
  // Precondition: num_free() > 0.
  BlockId allocate();
  // One more user; a free (cached) block leaves the free list.
  void retain(BlockId id);
  // One user less; at zero the block joins the back of the free list, content kept.
  void release(BlockId id);

  // Block holding exactly `tokens` (block_size of them) under `hash`, or -1.
  BlockId find_full(uint64_t hash, const TokenId* tokens) const;
  // Latest prompt block recorded right after the prefix whose hash is `parent`, or -1.
  BlockId find_by_parent(uint64_t parent) const;
  const TokenId* content(BlockId id) const { return &tokens_[static_cast<std::size_t>(id) * block_size_]; }
  int32_t valid(BlockId id) const { return meta_[id].valid; }

  // The block's first n positions hold valid KV of `tokens`, after the prefix `parent`.
  void record(BlockId id, uint64_t parent, const TokenId* tokens, int32_t n);
  // Makes a recorded full block findable by `hash` (the first block registered wins).
  void index_full(BlockId id, uint64_t hash);
  // Makes a recorded block findable by its parent hash (the latest block wins).
  void index_by_parent(BlockId id);

  // Throws InvariantError unless ref counts equal `expected_refs` (users per block, counted
  // from the block tables), the free list holds exactly the unreferenced blocks, and the
  // indexes point at blocks whose metadata agrees.
  void check(const std::vector<int32_t>& expected_refs) const;

 private:
  struct Meta {
    int32_t ref = 0;
    int32_t valid = 0;       // recorded positions
    uint64_t hash = 0;       // chained hash (when full_indexed)
    uint64_t parent = 0;     // hash of the prefix before this block (when valid > 0)
    bool full_indexed = false;
    bool parent_indexed = false;
  };

  void evict(BlockId id);

  int32_t block_size_;
  std::vector<Meta> meta_;
  std::vector<TokenId> tokens_;  // [num_blocks * block_size] recorded token ids
  FreeList free_;
  std::unordered_map<uint64_t, BlockId, PrehashedKey> by_hash_;
  std::unordered_map<uint64_t, BlockId, PrehashedKey> by_parent_;
};

}  // namespace editx::sched
