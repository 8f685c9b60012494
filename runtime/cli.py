"""`editx` command line: clone a voice or edit speech, writing 16-bit 24 kHz WAV files.

Flags mirror upstream's tts_infer.py (--prompt-audio, --prompt-text, --generated-text,
--edit-type, --edit-info, --n-edit-iter, --output-dir, --torch-dtype) plus --model,
which takes an upstream install folder or a dummy preset (dummy:tiny, dummy:full).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import EditXError

EDIT_TYPES = ["emotion", "style", "speed", "paralinguistic", "denoise", "vad"]


def _model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """Flags that build the Runtime (every command that loads a model)."""
    p.add_argument("--model", "--model-path", dest="model", required=required,
                   help="upstream install folder (holding Step-Audio-EditX/ and Step-Audio-Tokenizer/), "
                        "or dummy:tiny / dummy:full")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", "--torch-dtype", dest="dtype", default=None,
                   choices=["float32", "bfloat16", "float16"],
                   help="LLM dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--decoder-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="flow + vocoder dtype (upstream: float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and of every random draw")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--kernels", default="auto", choices=["auto", "reference", "triton"],
                   help="fused ops: Triton kernels on CUDA (auto), the PyTorch references, or Triton forced")
    p.add_argument("--backend", action="append", default=[], metavar="STAGE=NAME",
                   help="run a stage (dit, flow_encoder, hift, vq02) on torch, onnxruntime or tensorrt; "
                        "repeatable; a bare NAME sets every stage")
    p.add_argument("--export-dir", default=None, help="folder written by `editx export` to take graphs from")
    p.add_argument("--onnx-provider", default="auto", choices=["auto", "cpu", "cuda"],
                   help="onnxruntime provider of the vq06 / CAM++ graphs (auto: CUDA when the device is and "
                        "onnxruntime has it)")
    p.add_argument("--onnx-threads", type=int, default=None, metavar="N",
                   help="intra-op threads of those graphs on the CPU provider (default min(4, CPUs))")
    p.add_argument("--chunk-frames", default=None, metavar="N,N,...",
                   help="streamed decoder chunk sizes in token frames, multiples of 3 (default upstream's "
                        "15,24,48; a smaller first chunk gives earlier first audio)")


def _common(p: argparse.ArgumentParser) -> None:
    """Flags of the one-shot commands (clone, edit)."""
    _model_arguments(p)
    p.add_argument("--prompt-audio", "--prompt-audio-path", dest="prompt_audio", required=True,
                   help="audio file (any common format, >= 16 kHz)")
    p.add_argument("--prompt-text", default="", help="transcript of the prompt audio")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of upstream's sampling")
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated LLM tokens")
    p.add_argument("--output-dir", default="./output_dir", help="where WAVs are written")
    p.add_argument("--output", default=None,
                   help="exact output path (clone, or the last edit iteration); '-' writes the WAV to stdout "
                        "(with --stream chunk by chunk, e.g. piped into a player)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--stream", action="store_true",
                      help="write the WAV chunk by chunk as audio is produced (first audio on disk early)")
    mode.add_argument("--offline", action="store_true",
                      help="upstream's whole-utterance decoder instead of the streaming engine")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-requests", type=int, default=None,
                   help="requests in flight before new ones get 503 (default 4 x --max-num-seqs)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="streams the engine decodes together")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer <key>' on /v1/ requests, the key read from this "
                        "environment variable (not a flag: command lines are visible to every user)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="browser origin allowed to call the server (repeatable; '*' for any)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM / Ctrl-C, stop accepting and let running streams finish for at most this "
                        "long before closing them (default 30, Kubernetes' default grace period)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip capturing the CUDA graphs before accepting requests (first requests pay it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="editx", description="Step-Audio-EditX runtime: clone and edit speech")
    sub = parser.add_subparsers(dest="command", required=True)
    clone = sub.add_parser("clone", help="zero-shot voice clone: speak --generated-text in the prompt's voice")
    _common(clone)
    clone.add_argument("--generated-text", "--text", dest="text", required=True, help="text to speak")
    clone.add_argument("--split", action="store_true",
                       help="speak long text (up to 100,000 characters) as consecutive requests of whole "
                            "sentences (<= 300 characters each), streamed as one")
    edit = sub.add_parser("edit", help="edit the prompt audio by instruction")
    _common(edit)
    edit.add_argument("--edit-type", required=True, choices=EDIT_TYPES)
    edit.add_argument("--edit-info", default=None, help="e.g. happy, whisper, faster, remove")
    edit.add_argument("--generated-text", "--text", dest="text", default=None,
                      help="new text with tags (paralinguistic edits only)")
    edit.add_argument("--n-edit-iter", type=int, default=1, help="apply the edit this many times")
    from .export.cli import add_arguments as add_export_arguments

    add_export_arguments(sub.add_parser("export", help="write ONNX graphs (and TensorRT plans) of a model"))
    _serve_arguments(sub.add_parser("serve", help="HTTP server: streamed clone / edit for many concurrent clients"))
    env = sub.add_parser("env", help="versions, GPUs and onnxruntime providers; with --model, what that runtime "
                                     "runs (attention kernel, CUDA graphs, DiT slot pool, ONNX providers)")
    _model_arguments(env, required=False)
    env.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return parser


def _progress(quiet: bool):
    start = time.perf_counter()

    def report(stage: str) -> None:
        if not quiet:
            print(f"[editx {time.perf_counter() - start:6.2f}s] {stage}", file=sys.stderr, flush=True)

    return report


def run(args: argparse.Namespace) -> list[Path]:
    """Execute one parsed command; returns the written files."""
    report = _progress(args.quiet)
    if args.command == "export":
        from .export.cli import run as run_export

        return run_export(args, report)
    if args.command == "serve":
        return serve(args, report)
    if args.command == "env":
        return show_env(args, report)
    _validate_early(args)
    rt = load_runtime(args, report)
    sampling = rt.default_sampling(greedy=args.greedy, max_new_tokens=args.max_new_tokens)
    stem = Path(args.prompt_audio).stem
    out_dir = Path(args.output_dir)
    written: list[Path] = []
    if args.command == "clone":
        report("cloning")
        target = Path(args.output or out_dir / f"{stem}_cloned.wav")
        if args.stream:
            chunks = rt.stream_clone(args.prompt_audio, args.prompt_text, args.text, seed=args.seed,
                                     sampling=sampling, split=args.split)
            written.append(write_stream(chunks, target, report))
        else:
            audio = rt.clone(args.prompt_audio, args.prompt_text, args.text, seed=args.seed, sampling=sampling,
                             stream=not args.offline, split=args.split)
            _warn_if_cut(audio.info.get("stop_reason"), audio.info.get("generated_tokens"))
            written.append(save(audio, target))
    elif args.stream:
        report(f"editing ({args.edit_type}, streaming the last of {args.n_edit_iter} iteration(s))")
        chunks = rt.stream_edit(args.prompt_audio, args.prompt_text, args.edit_type, args.edit_info,
                                text=args.text, n_iter=args.n_edit_iter, seed=args.seed, sampling=sampling)
        target = Path(args.output or out_dir / f"{stem}_edited_iter{args.n_edit_iter}.wav")
        written.append(write_stream(chunks, target, report))
    else:
        report(f"editing ({args.edit_type}{'/' + args.edit_info if args.edit_info else ''}, "
               f"{args.n_edit_iter} iteration(s))")
        results = rt.edit(args.prompt_audio, args.prompt_text, args.edit_type, args.edit_info,
                          text=args.text, n_iter=args.n_edit_iter, seed=args.seed, sampling=sampling,
                          stream=not args.offline)
        for k, audio in enumerate(results, start=1):
            _warn_if_cut(audio.info.get("stop_reason"), audio.info.get("generated_tokens"))
            last = k == len(results)
            path = Path(args.output) if (args.output and last) else out_dir / f"{stem}_edited_iter{k}.wav"
            written.append(save(audio, path))
    for path in written:
        report("wrote the WAV to stdout" if path == STDOUT else f"wrote {path}")
    return written


def load_runtime(args: argparse.Namespace, report, **overrides):
    """The Runtime the model flags describe (kernel backend set process-wide, like the CLI process)."""
    from .api import Runtime
    from .layers import set_kernel_backend

    set_kernel_backend(args.kernels)
    report(f"loading {args.model} on {args.device}")
    return Runtime.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                   decoder_dtype=args.decoder_dtype, seed=args.seed,
                                   progress=not args.quiet, backends=",".join(args.backend) or None,
                                   export_dir=args.export_dir, stream_chunk_frames=args.chunk_frames,
                                   onnx_provider=args.onnx_provider, onnx_threads=args.onnx_threads, **overrides)


def show_env(args: argparse.Namespace, report) -> list[Path]:
    """`editx env`: the environment, and with --model the loaded runtime's effective settings."""
    import json

    from .describe import environment

    info = {"environment": environment()}
    if args.model is not None:
        rt = load_runtime(args, report)
        try:
            info["runtime"] = rt.describe()
        finally:
            rt.close()
    print(json.dumps(info, indent=1) if args.json else "\n".join(_flat_lines(info)))
    return []


def _flat_lines(value, prefix: str = ""):
    """Nested dicts as `a.b.c: value` lines (lists and scalars printed as they are)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat_lines(item, f"{prefix}{key}.")
    else:
        yield f"{prefix[:-1]}: {value}"


def serve(args: argparse.Namespace, report) -> list[Path]:
    """`editx serve`: load once, warm up, then serve HTTP until interrupted (Ctrl-C / SIGTERM)."""
    from .errors import InvalidInputError
    from .server import ServerConfig, create_app

    key = None
    if args.api_key_env is not None:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise InvalidInputError(f"--api-key-env: environment variable {args.api_key_env} is not set or empty")
    if not args.shutdown_timeout >= 0:
        raise InvalidInputError(f"--shutdown-timeout: expected seconds >= 0, got {args.shutdown_timeout}")
    # validated before the model loads
    config = ServerConfig(max_requests=args.max_requests, api_key=key, cors_origins=tuple(args.cors_origin))
    try:
        import uvicorn
    except ImportError as exc:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError("editx serve needs uvicorn; install it with: pip install 'editx-rt[server]'") \
            from exc
    rt = load_runtime(args, report, max_num_seqs=args.max_num_seqs)
    try:
        app = create_app(rt, config, model_name=args.model)
        if args.warmup:
            rt.warmup()
        report(f"serving on http://{args.host}:{args.port} (POST /v1/clone, /v1/edit, /v1/audio/speech; GET /v1/info)")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info",
                    timeout_graceful_shutdown=args.shutdown_timeout)
    finally:
        rt.close()
    return []


STDOUT = Path("-")


def write_stream(chunks, path: Path, report) -> Path:
    """Append each AudioChunk to a 16-bit WAV as it arrives (readable while it grows); `-` = stdout."""
    import numpy as np
    import soundfile as sf

    if path == STDOUT:
        return _stream_to_stdout(chunks, report)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", samplerate=24000, channels=1, subtype="PCM_16") as f:
        for chunk in chunks:
            f.write(np.clip(chunk.samples, -1.0, 1.0))
            f.flush()
            _report_chunk(report, chunk)
    return path


def _stream_to_stdout(chunks, report) -> Path:
    """A WAV with an open-ended header (sizes unknown until the end) then each chunk's PCM16, flushed
    as it arrives: `editx clone ... --stream --output - | ffplay -` starts playing at the first chunk."""
    from .server.wire import pcm16, wav_header

    out = sys.stdout.buffer
    try:
        out.write(wav_header(24000, None))
        for chunk in chunks:
            out.write(pcm16(chunk.samples))
            out.flush()
            _report_chunk(report, chunk)
    except BrokenPipeError:  # the reader (a player, `head`) went away: stop generating, exit quietly
        getattr(chunks, "close", lambda: None)()  # cancels the request
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        report("stdout closed by the reader: stopped")
    return STDOUT


def _report_chunk(report, chunk) -> None:
    report(f"chunk {chunk.index}: {chunk.samples.size / chunk.sample_rate:.2f} s" + (" (last)" if chunk.is_last else ""))
    if chunk.usage is not None:
        _warn_if_cut(chunk.usage.stop_reason, chunk.usage.generated_tokens)


def _warn_if_cut(stop_reason, tokens) -> None:
    """A result the token limit ended (not the model) may stop mid-word: say so even with --quiet."""
    if stop_reason == "length":
        print(f"editx: warning: generation stopped at the token limit ({tokens} tokens), not at the model's end "
              "of speech: the audio may end mid-word (raise --max-new-tokens)", file=sys.stderr, flush=True)


def save(audio, path: Path) -> Path:
    """`audio.save(path)`, or the whole WAV to stdout for `-`."""
    if path != STDOUT:
        return audio.save(path)
    from .server.wire import whole

    sys.stdout.buffer.write(whole(audio.samples, "wav", audio.sample_rate))
    sys.stdout.buffer.flush()
    return STDOUT


def _validate_early(args: argparse.Namespace) -> None:
    """Reject bad arguments before spending seconds (or minutes) loading models."""
    from .errors import AudioFormatError, InvalidInputError
    from .models.text import build_edit_instruction

    if not Path(args.prompt_audio).is_file():
        raise AudioFormatError(f"prompt audio: no such file {args.prompt_audio}")
    if args.command == "clone":
        for name, value in (("--prompt-text", args.prompt_text), ("--generated-text", args.text)):
            if not value.strip():
                raise InvalidInputError(f"{name} must not be empty for a clone")
    else:
        if not 1 <= args.n_edit_iter <= 32:
            raise InvalidInputError(f"--n-edit-iter: {args.n_edit_iter} is outside [1, 32]")
        build_edit_instruction(args.edit_type, args.edit_info, args.prompt_text, args.text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="[editx] %(message)s", stream=sys.stderr)
    try:
        run(args)
    except EditXError as exc:
        print(f"editx: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
