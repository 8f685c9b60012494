// Scheduler: construction, the request lifecycle calls and queries. The per-step planning
// lives in scheduler_step.cpp.
#include "scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "block_hash.h"
#include "errors.h"

namespace editx::sched {
namespace {

std::string request_name(RequestId id) { return "request " + std::to_string(id); }

void require_token_ids(const TokenId* ids, int64_t n, const char* arg) {
  require_lazy(n >= 1, [arg] { return std::string(arg) + ": expected at least one token id"; });
  for (int64_t i = 0; i < n; ++i) {
    require_lazy(ids[i] >= 0,
                 [&] { return std::string(arg) + ": token ids must be >= 0, got " + std::to_string(ids[i]); });
  }
}

bool by_priority_then_admission(const Request* a, const Request* b) {
  return a->priority != b->priority ? a->priority < b->priority : a->admit_seq < b->admit_seq;
}

}  // namespace

Scheduler::Scheduler(Config config)
    : config_((validate(config), std::move(config))),
      rule_(StreamRule::from_config(config_)),
      pool_(config_.num_blocks, config_.block_size) {
  counters_.num_blocks = config_.num_blocks;
}

// ---- lookups ---------------------------------------------------------------------------

void Scheduler::require_known(RequestId id) const {
  require_lazy(id >= 0 && id < next_id_, [id] { return "req_id: unknown request id " + std::to_string(id); });
}

Request* Scheduler::find(RequestId id) const {
  require_known(id);
  const auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

// ---- submission and token appends -------------------------------------------------------

RequestId Scheduler::submit(const TokenId* prompt, int64_t n, double arrival, int64_t priority) {
  require_token_ids(prompt, n, "prompt_ids");
  require_lazy(n <= config_.max_model_len, [&] {
    return "prompt_ids: " + std::to_string(n) + " tokens exceed max_model_len " + std::to_string(config_.max_model_len);
  });
  require(std::isfinite(arrival), "arrival: expected a finite time in seconds");
  require(priority >= INT32_MIN && priority <= INT32_MAX, "priority: expected a 32-bit int");
  auto r = std::make_unique<Request>();
  r->priority = static_cast<int32_t>(priority);
  r->arrival = arrival;
  r->tokens.assign(prompt, prompt + n);
  r->num_prompt = static_cast<int32_t>(n);
  extend_block_hashes(*r);  // hashing needs no lock: the request is not shared yet

  std::lock_guard<std::mutex> lock(mu_);
  r->id = next_id_++;
  Request* raw = r.get();
  requests_.emplace(raw->id, std::move(r));
  waiting_.emplace(raw->priority, raw->id);
  live_.push_back(raw);
  ++counters_.submitted;
  return raw->id;
}

void Scheduler::extend_block_hashes(Request& r) {
  if (!config_.enable_prefix_caching) return;
  const int32_t b = config_.block_size;
  for (auto k = static_cast<int32_t>(r.block_hashes.size()); (k + 1) * b <= r.num_tokens(); ++k) {
    const uint64_t parent = k == 0 ? kRootHash : r.block_hashes[k - 1];
    r.block_hashes.push_back(block_hash(parent, &r.tokens[static_cast<size_t>(k) * b], b));
  }
}

void Scheduler::append_unlocked(Request& r, const TokenId* ids, int64_t n) {
  r.tokens.insert(r.tokens.end(), ids, ids + n);
  extend_block_hashes(r);
}

bool Scheduler::append_tokens(RequestId id, const TokenId* ids, int64_t n) {
  require_token_ids(ids, n, "ids");
  std::lock_guard<std::mutex> lock(mu_);
  Request* r = find(id);
  if (r == nullptr) return false;
  check_appendable(*r, n, "req_id");
  append_unlocked(*r, ids, n);
  return true;
}

void Scheduler::check_appendable(const Request& r, int64_t n, const char* arg) const {
  require_lazy(r.state == RequestState::kRunning && !r.llm_done, [&] {
    return std::string(arg) + ": " + request_name(r.id) + " is not running, so it has no token to append";
  });
  require_lazy(r.num_computed == r.num_tokens(), [&] {
    return std::string(arg) + ": " + request_name(r.id) +
           " still has uncomputed tokens; append only after a plan item that reaches its last token";
  });
  require_lazy(r.num_tokens() + n <= config_.max_model_len, [&] {
    return "ids: " + request_name(r.id) + " would exceed max_model_len " + std::to_string(config_.max_model_len);
  });
}

int32_t Scheduler::append_batch(const RequestId* ids, const TokenId* tokens, int64_t n) {
  require_token_ids(tokens, n, "token_ids");
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t mark = ++batch_counter_;
  std::vector<Request*>& alive = batch_scratch_;
  alive.clear();
  for (int64_t i = 0; i < n; ++i) {  // validate everything first: a rejected batch changes nothing
    Request* r = find(ids[i]);
    if (r == nullptr) {
      alive.push_back(nullptr);
      continue;
    }
    require_lazy(r->batch_mark != mark, [&] { return "req_ids: " + request_name(r->id) + " appears twice"; });
    r->batch_mark = mark;
    check_appendable(*r, 1, "req_ids");
    alive.push_back(r);
  }
  int32_t applied = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (alive[i] == nullptr) continue;
    append_unlocked(*alive[i], &tokens[i], 1);
    ++applied;
  }
  return applied;
}

// ---- ending ------------------------------------------------------------------------------

void Scheduler::release_blocks(Request& r) {
  // Tail first: the free list evicts from its front, so a prompt's leading (most shareable)
  // blocks stay cached longest.
  for (auto it = r.table.rbegin(); it != r.table.rend(); ++it) pool_.release(*it);
  r.table.clear();
  r.num_computed = 0;
  r.num_committed = 0;
}

void Scheduler::remove_running(Request& r) {
  const auto it = std::find(running_.rbegin(), running_.rend(), &r);  // victims sit at the back
  running_.erase(std::next(it).base());
}

void Scheduler::insert_running(Request& r) {
  running_.insert(std::upper_bound(running_.begin(), running_.end(), &r, by_priority_then_admission), &r);
}

void Scheduler::end_request(Request& r, FinishReason reason) {
  if (r.state == RequestState::kRunning) {
    release_blocks(r);
    remove_running(r);
  } else if (r.state == RequestState::kWaiting) {
    waiting_.erase({r.priority, r.id});
  }
  const auto live = std::lower_bound(live_.begin(), live_.end(), r.id,
                                     [](const Request* a, RequestId id) { return a->id < id; });
  live_.erase(live);
  ended_.emplace_back(r.id, static_cast<int32_t>(reason));
  ++counters_.ended;
  requests_.erase(r.id);  // destroys r
}

void Scheduler::end_if_drained(Request& r) {
  if (!r.llm_done || r.stream.in_flight) return;
  if (r.stream.finished || stream_cannot_start(r.stream, decodable_ids(r, rule_), true, rule_)) {
    end_request(r, r.reason);
  }
}

bool Scheduler::cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  Request* r = find(id);
  if (r == nullptr) return false;
  end_request(*r, FinishReason::kCancelled);
  return true;
}

bool Scheduler::finish(RequestId id, FinishReason reason) {
  require(reason == FinishReason::kEos || reason == FinishReason::kLength || reason == FinishReason::kError,
          "reason: expected EOS, LENGTH or ERROR (use cancel() to cancel)");
  std::lock_guard<std::mutex> lock(mu_);
  Request* r = find(id);
  if (r == nullptr) return false;
  if (reason == FinishReason::kError) {
    end_request(*r, reason);
    return true;
  }
  require_lazy(!r->llm_done, [id] { return "req_id: " + request_name(id) + " already finished generating"; });
  if (r->state == RequestState::kRunning) {
    commit(*r);  // the engine ran the last plan before sampling the stop token
    release_blocks(*r);
    remove_running(*r);
  } else {
    waiting_.erase({r->priority, r->id});
  }
  r->llm_done = true;
  r->reason = reason;
  r->state = RequestState::kDraining;
  end_if_drained(*r);
  return true;
}

bool Scheduler::decoder_done(RequestId id, double audio_seconds, double now) {
  require(std::isfinite(audio_seconds) && audio_seconds >= 0, "audio_seconds: expected a finite number >= 0");
  require(std::isfinite(now), "now: expected a finite time in seconds");
  std::lock_guard<std::mutex> lock(mu_);
  Request* r = find(id);
  if (r == nullptr) return false;
  DecoderStream& s = r->stream;
  require_lazy(s.in_flight, [id] { return "req_id: " + request_name(id) + " has no decoder item in flight"; });
  s.in_flight = false;
  if (audio_seconds > 0) {
    const double due = stream_deadline(s, r->arrival, rule_.ttfa_target_s);
    if (!s.has_audio) {
      s.has_audio = true;
      s.first_audio_time = now;
      counters_.ttfa_misses += now > due;
    } else {
      counters_.underruns += now > due;
    }
    s.audio_seconds += audio_seconds;
  }
  if (s.in_flight_kind == DecoderKind::kFinal) s.finished = true;
  end_if_drained(*r);
  return true;
}

// ---- queries -------------------------------------------------------------------------------

Stats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = counters_;
  s.free_blocks = pool_.num_free();
  s.used_blocks = pool_.num_blocks() - pool_.num_free();
  s.cached_blocks = pool_.num_cached();
  s.waiting = static_cast<int32_t>(waiting_.size());
  s.running = static_cast<int32_t>(running_.size());
  s.draining = static_cast<int32_t>(requests_.size()) - s.waiting - s.running;
  return s;
}

RequestState Scheduler::state(RequestId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Request* r = find(id);
  return r == nullptr ? RequestState::kEnded : r->state;
}

RequestProgress Scheduler::progress(RequestId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Request* r = find(id);
  RequestProgress p;
  if (r == nullptr) return p;
  p.state = r->state;
  p.priority = r->priority;
  p.num_prompt_tokens = r->num_prompt;
  p.num_tokens = r->num_tokens();
  p.num_computed_tokens = r->num_computed;
  p.generated = r->num_generated();
  p.decoder_consumed = r->stream.consumed;
  p.decoder_in_flight = r->stream.in_flight;
  p.audio_seconds = r->stream.audio_seconds;
  return p;
}

std::vector<BlockId> Scheduler::block_table(RequestId id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Request* r = find(id);
  return r == nullptr ? std::vector<BlockId>{} : r->table;
}

void Scheduler::check_invariants() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int32_t> refs(pool_.num_blocks(), 0);
  for (const Request* r : running_) {
    for (BlockId b : r->table) ++refs[b];
  }
  pool_.check(refs);
  invariant(static_cast<int32_t>(running_.size()) <= config_.max_num_seqs, "more running requests than max_num_seqs");
  invariant(std::is_sorted(running_.begin(), running_.end(), by_priority_then_admission),
            "running requests out of (priority, admission) order");
  invariant(live_.size() == requests_.size(), "live list and request map differ in size");
  invariant(std::is_sorted(live_.begin(), live_.end(), [](auto* a, auto* b) { return a->id < b->id; }),
            "live list out of id order");
  size_t waiting = 0, running = 0;
  for (const Request* r : live_) {
    invariant(requests_.count(r->id) == 1, request_name(r->id) + ": live but not in the request map");
    waiting += r->state == RequestState::kWaiting;
    running += r->state == RequestState::kRunning;
    check_request(*r);
  }
  invariant(waiting == waiting_.size() && running == running_.size(), "state counts disagree with the queues");
}

void Scheduler::check_request(const Request& r) const {
  const std::string name = request_name(r.id);
  const int32_t b = config_.block_size;
  const int32_t blocks = (r.num_computed + b - 1) / b;
  invariant(r.entry == -1, name + ": schedule entry left over from a step");
  invariant(static_cast<int32_t>(r.table.size()) == blocks, name + ": block table does not match computed tokens");
  invariant(r.num_committed <= r.num_computed && r.num_computed <= r.num_tokens(), name + ": progress out of range");
  const size_t hashes = config_.enable_prefix_caching ? r.tokens.size() / b : 0;
  invariant(r.block_hashes.size() == hashes, name + ": block hashes do not cover the full blocks");
  invariant(r.state != RequestState::kRunning || waiting_.count({r.priority, r.id}) == 0, name + ": queued twice");
  invariant(r.state != RequestState::kWaiting || (r.table.empty() && waiting_.count({r.priority, r.id}) == 1),
            name + ": waiting but holds blocks or is not queued");
  invariant(r.state != RequestState::kDraining || (r.llm_done && r.table.empty()), name + ": draining with blocks");
  invariant(r.stream.consumed <= decodable_ids(r, rule_), name + ": decoder consumed ids it cannot have");
}

}  // namespace editx::sched
