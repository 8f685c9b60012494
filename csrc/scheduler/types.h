// Plain value types shared by the scheduler, its plan and the Python binding.
// The integer values of the enums are part of the Python API
// (editx.engine.scheduler.RequestState / FinishReason / DecoderKind mirror them).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace editx::sched {

using RequestId = int64_t;
using BlockId = int32_t;
using TokenId = int64_t;

// Where a request is. WAITING: queued (never admitted, or preempted); RUNNING: holds KV
// blocks and is prefilled / decoded; DRAINING: the LLM is done, the decoder still has ids
// to turn into audio; ENDED: gone (reported once in StepPlan::ended).
enum class RequestState : int32_t { kWaiting = 0, kRunning = 1, kDraining = 2, kEnded = 3 };

// Why a request ended. EOS / LENGTH end the LLM side (the decoder then drains);
// ERROR and CANCELLED end the request at once.
enum class FinishReason : int32_t { kEos = 0, kLength = 1, kError = 2, kCancelled = 3 };

// Decoder (token2wav) work for one stream. SETUP builds the prompt caches from the first
// lookahead ids and emits no audio; CHUNK emits one chunk; FINAL flushes everything left.
enum class DecoderKind : int32_t { kSetup = 0, kChunk = 1, kFinal = 2 };

// One decoder job: feed generated audio ids [start, start + num_feed) of request req_id;
// the stream's window then advances by num_ids (0 for SETUP; the lookahead ids of a CHUNK
// are fed again with the next item).
struct DecoderItem {
  RequestId req_id = -1;
  DecoderKind kind = DecoderKind::kSetup;
  int32_t start = 0;
  int32_t num_ids = 0;
  int32_t num_feed = 0;
  bool is_first = false;  // first item that emits audio (its completion is the TTFA)
  bool is_last = false;   // FINAL: the stream ends when it completes
  double deadline = 0.0;  // seconds; the urgency the item was ordered by
};

// Everything the engine needs for one step. Scheduled sequences are the prefill chunks
// then the decodes; their block tables are stored back to back (CSR layout).
struct StepPlan {
  int64_t step = 0;
  double now = 0.0;
  std::vector<RequestId> prefill_req_ids;
  std::vector<int32_t> prefill_starts;   // first position to compute (after cached prefix)
  std::vector<int32_t> prefill_counts;
  std::vector<uint8_t> prefill_is_last;  // chunk reaches the last token: sample after it
  std::vector<RequestId> decode_req_ids;
  std::vector<int32_t> decode_positions;
  std::vector<RequestId> scheduled_req_ids;  // prefill_req_ids then decode_req_ids
  std::vector<int32_t> context_lens;         // per scheduled sequence: start + count
  std::vector<int32_t> block_table_offsets;  // [S + 1]
  std::vector<int32_t> block_table_ids;      // [block_table_offsets[S]]
  std::vector<int32_t> copies;               // (src, dst) pairs, flattened
  std::vector<RequestId> preempted_req_ids;
  std::vector<DecoderItem> decoder;          // most urgent first
  std::vector<std::pair<RequestId, int32_t>> ended;  // (id, FinishReason) since the last step
  int32_t num_scheduled_tokens = 0;
};

// Where one request stands (a snapshot; state kEnded and zeros once it has ended).
struct RequestProgress {
  RequestState state = RequestState::kEnded;
  int32_t priority = 0;
  int32_t num_prompt_tokens = 0;
  int32_t num_tokens = 0;           // prompt + generated
  int32_t num_computed_tokens = 0;  // KV computed (or cached) as of the latest plan
  int32_t generated = 0;            // ids the LLM produced
  int32_t decoder_consumed = 0;     // ids the decoder window has advanced past
  bool decoder_in_flight = false;
  double audio_seconds = 0.0;
};

// Counters and gauges; a snapshot taken under the scheduler's lock.
struct Stats {
  int32_t num_blocks = 0;
  int32_t free_blocks = 0;    // unreferenced blocks (cached ones included: they are evictable)
  int32_t used_blocks = 0;    // referenced by at least one running request
  int32_t cached_blocks = 0;  // full blocks findable by content hash (in use or free)
  int32_t waiting = 0;
  int32_t running = 0;
  int32_t draining = 0;
  int64_t steps = 0;
  int64_t submitted = 0;
  int64_t ended = 0;
  int64_t preemptions = 0;
  int64_t prefix_hit_tokens = 0;  // prompt tokens served from cached blocks at admission
  int64_t copied_blocks = 0;      // partial-block copies handed to the engine
  int64_t ttfa_misses = 0;        // first audio later than arrival + ttfa_target_s
  int64_t underruns = 0;          // a chunk completed after the audio before it ran out
};

}  // namespace editx::sched
