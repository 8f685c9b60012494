"""The end-to-end benchmark scripts still run (tiny settings, CPU) and write what they promise.

They are the tools of the time-boxed GPU check (benchmarks/gpu_check.sh): one that rots is found
there, with minutes of device time lost. Numbers are not checked here — only that each script
completes and writes well-formed results.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import speech_clips

REPO = Path(__file__).resolve().parents[2]
AUDIO = speech_clips.PROMPT


def run(script: str, *args: str, timeout: int = 240) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "e2e" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_stream_benchmark_writes_levels_and_the_ttfa_split(tmp_path):
    if not AUDIO.is_file():
        pytest.skip("speech clips not found (../shared/audio)")
    out = tmp_path / "stream.json"
    run("bench_stream.py", "--concurrency", "1", "2", "--tokens", "40", "--prompt-audio", str(AUDIO),
        "--voices", "cold", "cached", "distinct", "--no-plot", "--out", str(out))
    payload = json.loads(out.read_text())
    assert payload["complete"] and [lv["concurrency"] for lv in payload["levels"]] == [1, 1, 1, 2, 2, 2]
    # one front end for a shared cold voice, none for a cached one, one per request for distinct voices
    assert [(lv["voice"], lv["front_ends_run"]) for lv in payload["levels"]] == [
        ("cold", 1), ("cached", 0), ("distinct", 1), ("cold", 1), ("cached", 0), ("distinct", 2)]
    assert all(set(lv["ttfa_parts_ms_p50"]) == {"front_end", "to_first_token", "first_chunk_tokens", "decoder"}
               for lv in payload["levels"])
    assert not out.with_suffix(".svg").exists()
    dev = payload["streaming_vs_offline"]
    assert dev["mel"]["lengths"][0] == dev["mel"]["lengths"][1] > 0
    assert dev["audio_incl_nsf_noise"]["lengths"][0] == dev["audio_incl_nsf_noise"]["lengths"][1] > 0


@pytest.mark.parametrize("slots", ["off", "on"])
def test_decoder_profile_names_every_stage(tmp_path, slots):
    out = tmp_path / "profile.json"
    run("profile_decoder.py", "--chunks", "1", "--slots", slots, "--out", str(out))
    payload = json.loads(out.read_text())
    assert set(payload["stages"]) == {"flow.setup", "flow.encoder", "flow.dit_solve", "hift.vocode"}
    assert payload["stages"]["flow.setup"]["calls"] == 1 and payload["stages"]["flow.dit_solve"]["calls"] >= 2
    assert payload["top_ops"] and all(op["self_ms"] >= 0 for op in payload["top_ops"])


def test_decoder_batch_benchmark_runs(tmp_path):
    out = tmp_path / "decoder_batch.json"
    run("bench_decoder_batch.py", "--streams", "1", "2", "--rounds", "1", "--layouts", "ragged", "--out", str(out))
    levels = json.loads(out.read_text())["levels"]
    assert [lv["streams"] for lv in levels] == [1, 2] and all(lv["speedup"] > 0 for lv in levels)


def test_decoder_slots_benchmark_runs(tmp_path):
    out = tmp_path / "decoder_slots.json"
    run("bench_decoder_slots.py", "--streams", "2", "--rounds", "1", "--prompt-frames", "200", "--out", str(out))
    (level,) = json.loads(out.read_text())["levels"]
    assert level["streams"] == 2 and set(level) >= {"packed", "slots"}
    assert level["slots"]["first_audio_decoder_ms"] > 0 and level["slots"]["max_rel_diff_mel_vs_packed"] < 1e-3


def test_sampling_benchmark_runs(tmp_path):
    out = tmp_path / "sampling.json"
    run("bench_sampling.py", "--rows", "1", "3", "--out", str(out))
    levels = json.loads(out.read_text())["levels"]
    assert [lv["rows"] for lv in levels] == [1, 3] and all(lv["speedup"] > 0 for lv in levels)


def test_decode_fill_benchmark_runs(tmp_path):
    out = tmp_path / "decode_fill.json"
    run("bench_decode_fill.py", "--rows", "1", "9", "--rounds", "1", "--out", str(out))
    levels = json.loads(out.read_text())["levels"]
    assert [lv["rows"] for lv in levels] == [1, 9] and all(lv["per_row_us"] > 0 and lv["arrays_us"] > 0
                                                           for lv in levels)


def test_llm_step_benchmark_runs(tmp_path):
    out = tmp_path / "llm_step.json"
    run("bench_llm_step.py", "--model", "dummy:tiny", "--layers", "1", "--prefill", "20", "--repeats", "2",
        "--rounds", "1", "--out", str(out))
    payload = json.loads(out.read_text())
    assert payload["layers"] == 1 and payload["gemms_per_layer"] == {"unfused": 7, "fused": 4}
    assert set(payload["speedup_fused"]) == {"prefill", "decode_eager"}  # + decode_graphed on CUDA
    assert all(r["median"] > 0 and r["min"] > 0 for r in payload["speedup_fused"].values())
    # fp32 on the CPU: the same dot products, summed in another blocking at most
    assert max(payload["max_abs_logit_diff"].values()) < 1e-4


def test_server_benchmark_runs_api_and_http_paths(tmp_path):
    if not AUDIO.is_file():
        pytest.skip("speech clips not found (../shared/audio)")
    out = tmp_path / "server.json"
    run("bench_server.py", "--concurrency", "1", "--rounds", "1", "--tokens", "20", "--prompt-audio", str(AUDIO),
        "--out", str(out), timeout=400)
    paths = json.loads(out.read_text())["paths"]
    assert set(paths) == {"api", "http", "http_voice", "http_openai"}
    for name in ("http", "http_voice", "http_openai"):
        (level,) = paths[name]
        assert level["concurrency"] == 1 and level["audio_s"] > 0 and level["ttfa_vs_api"] > 0


def test_frontend_benchmark_times_both_encoder_paths(tmp_path):
    if not AUDIO.is_file():
        pytest.skip("speech clips not found (../shared/audio)")
    out = tmp_path / "frontend.json"
    run("bench_frontend.py", "--rounds", "1", "--prompt-audio", str(AUDIO), "--out", str(out))
    payload = json.loads(out.read_text())
    enc = payload["vq02_encoder"]
    assert enc["call_by_call"]["median_ms"] > 0 and enc["layerwise"]["median_ms"] > 0 and enc["calls"] > 1
    # fp32, same rows: summation order only (the unit tests' bound, test_vq02_layerwise.FP32_ATOL; measured 1.4e-6)
    assert enc["codes"] > 0 and enc["max_abs_diff"] < 1e-5
    chains = payload["encode_voice"]
    for mode in ("serial", "parallel"):
        assert set(chains[mode]["stages_median_ms"]) == {"preprocess_ms", "vq02_ms", "vq06_ms", "conditioning_ms",
                                                         "total_ms"}
    assert chains["speedup"] > 0
