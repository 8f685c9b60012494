// The request scheduler: every engine step it decides which requests run (chunked prefill
// under a token budget, then decode), with which KV blocks, and which decoder streams get
// a chunk. It sees only request ids, token ids/counts, block ids and times.
//
// Protocol (one engine thread drives step(); any thread may submit / cancel / read stats):
//   plan = step(now)           -> run copies, then the model over the plan's sequences
//   append_tokens(id, [tok])   for every sequence whose chunk reaches its last token
//   finish(id, EOS | LENGTH)   when the LLM stops (the decoder then drains the stream)
//   decoder_done(id, secs, t)  for every decoder item, once the engine has run it
// The engine must finish executing a plan (copies and forward) before calling step()
// again: the blocks a plan frees or hands out are only reused by a later plan.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "block_pool.h"
#include "config.h"
#include "decoder_plan.h"
#include "request.h"
#include "types.h"

namespace editx::sched {

class Scheduler {
 public:
  explicit Scheduler(Config config);

  // Queues a request; returns its id. `priority`: lower value = more important.
  RequestId submit(const TokenId* prompt, int64_t n, double arrival, int64_t priority);
  // Ends the request now, from any thread; false if it had already ended.
  bool cancel(RequestId id);
  // EOS / LENGTH: the LLM is done (KV freed, decoder drains); ERROR: ends it now.
  // False if the request had already ended.
  bool finish(RequestId id, FinishReason reason);
  // Appends sampled ids to a running request whose tokens are all computed.
  bool append_tokens(RequestId id, const TokenId* ids, int64_t n);
  // One id per request; validated as a whole before any is applied. Returns how many
  // requests were still alive (ended ones are skipped).
  int32_t append_batch(const RequestId* ids, const TokenId* tokens, int64_t n);
  // Plans one engine step at time `now` (seconds).
  StepPlan step(double now);
  // The engine ran the request's in-flight decoder item, emitting `audio_seconds` of audio.
  bool decoder_done(RequestId id, double audio_seconds, double now);

  Stats stats() const;
  RequestState state(RequestId id) const;
  RequestProgress progress(RequestId id) const;
  std::vector<BlockId> block_table(RequestId id) const;
  const Config& config() const { return config_; }
  // Throws InvariantError if any bookkeeping is inconsistent (tests call this after every op).
  void check_invariants() const;

 private:
  struct Entry {
    Request* request;
    int32_t start;
    int32_t count;
    bool prefill;
    bool active;
  };
  struct StepState {
    int32_t budget = 0;
    std::vector<Entry> entries;
    std::vector<int32_t> copies;
    std::vector<RequestId> preempted;
  };
  struct PrefixMatch {
    std::vector<BlockId> hits;  // cached full blocks, in order
    BlockId partial_src = -1;   // block to copy the next partial block's common part from
    int32_t partial_len = 0;
    int32_t cached_tokens(int32_t block_size) const {
      return static_cast<int32_t>(hits.size()) * block_size + partial_len;
    }
  };

  // Lookups (caller holds mu_). `find` returns nullptr for ended ids, throws for unknown ones.
  Request* find(RequestId id) const;
  void require_known(RequestId id) const;

  // Lifecycle helpers.
  void append_unlocked(Request& r, const TokenId* ids, int64_t n);
  void check_appendable(const Request& r, int64_t n, const char* arg) const;
  void extend_block_hashes(Request& r);
  void release_blocks(Request& r);
  void remove_running(Request& r);
  void insert_running(Request& r);
  void end_request(Request& r, FinishReason reason);
  void end_if_drained(Request& r);
  void commit(Request& r);
  void check_request(const Request& r) const;

  // Step passes (scheduler_step.cpp).
  void commit_last_step();
  void schedule_decodes(StepState& st);
  void schedule_running_prefills(StepState& st);
  void admit_waiting(StepState& st);
  int32_t reserve_blocks(StepState& st, Request& r, int32_t n);
  int32_t blocks_needed(const Request& r, int32_t n) const;
  void preempt(StepState& st, Request& victim);
  PrefixMatch match_prefix(const Request& r) const;
  void admit(StepState& st, Request& r, const PrefixMatch& m, int32_t n);
  void add_entry(StepState& st, Request& r, int32_t start, int32_t count, bool prefill);
  int32_t chunk_limit(int32_t remaining, int32_t budget) const;
  StepPlan build_plan(StepState& st);
  void plan_decoder(double now, StepPlan& plan);

  const Config config_;
  const StreamRule rule_;
  mutable std::mutex mu_;
  BlockPool pool_;
  std::unordered_map<RequestId, std::unique_ptr<Request>> requests_;  // alive only
  std::set<std::pair<int32_t, RequestId>> waiting_;  // (priority, id): most important, oldest first
  std::vector<Request*> running_;   // by (priority, admit_seq): the back is the preemption victim
  std::vector<Request*> live_;      // every alive request, by id
  std::vector<RequestId> last_scheduled_;
  std::vector<std::pair<RequestId, int32_t>> ended_;
  RequestId next_id_ = 0;
  uint64_t batch_counter_ = 0;
  std::vector<Request*> batch_scratch_;  // append_batch's validated requests (reused buffer)
  uint64_t next_admit_seq_ = 0;
  Stats counters_;
};

}  // namespace editx::sched
