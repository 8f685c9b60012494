// Per-request bookkeeping: token ids, KV block table and progress, and the decoder stream.
// Owned by the Scheduler; nothing here touches tensors.
#pragma once

#include <cstdint>
#include <vector>

#include "types.h"

namespace editx::sched {

// Progress of one request's streaming decoder over its generated audio ids.
struct DecoderStream {
  int32_t consumed = 0;     // ids the decoder window has advanced past
  int32_t chunks = 0;       // CHUNK items planned (selects the next chunk size)
  int32_t audio_items = 0;  // CHUNK / FINAL items planned (the first one is the TTFA item)
  bool setup_done = false;
  bool in_flight = false;   // an item was planned and the engine has not reported it done
  DecoderKind in_flight_kind = DecoderKind::kSetup;
  bool finished = false;    // the FINAL item completed
  bool has_audio = false;
  double first_audio_time = 0.0;
  double audio_seconds = 0.0;  // audio emitted so far, as reported by the engine
};

struct Request {
  RequestId id = -1;
  int32_t priority = 0;  // lower value = more important
  double arrival = 0.0;
  uint64_t admit_seq = 0;  // order of the latest admission (preemption takes the latest)

  std::vector<TokenId> tokens;         // prompt + generated ids
  int32_t num_prompt = 0;
  std::vector<uint64_t> block_hashes;  // chained hash of every full block of `tokens`

  std::vector<BlockId> table;  // KV blocks, position p lives in table[p / block_size]
  int32_t num_computed = 0;    // tokens whose KV the latest plan computes (or cached)
  int32_t num_committed = 0;   // tokens whose blocks are recorded in the prefix cache

  RequestState state = RequestState::kWaiting;
  bool llm_done = false;       // EOS / LENGTH reported; the decoder may still drain
  FinishReason reason = FinishReason::kEos;
  int32_t entry = -1;          // index of this step's schedule entry, -1 if none
  uint64_t batch_mark = 0;     // append_batch's duplicate check

  DecoderStream stream;

  int32_t num_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t num_generated() const { return num_tokens() - num_prompt; }
};

}  // namespace editx::sched
