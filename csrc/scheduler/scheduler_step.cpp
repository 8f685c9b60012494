// Scheduler::step: the per-step planning passes.
//
//   0. commit    record the blocks the previous plan computed in the prefix cache
//   1. decodes   every running request with one token to compute (decode-first, so a long
//                prefill never stalls token streams); may preempt to get a block
//   2. prefills  running requests still prefilling, in chunks under the token budget
//   3. admission waiting requests by (priority, arrival) while seats, budget and blocks
//                last; skipped in a step that preempted (it would re-admit the victims)
//   4. decoder   ready token2wav items, most urgent deadline first
//
// Preemption victim: the back of running_ (least important, most recently admitted).
#include <algorithm>
#include <cmath>
#include <limits>

#include "block_hash.h"
#include "errors.h"
#include "scheduler.h"

namespace editx::sched {

StepPlan Scheduler::step(double now) {
  require(std::isfinite(now), "now: expected a finite time in seconds");
  std::lock_guard<std::mutex> lock(mu_);
  commit_last_step();
  StepState st;
  st.budget = config_.max_num_batched_tokens;
  st.entries.reserve(static_cast<size_t>(config_.max_num_seqs));
  schedule_decodes(st);
  schedule_running_prefills(st);
  if (st.preempted.empty()) admit_waiting(st);
  StepPlan plan = build_plan(st);
  plan.now = now;
  plan_decoder(now, plan);
  plan.ended.swap(ended_);
  plan.step = counters_.steps++;
  return plan;
}

// ---- 0. prefix-cache commit ------------------------------------------------------------

void Scheduler::commit_last_step() {
  for (RequestId id : last_scheduled_) {
    const auto it = requests_.find(id);
    if (it != requests_.end() && it->second->state == RequestState::kRunning) commit(*it->second);
  }
  last_scheduled_.clear();
}

// Blocks become shareable only once a plan that computed them has run (the next step or
// finish()), so no request ever reads or copies KV that is still being written.
void Scheduler::commit(Request& r) {
  const int32_t from = r.num_committed, to = r.num_computed;
  r.num_committed = to;
  if (!config_.enable_prefix_caching || to <= from) return;
  const int32_t b = config_.block_size;
  for (int32_t i = from / b; i < to / b; ++i) {  // blocks that became full
    const uint64_t parent = i == 0 ? kRootHash : r.block_hashes[i - 1];
    pool_.record(r.table[i], parent, &r.tokens[static_cast<size_t>(i) * b], b);
    pool_.index_full(r.table[i], r.block_hashes[i]);
    if (i * b < r.num_prompt) pool_.index_by_parent(r.table[i]);
  }
  // A prompt's partial tail block can still be copied by prompts that share its start.
  const int32_t tail = to / b;
  if (from < r.num_prompt && to % b != 0 && tail * b < r.num_prompt) {
    const uint64_t parent = tail == 0 ? kRootHash : r.block_hashes[tail - 1];
    pool_.record(r.table[tail], parent, &r.tokens[static_cast<size_t>(tail) * b], to - tail * b);
    pool_.index_by_parent(r.table[tail]);
  }
}

// ---- 1-2. running requests -----------------------------------------------------------------

void Scheduler::schedule_decodes(StepState& st) {
  // Index loop: preemption pops victims off the back of running_ while we walk it.
  for (size_t i = 0; i < running_.size() && st.budget > 0; ++i) {
    Request& r = *running_[i];
    if (r.num_tokens() - r.num_computed != 1 || r.num_computed < r.num_prompt) continue;
    if (reserve_blocks(st, r, 1) == 1) add_entry(st, r, r.num_computed, 1, false);
  }
}

void Scheduler::schedule_running_prefills(StepState& st) {
  for (size_t i = 0; i < running_.size() && st.budget > 0; ++i) {
    Request& r = *running_[i];
    const int32_t remaining = r.num_tokens() - r.num_computed;
    if (r.entry >= 0 || remaining <= 0) continue;  // scheduled already, or awaiting its sample
    const int32_t n = reserve_blocks(st, r, chunk_limit(remaining, st.budget));
    if (n > 0) add_entry(st, r, r.num_computed, n, true);
  }
}

int32_t Scheduler::chunk_limit(int32_t remaining, int32_t budget) const {
  const int32_t cap = config_.max_prefill_chunk > 0 ? config_.max_prefill_chunk : std::numeric_limits<int32_t>::max();
  return std::min({remaining, budget, cap});
}

int32_t Scheduler::blocks_needed(const Request& r, int32_t n) const {
  const int32_t b = config_.block_size;
  const int32_t blocks = (r.num_computed + n + b - 1) / b;
  return std::max(0, blocks - static_cast<int32_t>(r.table.size()));
}

// Gives `r` blocks for up to `n` new tokens; returns how many tokens fit (a prefill chunk
// shrinks to the free blocks), 0 if `r` itself had to be preempted. Others are preempted
// only when not even one token fits.
int32_t Scheduler::reserve_blocks(StepState& st, Request& r, int32_t n) {
  while (blocks_needed(r, 1) > pool_.num_free()) {
    Request& victim = *running_.back();
    preempt(st, victim);
    if (&victim == &r) return 0;
  }
  const int32_t room = (static_cast<int32_t>(r.table.size()) + pool_.num_free()) * config_.block_size - r.num_computed;
  n = std::min(n, room);
  for (int32_t k = blocks_needed(r, n); k > 0; --k) r.table.push_back(pool_.allocate());
  return n;
}

void Scheduler::preempt(StepState& st, Request& victim) {
  if (victim.entry >= 0) {  // already scheduled this step: take it back out
    Entry& e = st.entries[victim.entry];
    e.active = false;
    st.budget += e.count;
    victim.entry = -1;
  }
  release_blocks(victim);  // recomputed after re-admission (its committed blocks may still hit)
  remove_running(victim);
  victim.state = RequestState::kWaiting;
  waiting_.emplace(victim.priority, victim.id);
  st.preempted.push_back(victim.id);
  ++counters_.preemptions;
}

// ---- 3. admission ------------------------------------------------------------------------

void Scheduler::admit_waiting(StepState& st) {
  const int32_t b = config_.block_size;
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < config_.max_num_seqs && st.budget > 0) {
    Request& r = *requests_.at(waiting_.begin()->second);
    const PrefixMatch m = match_prefix(r);
    const int32_t start = m.cached_tokens(b);
    int32_t revived = 0;  // cached free blocks a hit takes off the free list
    for (BlockId id : m.hits) revived += pool_.ref(id) == 0;
    const int32_t spare = pool_.num_free() - revived - config_.admission_reserve_blocks;
    const int32_t fit = (static_cast<int32_t>(m.hits.size()) + spare) * b - start;
    const int32_t n = std::min(chunk_limit(r.num_tokens() - start, st.budget), fit);
    if (n < 1) break;  // the head of the queue waits for blocks; nothing overtakes it
    admit(st, r, m, n);
  }
}

// Longest cached prefix of r's tokens, leaving at least the last token to compute (its
// logits are needed): full blocks by chained hash, then the common start of the best
// partial block recorded after them.
Scheduler::PrefixMatch Scheduler::match_prefix(const Request& r) const {
  PrefixMatch m;
  if (!config_.enable_prefix_caching) return m;
  const int32_t b = config_.block_size;
  const int32_t limit = r.num_tokens() - 1;
  const int32_t full = std::min(static_cast<int32_t>(r.block_hashes.size()), limit / b);
  for (int32_t i = 0; i < full; ++i) {
    const BlockId id = pool_.find_full(r.block_hashes[i], &r.tokens[static_cast<size_t>(i) * b]);
    if (id < 0) break;
    m.hits.push_back(id);
  }
  const auto k = static_cast<int32_t>(m.hits.size());
  const int32_t span = std::min(b, limit - k * b);
  if (span <= 0) return m;
  const BlockId src = pool_.find_by_parent(k == 0 ? kRootHash : r.block_hashes[k - 1]);
  if (src < 0) return m;
  const TokenId* held = pool_.content(src);
  const TokenId* want = &r.tokens[static_cast<size_t>(k) * b];
  const int32_t n = std::min(span, pool_.valid(src));
  int32_t len = 0;
  while (len < n && held[len] == want[len]) ++len;
  if (len > 0) {
    m.partial_src = src;
    m.partial_len = len;
  }
  return m;
}

void Scheduler::admit(StepState& st, Request& r, const PrefixMatch& m, int32_t n) {
  const int32_t b = config_.block_size;
  waiting_.erase({r.priority, r.id});
  for (BlockId id : m.hits) pool_.retain(id);
  r.table = m.hits;
  r.num_computed = static_cast<int32_t>(m.hits.size()) * b;
  r.num_committed = r.num_computed;  // hits are in the cache already
  if (m.partial_len > 0) {
    // Copy-on-write: the source stays with its owner (or in the cache); we get a private
    // copy whose first partial_len positions are valid. A free source may come back as
    // our own destination, in which case its KV is already in place.
    const BlockId dst = pool_.allocate();
    r.table.push_back(dst);
    if (dst != m.partial_src) {
      st.copies.push_back(m.partial_src);
      st.copies.push_back(dst);
      ++counters_.copied_blocks;
    }
    r.num_computed += m.partial_len;
  }
  counters_.prefix_hit_tokens += r.num_computed;
  for (int32_t k = blocks_needed(r, n); k > 0; --k) r.table.push_back(pool_.allocate());
  r.state = RequestState::kRunning;
  r.admit_seq = next_admit_seq_++;
  insert_running(r);
  add_entry(st, r, r.num_computed, n, true);
}

void Scheduler::add_entry(StepState& st, Request& r, int32_t start, int32_t count, bool prefill) {
  r.entry = static_cast<int32_t>(st.entries.size());
  st.entries.push_back({&r, start, count, prefill, true});
  st.budget -= count;
}

// ---- plan output -------------------------------------------------------------------------

StepPlan Scheduler::build_plan(StepState& st) {
  StepPlan plan;
  size_t table_ids = 0;
  for (const Entry& e : st.entries) table_ids += e.active ? e.request->table.size() : 0;
  const size_t n = st.entries.size();
  plan.block_table_ids.reserve(table_ids);  // one allocation: block tables dominate the plan's size
  plan.block_table_offsets.reserve(n + 1);
  plan.scheduled_req_ids.reserve(n);
  plan.context_lens.reserve(n);
  plan.decode_req_ids.reserve(n);
  plan.decode_positions.reserve(n);
  plan.block_table_offsets.push_back(0);
  for (const bool prefill : {true, false}) {  // prefill chunks first, then decodes
    for (const Entry& e : st.entries) {
      if (!e.active || e.prefill != prefill) continue;
      const Request& r = *e.request;
      if (prefill) {
        plan.prefill_req_ids.push_back(r.id);
        plan.prefill_starts.push_back(e.start);
        plan.prefill_counts.push_back(e.count);
        plan.prefill_is_last.push_back(e.start + e.count == r.num_tokens());
      } else {
        plan.decode_req_ids.push_back(r.id);
        plan.decode_positions.push_back(e.start);
      }
      plan.scheduled_req_ids.push_back(r.id);
      plan.context_lens.push_back(e.start + e.count);
      plan.block_table_ids.insert(plan.block_table_ids.end(), r.table.begin(), r.table.end());
      plan.block_table_offsets.push_back(static_cast<int32_t>(plan.block_table_ids.size()));
    }
  }
  for (const Entry& e : st.entries) {
    e.request->entry = -1;
    if (!e.active) continue;
    e.request->num_computed = e.start + e.count;
    plan.num_scheduled_tokens += e.count;
    last_scheduled_.push_back(e.request->id);
  }
  plan.copies = std::move(st.copies);
  plan.preempted_req_ids = std::move(st.preempted);
  return plan;
}

// ---- 4. decoder plan ---------------------------------------------------------------------

void Scheduler::plan_decoder(double /*now: deadlines are absolute*/, StepPlan& plan) {
  struct Candidate {
    double deadline;
    Request* request;
    StreamAction action;
  };
  std::vector<Candidate> ready;
  for (Request* r : live_) {
    const StreamAction a = next_stream_action(r->stream, decodable_ids(*r, rule_), r->llm_done, rule_);
    if (a.ready) ready.push_back({stream_deadline(r->stream, r->arrival, rule_.ttfa_target_s), r, a});
  }
  const size_t take = std::min(ready.size(), static_cast<size_t>(config_.max_decoder_batch));
  std::partial_sort(ready.begin(), ready.begin() + static_cast<std::ptrdiff_t>(take), ready.end(),
                    [](const Candidate& a, const Candidate& b) {
                      return a.deadline != b.deadline ? a.deadline < b.deadline : a.request->id < b.request->id;
                    });
  for (size_t i = 0; i < take; ++i) {
    Candidate& c = ready[i];
    plan.decoder.push_back(start_stream_action(c.request->stream, c.request->id, c.action, c.deadline));
  }
}

}  // namespace editx::sched
