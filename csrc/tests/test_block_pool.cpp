// BlockPool: reference counts, LRU free list, prefix-cache indexes, eviction, check().
#include <numeric>

#include "check.h"
#include "scheduler/block_pool.h"
#include "scheduler/errors.h"

using namespace editx::sched;

namespace {
std::vector<TokenId> iota_tokens(int n, TokenId first) {
  std::vector<TokenId> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}
}  // namespace

TEST_CASE(allocates_every_block_once_then_reuses_least_recently_freed) {
  BlockPool pool(4, 2);
  std::vector<BlockId> got;
  for (int i = 0; i < 4; ++i) got.push_back(pool.allocate());
  CHECK_EQ(pool.num_free(), 0);
  CHECK((got == std::vector<BlockId>{0, 1, 2, 3}));
  pool.release(2);
  pool.release(0);
  CHECK_EQ(pool.num_free(), 2);
  CHECK_EQ(pool.allocate(), 2);  // freed first, reused first
  CHECK_EQ(pool.allocate(), 0);
}

TEST_CASE(retain_revives_a_free_block_and_release_returns_it_at_the_back) {
  BlockPool pool(3, 2);
  const BlockId a = pool.allocate(), b = pool.allocate();
  pool.release(a);
  pool.release(b);
  CHECK_EQ(pool.num_free(), 3);
  pool.retain(a);  // a prefix hit on a cached free block
  CHECK_EQ(pool.ref(a), 1);
  CHECK_EQ(pool.num_free(), 2);
  pool.retain(a);
  CHECK_EQ(pool.ref(a), 2);
  pool.release(a);
  CHECK_EQ(pool.num_free(), 2);
  pool.release(a);
  CHECK_EQ(pool.num_free(), 3);
  std::vector<int32_t> refs(3, 0);
  pool.check(refs);
}

TEST_CASE(full_blocks_are_found_by_hash_and_content_until_evicted) {
  BlockPool pool(2, 4);
  const auto tokens = iota_tokens(4, 10);
  const BlockId id = pool.allocate();
  const uint64_t h = block_hash(kRootHash, tokens.data(), 4);
  pool.record(id, kRootHash, tokens.data(), 4);
  pool.index_full(id, h);
  CHECK_EQ(pool.find_full(h, tokens.data()), id);
  CHECK_EQ(pool.num_cached(), 1);
  auto other = tokens;
  other[3] = 99;
  CHECK_EQ(pool.find_full(h, other.data()), -1);  // same hash, different content: a miss
  pool.release(id);
  CHECK_EQ(pool.find_full(h, tokens.data()), id);  // freed blocks stay cached
  pool.allocate();                                 // block 1 (never used) goes first
  CHECK_EQ(pool.find_full(h, tokens.data()), id);
  CHECK_EQ(pool.allocate(), id);  // now it is evicted
  CHECK_EQ(pool.find_full(h, tokens.data()), -1);
  CHECK_EQ(pool.num_cached(), 0);
}

TEST_CASE(first_full_block_wins_and_latest_parent_block_wins) {
  BlockPool pool(3, 2);
  const auto tokens = iota_tokens(2, 0);
  const uint64_t h = block_hash(kRootHash, tokens.data(), 2);
  const BlockId a = pool.allocate(), b = pool.allocate();
  for (BlockId id : {a, b}) {
    pool.record(id, kRootHash, tokens.data(), 2);
    pool.index_full(id, h);
    pool.index_by_parent(id);
  }
  CHECK_EQ(pool.find_full(h, tokens.data()), a);
  CHECK_EQ(pool.find_by_parent(kRootHash), b);
  std::vector<int32_t> refs{1, 1, 0};
  pool.check(refs);
  pool.release(b);
  pool.allocate();  // block 2
  CHECK_EQ(pool.allocate(), b);  // evicts b: the parent entry goes, a's hash entry stays
  CHECK_EQ(pool.find_by_parent(kRootHash), -1);
  CHECK_EQ(pool.find_full(h, tokens.data()), a);
}

TEST_CASE(check_reports_wrong_reference_counts) {
  BlockPool pool(2, 2);
  pool.allocate();
  std::vector<int32_t> refs{0, 0};
  CHECK_THROWS(pool.check(refs), InvariantError);
  refs[0] = 1;
  pool.check(refs);
}

TEST_CASE(chained_hash_depends_on_the_parent) {
  const auto tokens = iota_tokens(4, 1);
  CHECK(block_hash(kRootHash, tokens.data(), 4) != block_hash(kRootHash + 1, tokens.data(), 4));
  CHECK_EQ(block_hash(7, tokens.data(), 4), block_hash(7, tokens.data(), 4));
}

int main() { return check::run_all_tests(); }
