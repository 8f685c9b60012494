"""The `editx` command line, end to end on dummy:tiny."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editx.cli import main
from speech_clips import PROMPT

pytestmark = pytest.mark.skipif(not PROMPT.is_file(), reason=f"{PROMPT} not found")


def _check_wav(path: Path) -> None:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
    data, _ = sf.read(str(path), dtype="float32")
    assert len(data) > 0 and np.isfinite(data).all() and np.abs(data).max() > 0


def test_clone_console_script_writes_wav(tmp_path):
    # the console script installed beside this interpreter (not whatever `editx` is on PATH)
    exe = Path(sys.executable).parent / "editx"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "editx.cli"]
    out = tmp_path / "clone.wav"
    proc = subprocess.run(
        cmd + ["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text",
               "His political stance was conservative.", "--generated-text", "Hello from editx.",
               "--max-new-tokens", "60", "--output", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    _check_wav(out)
    assert "wrote" in proc.stderr  # visible progress


def test_edit_writes_one_file_per_iteration(tmp_path, capsys):
    rc = main(["edit", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text",
               "His political stance was conservative.", "--edit-type", "emotion", "--edit-info", "happy",
               "--n-edit-iter", "2", "--max-new-tokens", "40", "--output-dir", str(tmp_path)])
    assert rc == 0
    for k in (1, 2):
        _check_wav(tmp_path / f"{PROMPT.stem}_edited_iter{k}.wav")


def test_clone_default_name_in_output_dir(tmp_path):
    rc = main(["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
               "--text", "Hi.", "--max-new-tokens", "30", "--output-dir", str(tmp_path), "--quiet",
               "--onnx-provider", "cpu", "--onnx-threads", "1"])
    assert rc == 0
    _check_wav(tmp_path / f"{PROMPT.stem}_cloned.wav")


@pytest.mark.parametrize("argv, message", [
    (["edit", "--edit-type", "emotion", "--edit-info", "joyful"], "edit_info"),
    (["edit", "--edit-type", "paralinguistic"], "text"),
    (["clone", "--generated-text", "  "], "generated-text"),
    (["clone", "--generated-text", "Hi.", "--onnx-threads", "0"], "onnx_threads"),
])
def test_bad_arguments_exit_2_with_message(argv, message, capsys):
    base = ["--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "Some text."]
    rc = main(argv[:1] + base + argv[1:])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_prompt_file_exit_2(tmp_path, capsys):
    rc = main(["clone", "--model", "dummy:tiny", "--prompt-audio", str(tmp_path / "x.wav"), "--prompt-text", "a",
               "--text", "b"])
    assert rc == 2 and "x.wav" in capsys.readouterr().err


def test_missing_model_dir_exit_2(tmp_path, capsys):
    rc = main(["clone", "--model", str(tmp_path / "nope"), "--prompt-audio", str(PROMPT), "--prompt-text", "a",
               "--text", "b"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_stream_flag_writes_the_same_audio_as_collected(tmp_path):
    common = ["--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
              "--text", "Hi there.", "--max-new-tokens", "80", "--seed", "3", "--quiet"]
    assert main(["clone", *common, "--stream", "--output", str(tmp_path / "s.wav")]) == 0
    assert main(["clone", *common, "--output", str(tmp_path / "c.wav")]) == 0
    a, _ = sf.read(str(tmp_path / "s.wav"), dtype="int16")
    b, _ = sf.read(str(tmp_path / "c.wav"), dtype="int16")
    assert np.array_equal(a, b) and len(a) > 0


def test_offline_flag_runs_upstreams_decoder(tmp_path):
    rc = main(["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
               "--text", "Hi.", "--max-new-tokens", "30", "--offline", "--output", str(tmp_path / "o.wav"), "--quiet"])
    assert rc == 0
    _check_wav(tmp_path / "o.wav")


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "editx.cli", *args], capture_output=True, timeout=300, **kwargs)


def test_output_dash_streams_the_wav_to_stdout(tmp_path):
    """`--stream --output -` writes an open-ended WAV to stdout chunk by chunk (progress stays on stderr):
    the same samples as the streamed file; without --stream, the whole WAV."""
    common = ["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
              "--text", "Hi there.", "--max-new-tokens", "60", "--seed", "4"]
    streamed = _cli(*common, "--stream", "--output", "-")
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert streamed.stdout[:4] == b"RIFF" and b"chunk 0" in streamed.stderr
    assert main([*common, "--stream", "--quiet", "--output", str(tmp_path / "s.wav")]) == 0
    piped, sr = sf.read(io.BytesIO(streamed.stdout), dtype="int16")
    on_disk, _ = sf.read(str(tmp_path / "s.wav"), dtype="int16")
    assert sr == 24000 and len(piped) > 0 and np.abs(piped.astype(int) - on_disk).max() <= 1  # libsndfile rounding
    whole = _cli(*common, "--quiet", "--output", "-")
    assert whole.returncode == 0 and whole.stdout[:4] == b"RIFF"
    assert int.from_bytes(whole.stdout[40:44], "little") == len(whole.stdout) - 44  # exact sizes


def test_a_reader_closing_stdout_stops_the_stream_quietly():
    cmd = [sys.executable, "-m", "editx.cli", "clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT),
           "--prompt-text", "A prompt.", "--text", "A longer sentence to speak here.", "--max-new-tokens", "400",
           "--stream", "--output", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(100)[:4] == b"RIFF"  # the header and the first chunk arrived
    proc.stdout.close()  # the player quits
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err[-2000:]
    assert "stopped" in err and "Traceback" not in err


def test_onnx_flags_reach_the_runtime():
    from editx.cli import build_parser, load_runtime

    args = build_parser().parse_args(["serve", "--model", "dummy:tiny", "--onnx-provider", "cpu", "--onnx-threads",
                                      "3", "--quiet"])
    rt = load_runtime(args, lambda _msg: None)
    try:
        assert (rt.config.onnx_provider, rt.config.onnx_threads) == ("cpu", 3)
        assert rt.components.vq06.graph.session.get_session_options().intra_op_num_threads == 3
    finally:
        rt.close()


@pytest.mark.parametrize("stream", [False, True], ids=["collected", "streamed"])
def test_a_result_cut_by_the_token_limit_is_warned_about_even_when_quiet(tmp_path, capsys, stream):
    """8 tokens: the random-weight model has not ended its speech, the limit did (stop_reason "length")."""
    rc = main(["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
               "--text", "A sentence that needs more than eight tokens.", "--max-new-tokens", "8", "--seed", "1",
               "--quiet", "--output", str(tmp_path / "cut.wav"), *(["--stream"] if stream else [])])
    assert rc == 0
    err = capsys.readouterr().err
    assert "token limit (8 tokens)" in err and "--max-new-tokens" in err
    rc = main(["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
               "--text", "Hi.", "--max-new-tokens", "8", "--seed", "1", "--quiet", "--greedy", "--offline",
               "--output", str(tmp_path / "cut2.wav")])
    assert rc == 0 and "token limit" in capsys.readouterr().err  # upstream's offline path reports it too


def test_env_prints_the_environment_and_a_runtimes_effective_settings(capsys):
    import json

    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert "environment.packages.torch: " in text and "environment.onnxruntime_providers: " in text
    assert main(["env", "--model", "dummy:tiny", "--quiet", "--json", "--onnx-threads", "1",
                 "--chunk-frames", "6,24,48"]) == 0
    info = json.loads(capsys.readouterr().out)
    runtime = info["runtime"]
    assert runtime["model"] == "dummy:tiny" and runtime["device"] == "cpu"
    assert runtime["front_end"]["vq06"]["intra_op_threads"] == 1  # the flag, as the session has it
    assert runtime["decoder"]["chunk_frames"] == [6, 24, 48]
    # on a CPU: no CUDA graphs, no slot pool, the PyTorch references everywhere
    assert runtime["llm"]["decode_graphs"] is None and runtime["decoder"]["dit_slots"] is None
    assert {k["runs"] for k in runtime["kernels"].values()} == {"reference"}


def test_split_flag_speaks_long_text_piece_by_piece(tmp_path, capsys):
    text = " ".join(f"Sentence number {i} is spoken here." for i in range(12))  # ~420 characters: 2 pieces
    common = ["clone", "--model", "dummy:tiny", "--prompt-audio", str(PROMPT), "--prompt-text", "A prompt.",
              "--text", text, "--max-new-tokens", "20", "--seed", "2", "--quiet", "--split"]
    assert main([*common, "--stream", "--output", str(tmp_path / "s.wav")]) == 0
    assert main([*common, "--output", str(tmp_path / "c.wav")]) == 0
    a, _ = sf.read(str(tmp_path / "s.wav"), dtype="int16")
    b, _ = sf.read(str(tmp_path / "c.wav"), dtype="int16")
    # two pieces of at most 20 ids: more audio than one 20-id request (2880 samples per 5 ids) can hold
    assert np.array_equal(a, b) and len(a) > 2880 * 4
