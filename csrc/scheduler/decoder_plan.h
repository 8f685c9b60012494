// The streaming decoder's chunk rule (spec §6, as editx.models.flow.streaming drives it) and
// the urgency of each stream. Pure functions over a DecoderStream; no locking.
#pragma once

#include <cstdint>
#include <vector>

#include "config.h"
#include "request.h"

namespace editx::sched {

struct StreamRule {
  std::vector<int32_t> chunk_ids;  // mixed ids per chunk; the last size repeats
  int32_t lookahead_ids = 5;
  int32_t holdback_ids = 1;
  double ttfa_target_s = 0.25;

  static StreamRule from_config(const Config& config);
  int32_t chunk_ids_at(int32_t index) const;
};

struct StreamAction {
  bool ready = false;
  DecoderKind kind = DecoderKind::kSetup;
  int32_t start = 0;
  int32_t num_ids = 0;
  int32_t num_feed = 0;
};

// Ids the decoder may use: all generated ids but the newest `holdback` ones.
inline int32_t decodable_ids(const Request& r, const StreamRule& rule) {
  const int32_t n = r.num_generated() - rule.holdback_ids;
  return n > 0 ? n : 0;
}

// The stream's next item, if one is ready. SETUP once lookahead ids exist; CHUNK once
// chunk + lookahead ids are buffered; FINAL (everything left) once the LLM is done and at
// most one chunk + lookahead remain, so chunk boundaries match upstream's one-id-per-call
// driver however late the decoder runs.
StreamAction next_stream_action(const DecoderStream& s, int32_t available, bool llm_done, const StreamRule& rule);

// True when the stream can never produce another item (the LLM ended before SETUP was possible).
bool stream_cannot_start(const DecoderStream& s, int32_t available, bool llm_done, const StreamRule& rule);

// When the stream's next audio is due: arrival + TTFA target before its first audio, then
// first-audio time + seconds of audio emitted (playback runs dry at that moment).
inline double stream_deadline(const DecoderStream& s, double arrival, double ttfa_target_s) {
  return s.has_audio ? s.first_audio_time + s.audio_seconds : arrival + ttfa_target_s;
}

// Marks `action` as planned on the stream; returns the item to hand to the engine.
DecoderItem start_stream_action(DecoderStream& s, RequestId id, const StreamAction& action, double deadline);

}  // namespace editx::sched
