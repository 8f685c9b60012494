// The streaming decoder rule: set-up after 5 ids, chunks of 15/24/48 frames (25/40/80 ids)
// plus 5 lookahead ids, and a final flush; urgency deadlines.
#include "check.h"
#include "scheduler/decoder_plan.h"

using namespace editx::sched;

namespace {

struct Seen {
  DecoderKind kind;
  int32_t available;  // ids available when the item became ready
  int32_t start, num_ids, num_feed;
};

// Makes one more id available at a time (decoder always idle), then ends the LLM.
std::vector<Seen> drive(int32_t total, const StreamRule& rule) {
  DecoderStream s;
  std::vector<Seen> out;
  for (int32_t available = 0; available <= total; ++available) {
    const bool done = available == total;
    while (true) {
      const StreamAction a = next_stream_action(s, available, done, rule);
      if (!a.ready) break;
      out.push_back({a.kind, available, a.start, a.num_ids, a.num_feed});
      start_stream_action(s, 0, a, 0.0);
      s.in_flight = false;
      if (a.kind == DecoderKind::kFinal) return out;
    }
  }
  return out;
}

StreamRule default_rule() { return StreamRule::from_config(Config{}); }

}  // namespace

TEST_CASE(frames_round_down_to_whole_groups) {
  CHECK_EQ(mixed_ids_for_frames(15), 25);
  CHECK_EQ(mixed_ids_for_frames(24), 40);
  CHECK_EQ(mixed_ids_for_frames(48), 80);
  CHECK_EQ(mixed_ids_for_frames(16), 25);
  CHECK_EQ(mixed_ids_for_frames(3), 5);
}

TEST_CASE(setup_then_15_24_48_frame_chunks_then_final) {
  const auto seen = drive(200, default_rule());
  CHECK_EQ(seen.size(), 5u);
  CHECK(seen[0].kind == DecoderKind::kSetup && seen[0].available == 5 && seen[0].num_ids == 0 && seen[0].num_feed == 5);
  CHECK(seen[1].kind == DecoderKind::kChunk && seen[1].available == 30 && seen[1].start == 0);
  CHECK_EQ(seen[1].num_ids, 25);
  CHECK_EQ(seen[1].num_feed, 30);
  CHECK(seen[2].kind == DecoderKind::kChunk && seen[2].available == 70 && seen[2].start == 25);
  CHECK_EQ(seen[2].num_ids, 40);
  CHECK(seen[3].kind == DecoderKind::kChunk && seen[3].available == 150 && seen[3].start == 65);
  CHECK_EQ(seen[3].num_ids, 80);
  CHECK(seen[4].kind == DecoderKind::kFinal && seen[4].start == 145);
  CHECK_EQ(seen[4].num_ids, 55);
  CHECK_EQ(seen[4].num_feed, 55);
}

TEST_CASE(final_absorbs_a_chunk_completed_by_the_last_id) {
  // 30 ids: the chunk would be ready exactly at the last id; upstream flushes instead.
  const auto seen = drive(30, default_rule());
  CHECK_EQ(seen.size(), 2u);
  CHECK(seen[1].kind == DecoderKind::kFinal);
  CHECK_EQ(seen[1].num_ids, 30);
}

TEST_CASE(a_late_decoder_still_cuts_upstream_chunks_before_the_final) {
  const StreamRule rule = default_rule();
  DecoderStream s;
  start_stream_action(s, 0, next_stream_action(s, 100, false, rule), 0.0);  // setup
  s.in_flight = false;
  StreamAction a = next_stream_action(s, 100, true, rule);  // LLM done with 100 ids buffered
  CHECK(a.kind == DecoderKind::kChunk && a.num_ids == 25);
  start_stream_action(s, 0, a, 0.0);
  s.in_flight = false;
  a = next_stream_action(s, 100, true, rule);  // 75 left <= 40 + 5? no: another chunk
  CHECK(a.kind == DecoderKind::kChunk && a.num_ids == 40);
  start_stream_action(s, 0, a, 0.0);
  s.in_flight = false;
  a = next_stream_action(s, 100, true, rule);
  CHECK(a.kind == DecoderKind::kFinal && a.start == 65 && a.num_ids == 35);
}

TEST_CASE(nothing_while_in_flight_and_no_start_without_lookahead) {
  const StreamRule rule = default_rule();
  DecoderStream s;
  CHECK(!next_stream_action(s, 4, false, rule).ready);
  CHECK(!stream_cannot_start(s, 4, false, rule));
  CHECK(stream_cannot_start(s, 4, true, rule));
  start_stream_action(s, 0, next_stream_action(s, 5, false, rule), 0.0);
  CHECK(s.in_flight);
  CHECK(!next_stream_action(s, 500, true, rule).ready);
}

TEST_CASE(deadline_is_ttfa_then_playback) {
  DecoderStream s;
  CHECK_EQ(stream_deadline(s, 10.0, 0.25), 10.25);
  s.has_audio = true;
  s.first_audio_time = 11.0;
  s.audio_seconds = 0.5;
  CHECK_EQ(stream_deadline(s, 10.0, 0.25), 11.5);
}

TEST_CASE(holdback_hides_the_newest_ids) {
  Config c;
  c.decoder_holdback_ids = 1;
  const StreamRule rule = StreamRule::from_config(c);
  Request r;
  r.num_prompt = 3;
  r.tokens = {1, 2, 3};
  CHECK_EQ(decodable_ids(r, rule), 0);
  r.tokens.insert(r.tokens.end(), {7, 8});
  CHECK_EQ(decodable_ids(r, rule), 1);
}

TEST_CASE(first_audio_item_is_marked) {
  const StreamRule rule = default_rule();
  DecoderStream s;
  const DecoderItem setup = start_stream_action(s, 3, next_stream_action(s, 40, false, rule), 1.0);
  s.in_flight = false;
  const DecoderItem first = start_stream_action(s, 3, next_stream_action(s, 40, false, rule), 1.0);
  s.in_flight = false;
  CHECK(!setup.is_first && first.is_first && !first.is_last);
  CHECK_EQ(first.req_id, 3);
}

int main() { return check::run_all_tests(); }
