#!/usr/bin/env bash
# One prepared GPU check for a lent device machine (see DEVELOPERS.md, "GPU sessions").
# It must fit one device command (<= 600 s) with room for a rerun inside the 15-minute budget, and
# return at most 8 files: every step is time-boxed, no step runs past DEADLINE (default 560 s;
# steps are ordered most important first), and results go into a few files under $OUT.
#
# Prepare here (this machine) first:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl soundfile soxr cffi pycparser
#   mkdir -p .gpu_data && cp -r ../shared/fixtures ../shared/audio .gpu_data/
# then run it through the device tool with carry [".whl", ".gpu_data"], timeout_s ~560.
# Locally, `DEVICE=cpu MODEL=dummy:tiny TOKENS=60 STREAM_TOKENS=60 STREAM_CONCURRENCY="1 2"
# PY=.venv/bin/python benchmarks/gpu_check.sh` (with pybind11 + cmake in that venv)
# dry-runs the same steps on the CPU (kernels under the Triton interpreter, tiny shapes).
#
# Output under $OUT (default ./out/gpu_check), 8 files: gpu_check.log (environment first, then
# everything printed), kernels.json (all kernel benchmarks), offline.json, stream.json + .svg
# (decoder worker on, the default), stream_inline.json (decoder items inside the engine step, same
# run: the overlap's effect), stages.json (decoder_slots: packed caches vs the DiT slot pool with
# CUDA graphs; profile_decoder(_slots): where a chunk's time goes, packed caches / the slot pool; decoder_batch: batched vs per-stream chunks;
# sampling: the engine's per-step sampling, blocks vs rows; frontend: a cold voice's front end by stage,
# the vq02 encoder call by call vs layer by layer; stream_first6: the streaming sweep with a 6-frame first chunk;
# stream_distinct: a new voice per request), llm_step.json (one LLM decode step and a
# 300-token prefill, unfused vs fused q|k|v and gate|up projections, eager and CUDA-graphed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-dummy:full}
TOKENS=${TOKENS:-200}
PY=${PY:-python3}
mkdir -p "$OUT" "$OUT/.parts/kernels" "$OUT/.parts/stages"
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
# A step stopped at its limit gets SIGABRT first: with the fault handler on, Python prints every
# thread's stack into the log, so a slow or stuck step shows where it was.
export PYTHONFAULTHANDLER=1
status=0
DEADLINE=${DEADLINE:-560}  # seconds: a step never runs past it (the device call's timeout sits above it)
# STEPS: the step keys to run (default all; the install always runs), e.g. STEPS="offline decoder_batch
# kernel_bench llm_step" for a second, shorter run: install engine_tests decoder_slots stream
# stream_first6 stream_distinct kernel_tests stream_inline profile offline sampling decoder_batch frontend kernel_bench llm_step.
step() {  # step <key> <seconds> <title> <command...>: time-boxed (also by DEADLINE), logged, failure recorded
  local key=$1 limit=$2 title=$3; shift 3
  if [ -n "${STEPS:-}" ] && [ "$key" != install ] && [[ " $STEPS " != *" $key "* ]]; then return; fi
  local left=$((DEADLINE - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 15 ]; then echo "-- skipped (deadline): $title" | tee -a "$LOG"; status=1; return; fi
  echo "== $title ==" | tee -a "$LOG"
  local t0=$SECONDS
  timeout -s ABRT -k 10 "$limit" "$@" >> "$LOG" 2>&1 || { echo "!! $title failed or timed out (rc=$?)" | tee -a "$LOG"; status=1; }
  echo "   ($((SECONDS - t0)) s)" | tee -a "$LOG"
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu_data/fixtures ] && export EDITX_FIXTURES=$PWD/.gpu_data/fixtures
PROMPT=${PROMPT:-$( [ -f .gpu_data/audio/zero_shot_en_prompt.wav ] && echo .gpu_data/audio/zero_shot_en_prompt.wav \
                   || echo ../shared/audio/zero_shot_en_prompt.wav )}
{ $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available()); print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" 2>&1
  $PY -c "import tensorrt as t; print('tensorrt', t.__version__)" 2>&1 | tail -1; } >> "$LOG" 2>&1

# Build the C++ scheduler in place (pybind11 + cmake are on the device image).
step install 120 "install (builds editx._scheduler)" $PY -m pip install -q --no-deps --no-build-isolation -e .

KQUICK=""; KENV=""
if [ "$DEVICE" = "cpu" ]; then KQUICK="--quick"; KENV="TRITON_INTERPRET=1"; fi
[ -d .gpu_data/audio ] && export EDITX_AUDIO=$PWD/.gpu_data/audio
# Most important first (issue 5): the streaming engine on the device (CUDA-graph decode steps vs
# eager, concurrency = sequential, cancel), then the dummy:full streaming sweep.
# (tests/engine includes the soak: a random request mix with a 2-slot DiT pool, i.e. graph captures on the
# decoder worker under load; test_snake.py: the HiFT Snake kernel, new since the last card.)
step engine_tests 200 "engine tests on $DEVICE" env EDITX_TEST_DEVICE="$DEVICE" $KENV $PY -m pytest -q -x tests/engine \
    tests/unit/test_model_runner.py tests/unit/test_dit_slots.py tests/kernels/test_snake.py
# The DiT slot pool: set-up + first chunk and steady chunks, packed (eager) vs slots (CUDA graphs).
step decoder_slots 90 "decoder slot pool benchmark: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_decoder_slots.py \
    --model "$MODEL" --device "$DEVICE" --streams ${SLOT_STREAMS:-1 4 16} --out "$OUT/.parts/stages/decoder_slots.json"
step stream 200 "streaming benchmark: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_stream.py --model "$MODEL" \
    --device "$DEVICE" --tokens "${STREAM_TOKENS:-200}" --concurrency ${STREAM_CONCURRENCY:-1 4 16 64} \
    --prompt-audio "$PROMPT" --out "$OUT/stream.json"
# The ~100 ms TTFA target needs a smaller first chunk (6 token frames + 3 lookahead = 15 ids instead of 30).
step stream_first6 80 "streaming benchmark, first chunk 6 frames: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_stream.py \
    --model "$MODEL" --device "$DEVICE" --tokens "${STREAM_TOKENS:-200}" --concurrency ${FIRST6_CONCURRENCY:-1 4 16} \
    --prompt-audio "$PROMPT" --chunk-frames 6,24,48 --no-plot --out "$OUT/.parts/stages/stream_first6.json"
# Every request its own new voice (n front ends and LLM prefixes), as when each client uploads a recording.
step stream_distinct 70 "streaming benchmark, a new voice per request: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_stream.py \
    --model "$MODEL" --device "$DEVICE" --tokens "${STREAM_TOKENS:-200}" --concurrency ${DISTINCT_CONCURRENCY:-1 4 16} \
    --prompt-audio "$PROMPT" --voices distinct --no-plot --out "$OUT/.parts/stages/stream_distinct.json"
step kernel_tests 70 "kernel tests on $DEVICE" env $KENV $PY -m pytest -q tests/kernels
step stream_inline 100 "streaming benchmark, decoder inside the engine step: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_stream.py \
    --model "$MODEL" --device "$DEVICE" --tokens "${STREAM_TOKENS:-200}" --concurrency ${STREAM_CONCURRENCY:-1 4 16 64} \
    --prompt-audio "$PROMPT" --overlap-decoder off --no-plot --out "$OUT/stream_inline.json"
step profile 40 "decoder profile: $MODEL on $DEVICE" $PY benchmarks/e2e/profile_decoder.py --model "$MODEL" \
    --device "$DEVICE" --out "$OUT/.parts/stages/profile_decoder.json"
step profile 40 "decoder profile with the DiT slot pool: $MODEL on $DEVICE" $PY benchmarks/e2e/profile_decoder.py \
    --model "$MODEL" --device "$DEVICE" --slots on --out "$OUT/.parts/stages/profile_decoder_slots.json"
step offline 80 "offline benchmark: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_offline.py --model "$MODEL" \
    --device "$DEVICE" --tokens "$TOKENS" --prompt-audio "$PROMPT" --out "$OUT/offline.json"
step sampling 30 "engine sampling benchmark on $DEVICE" $PY benchmarks/e2e/bench_sampling.py --device "$DEVICE" \
    --out "$OUT/.parts/stages/sampling.json"
step decoder_batch 40 "batched decoder benchmark: $MODEL on $DEVICE" $PY benchmarks/e2e/bench_decoder_batch.py \
    --model "$MODEL" --device "$DEVICE" --streams ${DECODER_STREAMS:-1 4 16} --out "$OUT/.parts/stages/decoder_batch.json"
step frontend 60 "front-end benchmark (vq02 encoder call by call vs layer by layer): $MODEL on $DEVICE" $PY \
    benchmarks/e2e/bench_frontend.py --model "$MODEL" --device "$DEVICE" --prompt-audio "$PROMPT" \
    --out "$OUT/.parts/stages/frontend.json"
# KERNEL_BENCHES: which kernel benchmarks (names without bench_; default every one)
for name in ${KERNEL_BENCHES:-$(cd benchmarks/kernels && ls bench_*.py | sed 's/^bench_//; s/\.py$//')}; do
  bench=benchmarks/kernels/bench_$name.py; name=bench_$name
  step kernel_bench 30 "kernel benchmark ${name#bench_}" env $KENV $PY "$bench" --device "$DEVICE" $KQUICK \
      --out "$OUT/.parts/kernels/${name#bench_}.json"
done
# Fused vs unfused LLM projections (bf16: the dtype the runtime decodes in on CUDA), eager and graphed.
step llm_step 90 "LLM step benchmark, fused vs unfused projections: $MODEL bf16 on $DEVICE" $PY \
    benchmarks/e2e/bench_llm_step.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 \
    ${LLM_LAYERS:+--layers "$LLM_LAYERS"} --out "$OUT/llm_step.json"
$PY - "$OUT" <<'EOF2' >> "$LOG" 2>&1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for group in ("kernels", "stages"):
    parts = {p.stem: json.loads(p.read_text()) for p in sorted((out / ".parts" / group).glob("*.json"))}
    if parts:
        (out / f"{group}.json").write_text(json.dumps(parts, indent=1) + "\n")
    print("merged", group, list(parts))
EOF2
rm -rf "$OUT/.parts"

echo "status=$status" | tee -a "$LOG"
exit $status
