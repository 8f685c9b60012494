"""Scheduler API: config validation, bad input -> InvalidInputError naming the argument,
plan field types identical in both implementations, the facade and the extension build."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import editx
from editx.engine.scheduler import (FinishReason, PyScheduler, RequestState, Scheduler, SchedulerConfig,
                                    make_scheduler, plan_to_dict)
from editx.errors import InvalidInputError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["cpp", "python"])
def sched(request):
    return make_scheduler(SchedulerConfig.tiny(), request.param)


# ---- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("block_size", 0), ("num_blocks", 0), ("max_num_seqs", 0), ("max_num_batched_tokens", 7),
    ("max_prefill_chunk", -1), ("max_model_len", 0), ("admission_reserve_blocks", 256),
    ("max_decoder_batch", 0), ("ttfa_target_s", 0.0), ("ttfa_target_s", float("nan")),
    ("decoder_chunk_frames", ()), ("decoder_chunk_frames", (15, 2)), ("decoder_lookahead_frames", 2),
    ("decoder_holdback_ids", -1), ("block_size", True), ("enable_prefix_caching", 1), ("num_blocks", 1.5),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(InvalidInputError, match=field):
        SchedulerConfig.tiny(**{field: value})


def test_pool_must_hold_one_full_length_request():
    with pytest.raises(InvalidInputError, match="num_blocks"):
        SchedulerConfig(block_size=16, num_blocks=10, max_model_len=8192)


def test_native_config_validation_matches():
    cfg = SchedulerConfig.tiny().to_native()
    cfg.max_num_batched_tokens = 1  # bypasses the dataclass: the C++ check still names it
    with pytest.raises(InvalidInputError, match="max_num_batched_tokens"):
        editx._scheduler.Scheduler(cfg)


def test_presets_and_flow_config():
    full = SchedulerConfig.full()
    assert (full.max_model_len, full.decoder_chunk_frames, full.decoder_lookahead_frames) == (8192, (15, 24, 48), 3)
    flow = type("Flow", (), {"chunk_sizes": [15, 24, 48], "encoder": type("Enc", (), {"pre_lookahead_len": 3})()})()
    assert SchedulerConfig.from_flow(flow, num_blocks=600).decoder_chunk_frames == (15, 24, 48)
    assert Scheduler(SchedulerConfig.tiny()).config == SchedulerConfig.tiny()
    with pytest.raises(InvalidInputError, match="config"):
        Scheduler({"block_size": 4})
    with pytest.raises(InvalidInputError, match="impl"):
        make_scheduler(None, "rust")


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", [[], [1.5], [[1, 2]], [-1], "abc", [2**70], list(range(513))])
def test_submit_rejects_bad_prompts(sched, prompt):
    with pytest.raises(InvalidInputError, match="prompt_ids"):
        sched.submit(prompt, arrival=0.0)
    assert sched.stats()["submitted"] == 0


def test_submit_accepts_lists_tuples_and_integer_arrays(sched):
    for ids in ([1, 2], (3, 4), np.array([5, 6], np.int32), np.array([7], np.uint16)):
        sched.submit(ids, arrival=0.0)
    assert sched.stats()["waiting"] == 4


def test_bad_times_and_ids(sched):
    rid = sched.submit([1, 2, 3], arrival=0.0)
    with pytest.raises(InvalidInputError, match="arrival"):
        sched.submit([1], arrival=float("inf"))
    with pytest.raises(InvalidInputError, match="priority"):
        sched.submit([1], arrival=0.0, priority=2**40)
    with pytest.raises(InvalidInputError, match="now"):
        sched.step(float("nan"))
    for call in (lambda: sched.cancel(42), lambda: sched.state(-1), lambda: sched.block_table(42),
                 lambda: sched.progress(42),
                 lambda: sched.finish(42, FinishReason.EOS), lambda: sched.append_tokens(42, [1])):
        with pytest.raises(InvalidInputError, match="req_id"):
            call()
    with pytest.raises(InvalidInputError, match="reason"):
        sched.finish(rid, FinishReason.CANCELLED)
    with pytest.raises(InvalidInputError, match="audio_seconds"):
        sched.decoder_done(rid, -1.0, 0.0)


def test_protocol_errors_leave_the_scheduler_unchanged(sched):
    rid = sched.submit([1, 2, 3], arrival=0.0)
    with pytest.raises(InvalidInputError, match="not running"):
        sched.append_tokens(rid, [5])  # still waiting
    sched.step(0.0)
    sched.append_tokens(rid, [5])
    with pytest.raises(InvalidInputError, match="uncomputed"):
        sched.append_tokens(rid, [6])  # the engine has not run the next plan yet
    with pytest.raises(InvalidInputError, match="in flight"):
        sched.decoder_done(rid, 0.1, 0.0)
    with pytest.raises(InvalidInputError, match="twice"):
        sched.step(0.0)
        sched.append_batch([rid, rid], [1, 2])
    with pytest.raises(InvalidInputError, match="token_ids"):
        sched.append_batch([rid], [1, 2])
    for _ in range(6):  # enough ids for the decoder, so the request drains after EOS
        sched.append_tokens(rid, [9])
        sched.step(0.0)
    assert sched.finish(rid, FinishReason.EOS)
    assert sched.state(rid) == RequestState.DRAINING
    with pytest.raises(InvalidInputError, match="already finished"):
        sched.finish(rid, FinishReason.LENGTH)
    with pytest.raises(InvalidInputError, match="max_model_len"):
        other = sched.submit(list(range(512)), arrival=0.0)
        for _ in range(20):
            sched.step(0.0)
        sched.append_tokens(other, [1])
    sched.check_invariants()


def test_calls_on_ended_requests_return_false(sched):
    rid = sched.submit([1, 2, 3], arrival=0.0)
    sched.step(0.0)
    assert sched.cancel(rid)
    assert not sched.cancel(rid)
    assert not sched.finish(rid, FinishReason.ERROR)
    assert not sched.append_tokens(rid, [1])
    assert sched.append_batch([rid], [1]) == 0
    assert not sched.decoder_done(rid, 0.1, 0.0)
    assert sched.state(rid) == RequestState.ENDED and sched.block_table(rid) == []


# ---- plan types -----------------------------------------------------------------------------

def test_both_plans_have_the_same_fields_and_dtypes():
    plans = []
    for impl in ("cpp", "python"):
        s = make_scheduler(SchedulerConfig.tiny(), impl)
        s.submit(list(range(9)), arrival=0.0)
        plans.append(s.step(0.25))
    cpp, py = plans
    for name in ("prefill_req_ids", "prefill_starts", "prefill_counts", "prefill_is_last", "decode_req_ids",
                 "decode_positions", "scheduled_req_ids", "context_lens", "block_table_offsets", "block_table_ids",
                 "copies", "preempted_req_ids"):
        a, b = getattr(cpp, name), getattr(py, name)
        assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, name
    assert cpp.copies.shape == (0, 2)
    assert cpp.now == py.now == 0.25
    assert plan_to_dict(cpp) == plan_to_dict(py)
    assert cpp.block_table(0).tolist() == [0, 1, 2]
    with pytest.raises(InvalidInputError, match="i"):
        cpp.block_table(1)


def test_plan_arrays_outlive_the_plan_object():
    s = Scheduler(SchedulerConfig.tiny())
    s.submit(list(range(9)), arrival=0.0)
    table = s.step(0.0).block_table_ids  # views keep their plan alive
    assert table.tolist() == [0, 1, 2]


def test_stats_keys_match():
    a = Scheduler(SchedulerConfig.tiny()).stats()
    b = PyScheduler(SchedulerConfig.tiny()).stats()
    assert a == b and a["free_blocks"] == a["num_blocks"] == 256


def test_invariant_violation_is_an_assertion_error():
    # Corrupt the Python reference on purpose: the check must notice.
    s = PyScheduler(SchedulerConfig.tiny())
    s.submit([1, 2, 3], arrival=0.0)
    s.step(0.0)
    s._pool.ref[0] += 1
    with pytest.raises(AssertionError, match="block 0"):
        s.check_invariants()


# ---- the extension -----------------------------------------------------------------------

def test_extension_imports_from_any_directory(tmp_path):
    code = "import editx._scheduler as s, editx.engine.scheduler as m; print(s.__file__); m.Scheduler()"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "_scheduler" in out.stdout


def test_missing_extension_is_a_loud_import_error(tmp_path):
    # Hide the built module: the facade must say how to build it, not fall back to Python.
    code = ("import sys; sys.modules['editx._scheduler'] = None\n"
            "try:\n    import editx.engine.scheduler\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("ERR") and "pip install -e ." in out.stdout


def test_scheduler_module_does_not_need_torch():
    # The scheduler itself never imports torch (editx/__init__ does, so block it at the
    # package level and import the two modules by path).
    code = (
        "import importlib.util, sys, types\n"
        "sys.modules['torch'] = None\n"
        f"pkg = types.ModuleType('editx'); pkg.__path__ = [{str(REPO / 'runtime')!r}]; sys.modules['editx'] = pkg\n"
        "import editx.errors, editx._scheduler\n"
        f"eng = types.ModuleType('editx.engine'); eng.__path__ = [{str(REPO / 'runtime' / 'engine')!r}]\n"
        "sys.modules['editx.engine'] = eng\n"
        "import editx.engine.scheduler as m; m.Scheduler(m.SchedulerConfig.tiny()).step(0.0); print('ok')\n"
    )
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "ok", out.stderr
