// Shared helpers for the scheduler tests: small configs, prompts, and a fake engine that
// executes plans (samples a scripted token where a chunk reaches the last token, runs every
// decoder item at once).
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include "scheduler/scheduler.h"

namespace testing_helpers {

using namespace editx::sched;

inline Config small_config(int32_t block_size = 4, int32_t num_blocks = 64) {
  Config c;
  c.block_size = block_size;
  c.num_blocks = num_blocks;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 16;
  c.max_model_len = 64;
  c.max_decoder_batch = 4;
  return c;
}

inline std::vector<TokenId> prompt(int32_t n, TokenId first = 100) {
  std::vector<TokenId> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

inline RequestId submit(Scheduler& s, const std::vector<TokenId>& p, int32_t priority = 0, double arrival = 0.0) {
  return s.submit(p.data(), static_cast<int64_t>(p.size()), arrival, priority);
}

inline bool contains(const std::vector<RequestId>& v, RequestId id) {
  return std::find(v.begin(), v.end(), id) != v.end();
}

// Appends token 7 for every sequence that needs a sample and completes every decoder item.
inline void run_plan(Scheduler& s, const StepPlan& plan, double now = 0.0) {
  for (size_t i = 0; i < plan.prefill_req_ids.size(); ++i) {
    if (plan.prefill_is_last[i]) {
      const TokenId t = 7;
      s.append_tokens(plan.prefill_req_ids[i], &t, 1);
    }
  }
  for (RequestId id : plan.decode_req_ids) {
    const TokenId t = 7;
    s.append_tokens(id, &t, 1);
  }
  for (const DecoderItem& d : plan.decoder) s.decoder_done(d.req_id, d.num_ids * 0.024, now);
}

inline std::vector<BlockId> table_of(const StepPlan& plan, RequestId id) {
  for (size_t i = 0; i < plan.scheduled_req_ids.size(); ++i) {
    if (plan.scheduled_req_ids[i] == id) {
      return {plan.block_table_ids.begin() + plan.block_table_offsets[i],
              plan.block_table_ids.begin() + plan.block_table_offsets[i + 1]};
    }
  }
  return {};
}

}  // namespace testing_helpers
