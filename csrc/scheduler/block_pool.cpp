#include "block_pool.h"

#include <algorithm>
#include <string>

#include "errors.h"

namespace editx::sched {

BlockPool::BlockPool(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size),
      meta_(num_blocks),
      tokens_(static_cast<size_t>(num_blocks) * block_size, 0),
      free_(num_blocks) {
  for (BlockId id = 0; id < num_blocks; ++id) free_.push_back(id);
  // Each index holds at most one entry per block: sizing them now avoids rehashing mid-step.
  by_hash_.reserve(static_cast<size_t>(num_blocks));
  by_parent_.reserve(static_cast<size_t>(num_blocks));
}

BlockId BlockPool::allocate() {
  const BlockId id = free_.pop_front();
  evict(id);
  meta_[id].ref = 1;
  return id;
}

void BlockPool::retain(BlockId id) {
  if (meta_[id].ref == 0) free_.remove(id);
  ++meta_[id].ref;
}

void BlockPool::release(BlockId id) {
  if (--meta_[id].ref == 0) free_.push_back(id);
}

void BlockPool::evict(BlockId id) {
  Meta& m = meta_[id];
  if (m.full_indexed) by_hash_.erase(m.hash);
  if (m.parent_indexed) by_parent_.erase(m.parent);
  m = Meta{};
}

BlockId BlockPool::find_full(uint64_t hash, const TokenId* tokens) const {
  const auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return -1;
  const TokenId* held = content(it->second);
  return std::equal(held, held + block_size_, tokens) ? it->second : -1;
}

BlockId BlockPool::find_by_parent(uint64_t parent) const {
  const auto it = by_parent_.find(parent);
  return it == by_parent_.end() ? -1 : it->second;
}

void BlockPool::record(BlockId id, uint64_t parent, const TokenId* tokens, int32_t n) {
  Meta& m = meta_[id];
  std::copy(tokens, tokens + n, &tokens_[static_cast<size_t>(id) * block_size_]);
  m.parent = parent;
  m.valid = n;
}

void BlockPool::index_full(BlockId id, uint64_t hash) {
  Meta& m = meta_[id];
  if (m.full_indexed || by_hash_.count(hash) != 0) return;
  by_hash_.emplace(hash, id);
  m.hash = hash;
  m.full_indexed = true;
}

void BlockPool::index_by_parent(BlockId id) {
  Meta& m = meta_[id];
  auto [it, inserted] = by_parent_.try_emplace(m.parent, id);
  if (!inserted && it->second != id) {
    meta_[it->second].parent_indexed = false;  // the older block is no longer findable
    it->second = id;
  }
  m.parent_indexed = true;
}

void BlockPool::check(const std::vector<int32_t>& expected_refs) const {
  int32_t unreferenced = 0;
  for (BlockId id = 0; id < num_blocks(); ++id) {
    const Meta& m = meta_[id];
    const std::string name = "block " + std::to_string(id);
    invariant(m.ref == expected_refs[id], name + ": ref count " + std::to_string(m.ref) + " but " +
                                             std::to_string(expected_refs[id]) + " block tables hold it");
    invariant(free_.contains(id) == (m.ref == 0), name + ": on the free list iff unreferenced");
    unreferenced += m.ref == 0;
    invariant(!m.full_indexed || m.valid == block_size_, name + ": indexed by hash but not full");
    invariant(!m.full_indexed || find_full(m.hash, content(id)) == id, name + ": hash index disagrees");
    invariant(!m.parent_indexed || find_by_parent(m.parent) == id, name + ": parent index disagrees");
  }
  invariant(unreferenced == free_.size(), "free list size differs from the unreferenced block count");
  int32_t walked = 0;
  for (BlockId id = free_.front(); id >= 0; id = free_.next(id)) ++walked;
  invariant(walked == free_.size(), "free list links are broken");
  for (const auto& [hash, id] : by_hash_) {
    invariant(meta_[id].full_indexed && meta_[id].hash == hash, "stale hash entry");
  }
  for (const auto& [parent, id] : by_parent_) {
    invariant(meta_[id].parent_indexed && meta_[id].parent == parent && meta_[id].valid > 0, "stale parent entry");
  }
}

}  // namespace editx::sched
