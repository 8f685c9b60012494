// Prefix sharing: full-block hits by chained hash, copy-on-write of the last partial block,
// the last token always computed, shared blocks freed only with their last user, eviction.
#include "check.h"
#include "helpers.h"

using namespace testing_helpers;

namespace {

// A voice prefix of `shared` tokens followed by `own` tokens unique to `salt`.
std::vector<TokenId> voice_prompt(int32_t shared, int32_t own, TokenId salt) {
  std::vector<TokenId> t = prompt(shared, 1000);
  for (int32_t i = 0; i < own; ++i) t.push_back(5000 + salt * 100 + i);
  return t;
}

}  // namespace

TEST_CASE(second_request_shares_full_blocks_and_copies_the_partial_one) {
  Scheduler s(small_config(4, 64));  // budget 16
  const RequestId a = submit(s, voice_prompt(10, 3, 1));  // 13 tokens: blocks [0-3][4-7][8-11][12]
  StepPlan pa = s.step(0.0);
  const auto table_a = table_of(pa, a);
  run_plan(s, pa);
  const RequestId b = submit(s, voice_prompt(10, 5, 2));
  const StepPlan p = s.step(0.0);  // commits a's blocks, then admits b
  const auto table_b = table_of(p, b);
  CHECK_EQ(table_b[0], table_a[0]);
  CHECK_EQ(table_b[1], table_a[1]);
  CHECK(table_b[2] != table_a[2]);
  CHECK_EQ(p.copies.size(), 2u);  // one (src, dst) pair
  CHECK_EQ(p.copies[0], table_a[2]);
  CHECK_EQ(p.copies[1], table_b[2]);
  CHECK_EQ(p.prefill_starts[0], 10);  // 8 from shared blocks + 2 copied
  CHECK_EQ(p.prefill_counts[0], 5);
  const Stats st = s.stats();
  CHECK_EQ(st.prefix_hit_tokens, 10);
  CHECK_EQ(st.copied_blocks, 1);
  s.check_invariants();
}

TEST_CASE(identical_prompt_still_computes_its_last_token) {
  Scheduler s(small_config(4, 64));
  const auto same = prompt(8);
  const RequestId a = submit(s, same);
  run_plan(s, s.step(0.0));
  const RequestId b = submit(s, same);
  const StepPlan p = s.step(0.0);
  // Only block 0 is shared: block 1 holds the last token, which b must compute itself;
  // its first 3 positions are copied from a's block 1.
  CHECK_EQ(p.prefill_req_ids.size(), 1u);
  CHECK_EQ(p.prefill_starts[0], 7);
  CHECK_EQ(p.prefill_counts[0], 1);
  CHECK_EQ(table_of(p, b)[0], s.block_table(a)[0]);
  CHECK_EQ(p.copies.size(), 2u);
}

TEST_CASE(blocks_are_shared_only_after_the_plan_that_computes_them) {
  Scheduler s(small_config(4, 64));
  submit(s, prompt(12));
  submit(s, prompt(12));  // same step: nothing committed yet, so no sharing
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_starts[0], 0);
  CHECK_EQ(p.prefill_counts.size(), 2u);
  CHECK_EQ(p.prefill_starts[1], 0);
  CHECK(p.copies.empty());
}

TEST_CASE(shared_blocks_are_freed_only_when_their_last_user_ends) {
  Scheduler s(small_config(4, 16));
  const RequestId a = submit(s, prompt(9));
  run_plan(s, s.step(0.0));
  const RequestId b = submit(s, prompt(9));
  run_plan(s, s.step(0.0));
  const auto shared = s.block_table(a)[0];
  CHECK_EQ(s.block_table(b)[0], shared);
  s.cancel(a);
  s.check_invariants();  // ref counts: the shared blocks still have b
  const Stats mid = s.stats();
  CHECK_EQ(mid.used_blocks, static_cast<int32_t>(s.block_table(b).size()));
  s.cancel(b);
  CHECK_EQ(s.stats().free_blocks, 16);
  CHECK_EQ(s.stats().cached_blocks, 2);  // freed but still findable
  const RequestId c = submit(s, prompt(9));
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_starts[0], 8);  // revived from the free list
  CHECK_EQ(table_of(p, c)[0], shared);
  s.check_invariants();
}

TEST_CASE(allocation_evicts_cached_blocks_least_recently_freed_first) {
  Scheduler s(small_config(4, 16));
  const RequestId a = submit(s, prompt(9));  // blocks 0, 1, 2
  run_plan(s, s.step(0.0));
  s.step(0.0);  // commits a's prefill
  s.cancel(a);  // free list: 3..15 (never used), then a's tail first: 2, 1, 0
  CHECK_EQ(s.stats().cached_blocks, 2);
  const RequestId big = submit(s, prompt(60, 9000));  // 15 blocks: 3..15, then 2 and 1
  for (int i = 0; i < 4; ++i) s.step(0.0);
  CHECK_EQ(s.block_table(big).size(), 15u);
  s.cancel(big);
  const RequestId c = submit(s, prompt(9));
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_starts[0], 4);  // block 0 survived, block 1 was evicted
  CHECK_EQ(table_of(p, c)[0], 0);
  s.check_invariants();
}

TEST_CASE(prefix_caching_can_be_disabled) {
  Config c = small_config(4, 64);
  c.enable_prefix_caching = false;
  Scheduler s(c);
  submit(s, prompt(12));
  run_plan(s, s.step(0.0));
  submit(s, prompt(12));
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_starts[0], 0);
  CHECK_EQ(s.stats().cached_blocks, 0);
  s.check_invariants();
}

TEST_CASE(generated_full_blocks_are_hashed_too) {
  Scheduler s(small_config(4, 64));
  const RequestId a = submit(s, prompt(2));
  for (int i = 0; i < 7; ++i) run_plan(s, s.step(0.0));  // 2 prompt + 7 generated (token 7)
  s.step(0.0);                                            // commits the last computed block
  CHECK_EQ(s.stats().cached_blocks, 2);
  (void)a;
}

int main() { return check::run_all_tests(); }
