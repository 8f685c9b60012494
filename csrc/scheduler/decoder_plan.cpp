#include "decoder_plan.h"

#include <algorithm>

namespace editx::sched {

StreamRule StreamRule::from_config(const Config& c) {
  StreamRule rule;
  for (int32_t frames : c.decoder_chunk_frames) rule.chunk_ids.push_back(mixed_ids_for_frames(frames));
  rule.lookahead_ids = mixed_ids_for_frames(c.decoder_lookahead_frames);
  rule.holdback_ids = c.decoder_holdback_ids;
  rule.ttfa_target_s = c.ttfa_target_s;
  return rule;
}

int32_t StreamRule::chunk_ids_at(int32_t index) const {
  const auto last = static_cast<int32_t>(chunk_ids.size()) - 1;
  return chunk_ids[std::min(index, last)];
}

StreamAction next_stream_action(const DecoderStream& s, int32_t available, bool llm_done, const StreamRule& rule) {
  if (s.in_flight || s.finished) return {};
  if (!s.setup_done) {
    if (available < rule.lookahead_ids) return {};
    return {true, DecoderKind::kSetup, 0, 0, rule.lookahead_ids};
  }
  const int32_t buffered = available - s.consumed;
  const int32_t chunk = rule.chunk_ids_at(s.chunks);
  if (llm_done && buffered <= chunk + rule.lookahead_ids) {
    return {true, DecoderKind::kFinal, s.consumed, buffered, buffered};
  }
  if (buffered >= chunk + rule.lookahead_ids) {
    return {true, DecoderKind::kChunk, s.consumed, chunk, chunk + rule.lookahead_ids};
  }
  return {};
}

bool stream_cannot_start(const DecoderStream& s, int32_t available, bool llm_done, const StreamRule& rule) {
  return llm_done && !s.setup_done && !s.in_flight && available < rule.lookahead_ids;
}

DecoderItem start_stream_action(DecoderStream& s, RequestId id, const StreamAction& a, double deadline) {
  DecoderItem item;
  item.req_id = id;
  item.kind = a.kind;
  item.start = a.start;
  item.num_ids = a.num_ids;
  item.num_feed = a.num_feed;
  item.deadline = deadline;
  item.is_last = a.kind == DecoderKind::kFinal;
  item.is_first = a.kind != DecoderKind::kSetup && s.audio_items == 0;
  if (a.kind == DecoderKind::kSetup) {
    s.setup_done = true;
  } else {
    ++s.audio_items;
    s.consumed += a.num_ids;
    if (a.kind == DecoderKind::kChunk) ++s.chunks;
  }
  s.in_flight = true;
  s.in_flight_kind = a.kind;
  return item;
}

}  // namespace editx::sched
