// Scheduler lifecycle: chunked prefill, decode-first batching, limits, preemption, ending,
// error paths, decoder plan order.
#include <cmath>
#include <string>

#include "check.h"
#include "helpers.h"
#include "scheduler/errors.h"

using namespace testing_helpers;

TEST_CASE(config_validation_names_the_field) {
  Config c = small_config();
  c.max_num_batched_tokens = c.max_num_seqs - 1;
  CHECK_THROWS(Scheduler{c}, InputError);
  c = small_config();
  c.num_blocks = 1;  // 4 tokens cannot hold max_model_len 64
  try {
    Scheduler bad{c};
    CHECK(false);
  } catch (const InputError& e) {
    CHECK(std::string(e.what()).find("num_blocks") != std::string::npos);
  }
  c = small_config();
  c.decoder_chunk_frames = {};
  CHECK_THROWS(Scheduler{c}, InputError);
}

TEST_CASE(prompt_is_prefilled_in_budget_sized_chunks_then_decoded) {
  Config c = small_config();
  c.max_num_batched_tokens = 8;
  Scheduler s(c);
  const RequestId id = submit(s, prompt(10));
  StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_req_ids.size(), 1u);
  CHECK_EQ(p.prefill_starts[0], 0);
  CHECK_EQ(p.prefill_counts[0], 8);
  CHECK(!p.prefill_is_last[0]);
  CHECK_EQ(table_of(p, id).size(), 2u);
  run_plan(s, p);
  p = s.step(0.0);
  CHECK_EQ(p.prefill_starts[0], 8);
  CHECK_EQ(p.prefill_counts[0], 2);
  CHECK(p.prefill_is_last[0]);
  CHECK_EQ(table_of(p, id).size(), 3u);
  run_plan(s, p);
  p = s.step(0.0);
  CHECK(p.prefill_req_ids.empty());
  CHECK_EQ(p.decode_req_ids.size(), 1u);
  CHECK_EQ(p.decode_positions[0], 10);
  CHECK_EQ(p.context_lens[0], 11);
  s.check_invariants();
}

TEST_CASE(a_request_without_its_sample_is_not_scheduled) {
  Scheduler s(small_config());
  submit(s, prompt(3));
  s.step(0.0);                             // whole prompt, last chunk
  const StepPlan p = s.step(0.0);          // engine has not appended the sample yet
  CHECK_EQ(p.num_scheduled_tokens, 0);
  s.check_invariants();
}

TEST_CASE(decodes_go_first_and_prefill_takes_the_rest_of_the_budget) {
  Config c = small_config();
  c.max_num_batched_tokens = 8;
  Scheduler s(c);
  const RequestId a = submit(s, prompt(3));
  run_plan(s, s.step(0.0));  // a prefilled and sampled
  const RequestId b = submit(s, prompt(30, 500));
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.decode_req_ids.size(), 1u);
  CHECK_EQ(p.decode_req_ids[0], a);
  CHECK_EQ(p.prefill_req_ids[0], b);
  CHECK_EQ(p.prefill_counts[0], 7);
  CHECK_EQ(p.num_scheduled_tokens, 8);
  CHECK_EQ(p.scheduled_req_ids[0], b);  // prefills first in the packed order
}

TEST_CASE(max_prefill_chunk_caps_each_request) {
  Config c = small_config();
  c.max_prefill_chunk = 5;
  Scheduler s(c);
  submit(s, prompt(12));
  submit(s, prompt(12, 300));
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_counts.size(), 2u);
  CHECK_EQ(p.prefill_counts[0], 5);
  CHECK_EQ(p.prefill_counts[1], 5);
}

TEST_CASE(max_num_seqs_bounds_running_requests) {
  Config c = small_config();
  c.max_num_seqs = 2;
  c.max_num_batched_tokens = 64;
  Scheduler s(c);
  for (int i = 0; i < 4; ++i) submit(s, prompt(2, 100 * (i + 1)));
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_req_ids.size(), 2u);
  const Stats st = s.stats();
  CHECK_EQ(st.running, 2);
  CHECK_EQ(st.waiting, 2);
}

TEST_CASE(admission_follows_priority_then_arrival) {
  Config c = small_config();
  c.max_num_seqs = 1;
  Scheduler s(c);
  submit(s, prompt(2), 5);
  const RequestId urgent = submit(s, prompt(2, 300), 0);
  CHECK_EQ(s.step(0.0).prefill_req_ids[0], urgent);
}

TEST_CASE(out_of_blocks_preempts_least_important_most_recent) {
  Config c = small_config(2, 8);  // 16 token slots
  c.max_model_len = 16;
  c.enable_prefix_caching = false;
  Scheduler s(c);
  const RequestId a = submit(s, prompt(5), 0);
  const RequestId b = submit(s, prompt(5, 300), 1);  // less important
  const RequestId d = submit(s, prompt(5, 600), 0);
  StepPlan p = s.step(0.0);
  CHECK_EQ(p.prefill_req_ids.size(), 3u);  // a, d, then b (least important) shrinks to the last 2 blocks
  run_plan(s, p);
  for (int i = 0; i < 6; ++i) {
    p = s.step(0.0);
    if (!p.preempted_req_ids.empty()) break;
    run_plan(s, p);
  }
  CHECK_EQ(p.preempted_req_ids.size(), 1u);
  CHECK_EQ(p.preempted_req_ids[0], b);
  CHECK(!contains(p.scheduled_req_ids, b));
  CHECK(s.block_table(b).empty());
  CHECK_EQ(s.state(b), RequestState::kWaiting);
  CHECK_EQ(s.state(a), RequestState::kRunning);
  CHECK_EQ(s.state(d), RequestState::kRunning);
  s.check_invariants();
}

TEST_CASE(a_preempted_request_is_recomputed_with_its_generated_tokens) {
  Config c = small_config(2, 8);
  c.max_model_len = 16;
  Scheduler s(c);
  const RequestId a = submit(s, prompt(3), 0);
  run_plan(s, s.step(0.0));  // a: 3 prompt + 1 sampled
  const RequestId b = submit(s, prompt(11, 300), 1);
  // Drive until b is preempted, then finish a so b can come back.
  StepPlan p;
  for (int i = 0; i < 20 && p.preempted_req_ids.empty(); ++i) {
    p = s.step(0.0);
    run_plan(s, p);
  }
  CHECK(contains(p.preempted_req_ids, b));
  s.finish(a, FinishReason::kEos);
  p = s.step(0.0);
  CHECK_EQ(p.prefill_req_ids.size(), 1u);
  CHECK_EQ(p.prefill_req_ids[0], b);
  // b's first 5 blocks (committed before it was preempted) are still cached: only the
  // rest of its prompt + its sampled token are recomputed.
  CHECK_EQ(p.prefill_starts[0], 10);
  CHECK_EQ(p.prefill_counts[0], 2);
  CHECK(p.prefill_is_last[0]);
  s.check_invariants();
}

TEST_CASE(cancel_frees_blocks_and_is_reported_once) {
  Scheduler s(small_config());
  const RequestId id = submit(s, prompt(9));
  s.step(0.0);
  CHECK(s.stats().free_blocks < 64);
  CHECK(s.cancel(id));
  CHECK(!s.cancel(id));
  CHECK_EQ(s.stats().free_blocks, 64);
  CHECK_EQ(s.state(id), RequestState::kEnded);
  StepPlan p = s.step(0.0);
  CHECK_EQ(p.ended.size(), 1u);
  CHECK_EQ(p.ended[0].first, id);
  CHECK_EQ(p.ended[0].second, static_cast<int32_t>(FinishReason::kCancelled));
  CHECK(s.step(0.0).ended.empty());
  CHECK(!s.append_tokens(id, prompt(1).data(), 1));  // a racing engine call is ignored, not an error
  s.check_invariants();
}

TEST_CASE(eos_frees_kv_and_the_request_ends_after_its_final_decoder_item) {
  Scheduler s(small_config());
  const RequestId id = submit(s, prompt(4));
  for (int i = 0; i < 12; ++i) run_plan(s, s.step(0.0));  // 12 generated ids
  CHECK(s.finish(id, FinishReason::kEos));
  CHECK_EQ(s.state(id), RequestState::kDraining);
  CHECK_EQ(s.stats().free_blocks, 64);
  StepPlan p = s.step(1.0);  // the setup happened earlier; now the final flush
  CHECK_EQ(p.decoder.size(), 1u);
  CHECK(p.decoder[0].is_last);
  CHECK_EQ(p.decoder[0].num_ids, 11);  // 12 generated, the last one dropped
  CHECK(p.ended.empty());
  s.decoder_done(id, 0.2, 1.1);
  p = s.step(1.2);
  CHECK_EQ(p.ended.size(), 1u);
  CHECK_EQ(p.ended[0].second, static_cast<int32_t>(FinishReason::kEos));
  s.check_invariants();
}

TEST_CASE(a_request_with_too_few_ids_for_the_decoder_ends_at_finish) {
  Scheduler s(small_config());
  const RequestId id = submit(s, prompt(4));
  run_plan(s, s.step(0.0));
  s.finish(id, FinishReason::kLength);
  CHECK_EQ(s.state(id), RequestState::kEnded);
  CHECK_EQ(s.step(0.0).ended.size(), 1u);
}

TEST_CASE(error_paths_throw_input_error_and_change_nothing) {
  Scheduler s(small_config());
  const RequestId id = submit(s, prompt(4));
  CHECK_THROWS(s.cancel(99), InputError);
  CHECK_THROWS(s.append_tokens(id, prompt(1).data(), 1), InputError);  // waiting
  std::vector<TokenId> neg{-1};
  CHECK_THROWS(submit(s, neg), InputError);
  CHECK_THROWS(submit(s, prompt(65)), InputError);
  CHECK_THROWS(s.submit(prompt(2).data(), 2, std::nan(""), 0), InputError);
  CHECK_THROWS(s.step(std::nan("")), InputError);
  CHECK_THROWS(s.decoder_done(id, 0.1, 0.0), InputError);  // nothing in flight
  CHECK_THROWS(s.finish(id, FinishReason::kCancelled), InputError);
  s.step(0.0);
  CHECK_THROWS(s.finish(id, static_cast<FinishReason>(9)), InputError);
  const RequestId ids[] = {id, id};
  const TokenId toks[] = {1, 2};
  CHECK_THROWS(s.append_batch(ids, toks, 2), InputError);  // duplicate
  CHECK_EQ(s.stats().submitted, 1);
  s.check_invariants();
}

TEST_CASE(append_batch_applies_all_or_nothing) {
  Scheduler s(small_config());
  const RequestId a = submit(s, prompt(2)), b = submit(s, prompt(2, 50));
  s.step(0.0);
  const RequestId ids[] = {a, b};
  const TokenId toks[] = {5, 6};
  CHECK_EQ(s.append_batch(ids, toks, 2), 2);
  CHECK_THROWS(s.append_batch(ids, toks, 2), InputError);  // both now have an uncomputed token
  s.cancel(a);
  const StepPlan p = s.step(0.0);
  CHECK_EQ(p.decode_req_ids.size(), 1u);
  const RequestId again[] = {a, b};
  CHECK_EQ(s.append_batch(again, toks, 2), 1);  // a ended: skipped
}

TEST_CASE(decoder_items_are_ordered_by_deadline_and_capped) {
  Config c = small_config();
  c.max_decoder_batch = 2;
  c.max_model_len = 64;
  Scheduler s(c);
  std::vector<RequestId> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(submit(s, prompt(2, 100 * (i + 1)), 0, 3.0 - i));  // later ids arrived earlier
  }
  std::vector<DecoderItem> items;
  for (int i = 0; i < 8 && items.empty(); ++i) {
    StepPlan p = s.step(10.0);
    items = p.decoder;
    for (size_t k = 0; k < p.prefill_req_ids.size(); ++k) {
      if (p.prefill_is_last[k]) s.append_tokens(p.prefill_req_ids[k], prompt(1).data(), 1);
    }
    for (RequestId id : p.decode_req_ids) s.append_tokens(id, prompt(1).data(), 1);
  }
  CHECK_EQ(items.size(), 2u);  // three set-ups ready, two allowed
  CHECK_EQ(items[0].req_id, ids[2]);
  CHECK_EQ(items[1].req_id, ids[1]);
  CHECK(items[0].kind == DecoderKind::kSetup);
  CHECK_EQ(items[0].deadline, 1.0 + c.ttfa_target_s);
}

TEST_CASE(late_first_audio_is_a_ttfa_miss_and_late_chunks_are_underruns) {
  Config c = small_config();
  c.max_model_len = 128;
  Scheduler s(c);
  submit(s, prompt(2), 0, 0.0);
  for (int i = 0; i < 40; ++i) run_plan(s, s.step(0.0), 0.0);  // first chunk at t = 0: on time
  Stats st = s.stats();
  CHECK_EQ(st.ttfa_misses, 0);
  CHECK_EQ(st.underruns, 0);
  submit(s, prompt(2, 70), 0, 0.0);
  for (int i = 0; i < 40; ++i) run_plan(s, s.step(5.0), 5.0);  // everything now completes at t = 5
  st = s.stats();
  CHECK_EQ(st.ttfa_misses, 1);  // the second request's first audio
  CHECK(st.underruns >= 1);     // the first request's next chunk, 0.6 s of audio after t = 0
}

TEST_CASE(progress_tracks_generated_and_consumed_ids) {
  Scheduler s(small_config());
  const RequestId id = submit(s, prompt(5), 3);
  for (int i = 0; i < 32; ++i) run_plan(s, s.step(0.0));  // 32 generated (one per step), 31 decodable
  const RequestProgress p = s.progress(id);
  CHECK(p.state == RequestState::kRunning);
  CHECK_EQ(p.priority, 3);
  CHECK_EQ(p.num_prompt_tokens, 5);
  CHECK_EQ(p.generated, 32);
  CHECK_EQ(p.num_tokens, 37);
  CHECK_EQ(p.decoder_consumed, 25);  // set-up, then the first 15-frame chunk
  s.cancel(id);
  CHECK(s.progress(id).state == RequestState::kEnded);
  std::vector<TokenId> one{1};
  CHECK_THROWS(s.submit(one.data(), 1, 0.0, int64_t{1} << 40), InputError);  // priority out of range
}

int main() { return check::run_all_tests(); }
