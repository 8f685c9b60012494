// pybind11 module `editx._scheduler`: the C++ scheduler as seen from Python.
//
// Plans come back as one StepPlan object whose array attributes are numpy views of its own
// buffers (no per-element conversion); inputs accept lists or numpy integer arrays.
// Errors: bad input -> editx.errors.InvalidInputError, broken invariants -> AssertionError.
// step(), submit() and append_batch() release the GIL while they run, so other threads can
// submit and cancel meanwhile (the scheduler's own mutex serialises them).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "scheduler/errors.h"
#include "scheduler/scheduler.h"

namespace py = pybind11;
namespace s = editx::sched;

namespace {

using IdArray = py::array_t<int64_t, py::array::c_style>;

// Lists of ints and integer numpy arrays convert; floats, nesting and empty input are refused
// (numpy would truncate 1.5 to 1 if asked for int64 directly, so the dtype is checked first).
IdArray as_id_array(const py::handle& obj, const char* arg) {
  const std::string expected = std::string(arg) + ": expected a non-empty 1-D sequence of ints";
  py::array any = py::array::ensure(obj);
  if (!any || any.ndim() != 1 || any.size() == 0) throw s::InputError(expected);
  const char kind = any.dtype().kind();
  if (kind != 'i' && kind != 'u' && kind != 'b') throw s::InputError(expected);
  IdArray ids = IdArray::ensure(any);  // a safe cast: uint64 beyond int64 is refused
  if (!ids) throw s::InputError(expected);
  return ids;
}

// numpy view of a plan buffer; `owner` (the Python StepPlan) keeps the memory alive.
template <typename T>
py::array view(const std::vector<T>& data, const py::object& owner) {
  return py::array_t<T>({static_cast<py::ssize_t>(data.size())}, {static_cast<py::ssize_t>(sizeof(T))}, data.data(),
                        owner);
}

py::array bool_view(const std::vector<uint8_t>& data, const py::object& owner) {
  return py::array(py::dtype("bool"), {static_cast<py::ssize_t>(data.size())}, {py::ssize_t{1}}, data.data(), owner);
}

void raise_invalid_input(const char* message) {
  py::object type;
  try {
    type = py::module_::import("editx.errors").attr("InvalidInputError");
  } catch (const py::error_already_set&) {
    type = py::reinterpret_borrow<py::object>(PyExc_ValueError);  // editx not importable: plain ValueError
  }
  PyErr_SetString(type.ptr(), message);
}

void translate_errors(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const s::InputError& e) {
    raise_invalid_input(e.what());
  } catch (const s::InvariantError& e) {
    PyErr_SetString(PyExc_AssertionError, e.what());
  }
}

py::dict stats_dict(const s::Stats& st) {
  py::dict d;
  d["num_blocks"] = st.num_blocks;
  d["free_blocks"] = st.free_blocks;
  d["used_blocks"] = st.used_blocks;
  d["cached_blocks"] = st.cached_blocks;
  d["waiting"] = st.waiting;
  d["running"] = st.running;
  d["draining"] = st.draining;
  d["steps"] = st.steps;
  d["submitted"] = st.submitted;
  d["ended"] = st.ended;
  d["preemptions"] = st.preemptions;
  d["prefix_hit_tokens"] = st.prefix_hit_tokens;
  d["copied_blocks"] = st.copied_blocks;
  d["ttfa_misses"] = st.ttfa_misses;
  d["underruns"] = st.underruns;
  return d;
}

py::dict progress_dict(const s::RequestProgress& p) {
  py::dict d;
  d["state"] = static_cast<int32_t>(p.state);
  d["priority"] = p.priority;
  d["num_prompt_tokens"] = p.num_prompt_tokens;
  d["num_tokens"] = p.num_tokens;
  d["num_computed_tokens"] = p.num_computed_tokens;
  d["generated"] = p.generated;
  d["decoder_consumed"] = p.decoder_consumed;
  d["decoder_in_flight"] = p.decoder_in_flight;
  d["audio_seconds"] = p.audio_seconds;
  return d;
}

void bind_config(py::module_& m) {
  py::class_<s::Config>(m, "Config", "Scheduling policy (see editx.engine.scheduler.SchedulerConfig).")
      .def(py::init<>())
      .def_readwrite("block_size", &s::Config::block_size)
      .def_readwrite("num_blocks", &s::Config::num_blocks)
      .def_readwrite("max_num_seqs", &s::Config::max_num_seqs)
      .def_readwrite("max_num_batched_tokens", &s::Config::max_num_batched_tokens)
      .def_readwrite("max_prefill_chunk", &s::Config::max_prefill_chunk)
      .def_readwrite("max_model_len", &s::Config::max_model_len)
      .def_readwrite("admission_reserve_blocks", &s::Config::admission_reserve_blocks)
      .def_readwrite("enable_prefix_caching", &s::Config::enable_prefix_caching)
      .def_readwrite("max_decoder_batch", &s::Config::max_decoder_batch)
      .def_readwrite("ttfa_target_s", &s::Config::ttfa_target_s)
      .def_readwrite("decoder_chunk_frames", &s::Config::decoder_chunk_frames)
      .def_readwrite("decoder_lookahead_frames", &s::Config::decoder_lookahead_frames)
      .def_readwrite("decoder_holdback_ids", &s::Config::decoder_holdback_ids);
}

void bind_decoder_item(py::module_& m) {
  py::class_<s::DecoderItem>(m, "DecoderItem",
                             "One token2wav job: feed audio ids [start, start + num_feed), then advance the "
                             "stream by num_ids. kind: 0 SETUP, 1 CHUNK, 2 FINAL.")
      .def_readonly("req_id", &s::DecoderItem::req_id)
      .def_property_readonly("kind", [](const s::DecoderItem& d) { return static_cast<int32_t>(d.kind); })
      .def_readonly("start", &s::DecoderItem::start)
      .def_readonly("num_ids", &s::DecoderItem::num_ids)
      .def_readonly("num_feed", &s::DecoderItem::num_feed)
      .def_readonly("is_first", &s::DecoderItem::is_first)
      .def_readonly("is_last", &s::DecoderItem::is_last)
      .def_readonly("deadline", &s::DecoderItem::deadline)
      .def("__repr__", [](const s::DecoderItem& d) {
        return "DecoderItem(req_id=" + std::to_string(d.req_id) + ", kind=" + std::to_string(static_cast<int>(d.kind)) +
               ", start=" + std::to_string(d.start) + ", num_ids=" + std::to_string(d.num_ids) +
               ", num_feed=" + std::to_string(d.num_feed) + ")";
      });
}

// A read-only attribute returning a numpy view of one of the plan's vectors.
template <typename T>
void def_view(py::class_<s::StepPlan>& cls, const char* name, std::vector<T> s::StepPlan::*member, const char* doc) {
  cls.def_property_readonly(
      name, [member](py::object self) { return view(self.cast<const s::StepPlan&>().*member, self); }, doc);
}

py::array block_table_view(const py::object& self, py::ssize_t i) {
  const auto& p = self.cast<const s::StepPlan&>();
  const auto n = static_cast<py::ssize_t>(p.scheduled_req_ids.size());
  if (i < 0 || i >= n) throw s::InputError("i: expected 0 <= i < " + std::to_string(n));
  const int32_t lo = p.block_table_offsets[i], hi = p.block_table_offsets[i + 1];
  return py::array_t<int32_t>({static_cast<py::ssize_t>(hi - lo)}, {py::ssize_t{4}}, p.block_table_ids.data() + lo,
                              self);
}

py::array copies_view(const py::object& self) {
  const auto& c = self.cast<const s::StepPlan&>().copies;
  const auto rows = static_cast<py::ssize_t>(c.size() / 2);
  return py::array_t<int32_t>({rows, py::ssize_t{2}}, {py::ssize_t{8}, py::ssize_t{4}}, c.data(), self);
}

void bind_plan(py::module_& m) {
  using P = s::StepPlan;
  py::class_<P> cls(m, "StepPlan", "One engine step (see editx.engine.scheduler for the protocol).");
  cls.def_readonly("step", &P::step)
      .def_readonly("now", &P::now)
      .def_readonly("num_scheduled_tokens", &P::num_scheduled_tokens);
  def_view(cls, "prefill_req_ids", &P::prefill_req_ids, "int64 [P] requests with a prefill chunk");
  def_view(cls, "prefill_starts", &P::prefill_starts, "int32 [P] first position to compute (cached prefix skipped)");
  def_view(cls, "prefill_counts", &P::prefill_counts, "int32 [P] tokens in the chunk");
  cls.def_property_readonly(
      "prefill_is_last", [](py::object self) { return bool_view(self.cast<const P&>().prefill_is_last, self); },
      "bool [P] the chunk reaches the request's last token: sample after it");
  def_view(cls, "decode_req_ids", &P::decode_req_ids, "int64 [D] requests decoding one token");
  def_view(cls, "decode_positions", &P::decode_positions, "int32 [D] position of that token");
  def_view(cls, "scheduled_req_ids", &P::scheduled_req_ids, "int64 [S = P + D] prefills, then decodes");
  def_view(cls, "context_lens", &P::context_lens, "int32 [S] keys visible to each sequence's last new token");
  def_view(cls, "block_table_offsets", &P::block_table_offsets, "int32 [S + 1] CSR offsets into block_table_ids");
  def_view(cls, "block_table_ids", &P::block_table_ids, "int32 block tables of the scheduled sequences, back to back");
  def_view(cls, "preempted_req_ids", &P::preempted_req_ids, "int64 requests that lost their KV this step");
  cls.def_property_readonly("copies", &copies_view,
                            "int32 [C, 2] (src, dst) block copies to run (gather then scatter) before the forward")
      .def_readonly("decoder", &P::decoder, "Decoder items, most urgent first.")
      .def_readonly("ended", &P::ended, "(req_id, FinishReason) of requests that ended since the last step.")
      .def("block_table", &block_table_view, py::arg("i"), "Block table of the i-th scheduled sequence (a view).");
}

void bind_scheduler(py::module_& m) {
  using S = s::Scheduler;
  py::class_<S>(m, "Scheduler", "The C++ request scheduler (see editx.engine.scheduler for the protocol).")
      .def(py::init<s::Config>(), py::arg("config"))
      .def_property_readonly("config", &S::config)
      .def(
          "submit",
          [](S& self, const py::handle& prompt_ids, double arrival, int64_t priority) {
            IdArray ids = as_id_array(prompt_ids, "prompt_ids");
            py::gil_scoped_release unlocked;
            return self.submit(ids.data(), ids.size(), arrival, priority);
          },
          py::arg("prompt_ids"), py::kw_only(), py::arg("arrival"), py::arg("priority") = 0,
          "Queue a request (prompt token ids, arrival time in seconds); returns its id.")
      .def("cancel", &S::cancel, py::arg("req_id"), "End a request now (any thread); False if it had ended.")
      .def(
          "finish",
          [](S& self, int64_t id, int32_t reason) { return self.finish(id, static_cast<s::FinishReason>(reason)); },
          py::arg("req_id"), py::arg("reason"),
          "EOS/LENGTH: the LLM is done (blocks freed, decoder drains); ERROR: end now. False if already ended.")
      .def(
          "append_tokens",
          [](S& self, int64_t id, const py::handle& ids) {
            IdArray arr = as_id_array(ids, "ids");
            return self.append_tokens(id, arr.data(), arr.size());
          },
          py::arg("req_id"), py::arg("ids"), "Append sampled ids to a request; False if it had ended.")
      .def(
          "append_batch",
          [](S& self, const py::handle& req_ids, const py::handle& token_ids) {
            IdArray ids = as_id_array(req_ids, "req_ids");
            IdArray toks = as_id_array(token_ids, "token_ids");
            if (ids.size() != toks.size()) throw s::InputError("token_ids: expected one token id per request id");
            py::gil_scoped_release unlocked;
            return self.append_batch(ids.data(), toks.data(), ids.size());
          },
          py::arg("req_ids"), py::arg("token_ids"),
          "Append one sampled id per request (all validated first); returns how many were alive.")
      .def("step", &S::step, py::arg("now"), py::call_guard<py::gil_scoped_release>(), "Plan one engine step.")
      .def("decoder_done", &S::decoder_done, py::arg("req_id"), py::arg("audio_seconds"), py::arg("now"),
           "The request's in-flight decoder item ran and emitted audio_seconds of audio.")
      .def("stats", [](const S& self) { return stats_dict(self.stats()); }, "Counters and gauges (a dict).")
      .def("state", [](const S& self, int64_t id) { return static_cast<int32_t>(self.state(id)); }, py::arg("req_id"),
           "RequestState value of a request.")
      .def("progress", [](const S& self, int64_t id) { return progress_dict(self.progress(id)); }, py::arg("req_id"),
           "Where a request stands: state, token counts, LLM-generated vs decoder-consumed ids, audio seconds.")
      .def("block_table", &S::block_table, py::arg("req_id"), "Current block table (a list; empty unless running).")
      .def("check_invariants", &S::check_invariants,
           "Raise AssertionError if reference counts, free list, indexes or queues disagree.");
}

}  // namespace

PYBIND11_MODULE(_scheduler, m) {
  m.doc() =
      "editx-rt request scheduler (C++17): chunked prefill, paged KV with prefix sharing, streaming decoder plan.";
  py::register_exception_translator(&translate_errors);
  bind_config(m);
  bind_decoder_item(m);
  bind_plan(m);
  bind_scheduler(m);
}
