// Thread safety: submit and cancel from other threads while the engine thread steps.
#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "check.h"
#include "helpers.h"

using namespace testing_helpers;

TEST_CASE(concurrent_submit_and_cancel_while_stepping) {
  Config c = small_config(4, 256);
  c.max_num_seqs = 16;
  c.max_model_len = 48;
  Scheduler s(c);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> submitted{0};
  auto client = [&](unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<RequestId> mine;
    while (!stop.load()) {
      mine.push_back(submit(s, prompt(1 + static_cast<int32_t>(rng() % 20), rng() % 3 * 40)));
      ++submitted;
      if (rng() % 2 == 0) s.cancel(mine[rng() % mine.size()]);  // may hit an ended one: false
      std::this_thread::yield();
    }
  };
  std::thread t1(client, 1), t2(client, 2);
  std::multiset<RequestId> ended;
  std::mt19937 rng(3);
  const TokenId token = 9;
  auto engine_loop = [&] {
    for (int i = 0; i < 3000; ++i) {
      StepPlan p = s.step(i * 0.02);
      for (auto& e : p.ended) ended.insert(e.first);
      for (size_t k = 0; k < p.prefill_req_ids.size(); ++k) {
        if (p.prefill_is_last[k]) s.append_tokens(p.prefill_req_ids[k], &token, 1);
      }
      for (size_t k = 0; k < p.decode_req_ids.size(); ++k) {
        const RequestId id = p.decode_req_ids[k];
        const bool at_limit = p.decode_positions[k] + 2 > c.max_model_len;
        if (at_limit || rng() % 10 == 0) {
          s.finish(id, at_limit ? FinishReason::kLength : FinishReason::kEos);
        } else {
          s.append_tokens(id, &token, 1);  // false when a client cancelled it meanwhile
        }
      }
      for (const DecoderItem& d : p.decoder) s.decoder_done(d.req_id, 0.1, i * 0.02);
      if (i % 100 == 0) s.check_invariants();
    }
  };
  std::string failure;
  try {
    engine_loop();
  } catch (const std::exception& e) {
    failure = e.what();
  }
  stop = true;
  t1.join();
  t2.join();
  CHECK_EQ(failure, std::string());
  // Drain: cancel whatever is left; every request must end exactly once.
  for (RequestId id = 0; id < submitted.load(); ++id) s.cancel(id);
  for (auto& e : s.step(1e6).ended) ended.insert(e.first);
  CHECK_EQ(static_cast<int64_t>(ended.size()), submitted.load());
  for (RequestId id = 0; id < submitted.load(); ++id) CHECK_EQ(ended.count(id), 1u);
  CHECK_EQ(s.stats().free_blocks, 256);
  s.check_invariants();
}

int main() { return check::run_all_tests(); }
