// Scheduling policy parameters (validated once, at construction).
#pragma once

#include <cstdint>
#include <vector>

namespace editx::sched {

struct Config {
  int32_t block_size = 16;                 // tokens per KV block
  int32_t num_blocks = 8192;               // KV blocks in the pool
  int32_t max_num_seqs = 256;              // running (KV-holding) requests at most
  int32_t max_num_batched_tokens = 2048;   // tokens computed per step at most (>= max_num_seqs)
  int32_t max_prefill_chunk = 0;           // prefill tokens per request per step; 0: budget only
  int32_t max_model_len = 8192;            // prompt + generated tokens per request
  int32_t admission_reserve_blocks = 0;    // free blocks admission leaves for running decodes
  bool enable_prefix_caching = true;
  int32_t max_decoder_batch = 16;          // decoder items per step at most
  double ttfa_target_s = 0.25;             // first-audio deadline after arrival
  std::vector<int32_t> decoder_chunk_frames{15, 24, 48};  // spec §6; the last repeats
  int32_t decoder_lookahead_frames = 3;    // spec §6 pre_lookahead_len
  int32_t decoder_holdback_ids = 1;        // newest generated ids the decoder never sees yet
                                           // (upstream drops the last generated id, spec §4.6)
};

// Throws InputError naming the first bad field.
void validate(const Config& config);

// Mixed audio ids holding `frames` token frames: (frames / 3) * 5, as upstream rounds (spec §11.5).
inline int32_t mixed_ids_for_frames(int32_t frames) { return frames / 3 * 5; }

}  // namespace editx::sched
