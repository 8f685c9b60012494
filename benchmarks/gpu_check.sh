#!/usr/bin/env bash
# One prepared GPU check for a lent device machine (see DEVELOPERS.md, "GPU sessions").
#
# Prepare here (this machine) first:
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl soundfile soxr cffi pycparser
#   mkdir -p .gpu_data && cp -r ../shared/fixtures ../shared/audio .gpu_data/
# then run it through the device tool with carry [".whl", ".gpu_data"] and a timeout that
# leaves room for a rerun. Locally, `DEVICE=cpu MODEL=dummy:tiny TOKENS=60 benchmarks/gpu_check.sh`
# dry-runs the same steps on the CPU.
#
# Writes everything under $OUT (default ./out/gpu_check): test logs, benchmark JSON (offline e2e and
# one per Triton kernel under $OUT/kernels/), nvidia-smi.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-dummy:full}
TOKENS=${TOKENS:-500}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .gpu_data/fixtures ]; then
  export EDITX_FIXTURES=$PWD/.gpu_data/fixtures
fi
PROMPT=${PROMPT:-$( [ -f .gpu_data/audio/zero_shot_en_prompt.wav ] && echo .gpu_data/audio/zero_shot_en_prompt.wav \
                   || echo ../shared/audio/zero_shot_en_prompt.wav )}

# Import the package straight from the tree (runtime/ is `editx`) without a pip install.
$PY - <<'EOF' > "$OUT/env.txt" 2>&1
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || cat "$OUT/install.log"

status=0
echo "== tests (CUDA-relevant subsets; fixtures: ${EDITX_FIXTURES:-default}) =="
$PY -m pytest -q -x tests/unit/test_model_runner.py tests/parity tests/api 2>&1 | tee "$OUT/tests.log" | tail -5 \
  || status=1

echo "== Triton kernels: tests on $DEVICE (tests/kernels) =="
# On CUDA the kernels compile (Triton 3.6 on the device machine); a CPU dry run uses the interpreter
# and the benchmarks' tiny --quick shapes. Each step is time-boxed so the rest of the check still runs.
KQUICK=""; KENV=""
if [ "$DEVICE" = "cpu" ]; then KQUICK="--quick"; KENV="TRITON_INTERPRET=1"; fi
env $KENV timeout "${KERNEL_TEST_TIMEOUT:-420}" $PY -m pytest -q tests/kernels 2>&1 | tee "$OUT/kernel_tests.log" \
  | tail -5 || status=1

echo "== Triton kernels: benchmarks (kernel vs torch reference, JSON under $OUT/kernels) =="
mkdir -p "$OUT/kernels"
for bench in benchmarks/kernels/bench_*.py; do
  name=$(basename "$bench" .py); name=${name#bench_}
  env $KENV timeout "${KERNEL_BENCH_TIMEOUT:-240}" $PY "$bench" --device "$DEVICE" $KQUICK \
      --out "$OUT/kernels/${name}_${DEVICE}.json" 2>&1 | tee -a "$OUT/kernel_bench.log" | tail -3 || status=1
done

echo "== offline benchmark: $MODEL on $DEVICE =="
$PY benchmarks/e2e/bench_offline.py --model "$MODEL" --device "$DEVICE" --tokens "$TOKENS" \
    --prompt-audio "$PROMPT" --out "$OUT/offline_${DEVICE}_${MODEL/:/_}.json" 2>&1 | tee "$OUT/bench.log" \
  || status=1
exit $status
