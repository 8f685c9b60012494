#include "config.h"

#include <cmath>
#include <string>

#include "errors.h"

namespace editx::sched {
namespace {

void require_at_least(const char* name, int64_t value, int64_t lowest) {
  require(value >= lowest, std::string("config.") + name + ": expected >= " + std::to_string(lowest) +
                               ", got " + std::to_string(value));
}

}  // namespace

void validate(const Config& c) {
  require_at_least("block_size", c.block_size, 1);
  require_at_least("num_blocks", c.num_blocks, 1);
  require_at_least("max_num_seqs", c.max_num_seqs, 1);
  // Every running request must be able to decode each step, or decodes would starve.
  require_at_least("max_num_batched_tokens", c.max_num_batched_tokens, c.max_num_seqs);
  require_at_least("max_prefill_chunk", c.max_prefill_chunk, 0);
  require_at_least("max_model_len", c.max_model_len, 1);
  // A request alone must always fit the pool; otherwise it would be preempted forever.
  const int64_t pool_tokens = static_cast<int64_t>(c.num_blocks) * c.block_size;
  require(pool_tokens >= c.max_model_len,
          "config.num_blocks: " + std::to_string(c.num_blocks) + " blocks of " + std::to_string(c.block_size) +
              " tokens cannot hold one request of max_model_len " + std::to_string(c.max_model_len));
  require_at_least("admission_reserve_blocks", c.admission_reserve_blocks, 0);
  require(c.admission_reserve_blocks < c.num_blocks, "config.admission_reserve_blocks: must be < num_blocks");
  require_at_least("max_decoder_batch", c.max_decoder_batch, 1);
  require(std::isfinite(c.ttfa_target_s) && c.ttfa_target_s > 0,
          "config.ttfa_target_s: expected a finite number > 0");
  require(!c.decoder_chunk_frames.empty(), "config.decoder_chunk_frames: expected at least one chunk size");
  for (int32_t frames : c.decoder_chunk_frames) {
    require_at_least("decoder_chunk_frames[i]", frames, 3);  // fewer than 3 frames hold no ids
  }
  require_at_least("decoder_lookahead_frames", c.decoder_lookahead_frames, 3);
  require_at_least("decoder_holdback_ids", c.decoder_holdback_ids, 0);
}

}  // namespace editx::sched
