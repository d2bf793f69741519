#!/usr/bin/env bash
# Every GPU figure of issue 12, on a bare GPU machine: PyTorch, transformers, tokenizers and the
# CPU onnxruntime, none of this package's other dependencies.
#
#   here (the package installed):  .venv/bin/python benchmarks/make_gpu_bundle.py
#   on the GPU machine:            bash benchmarks/gpu_check.sh      (carry build/gpu_bundle)
#
# Writes its JSON under $OUT (default build/gpu_check) and prints it; the whole run is bounded
# to 8 minutes (each figure by `timeout`: 270 s and 150 s). Figures:
# - benchmarks/classifier_throughput.py --device cuda (docs/s, real tokens/s at 256- and
#   512-token windows, tokenization included, share of the bf16 peak, ratio to PyTorch fp16
#   eager with padded batches, agreement with the CPU int8 scores);
# - benchmarks/generation_throughput.py --device cuda: the local backend (--generator_device=cuda,
#   bfloat16) against plain transformers generate, generated tokens/s at batch 1, 16 and 64,
#   128 new tokens per reply, SmolLM2's architecture with random weights (its 500 MB of weights
#   do not travel; throughput does not depend on their values).
# Without a CUDA device it says so and exits 3. A figure that fails is reported (failures.txt)
# and the next one still runs; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-build/gpu_bundle}
OUT=${OUT:-build/gpu_check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -f "$BUNDLE/merged.safetensors" ] || [ ! -f "$BUNDLE/generator/config.json" ]; then
  echo "no bundle in $BUNDLE: run benchmarks/make_gpu_bundle.py where the package is installed" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
timeout 60 "$PYTHON" - <<'PY' | tee "$OUT/versions.json"
import json, torch, transformers, tokenizers
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                  "cuda_available": torch.cuda.is_available(), "cpus": __import__("os").cpu_count()}))
PY
if ! grep -q '"cuda_available": true' "$OUT/versions.json"; then
  echo "no GPU at hand: torch sees no CUDA device here; nothing measured" | tee "$OUT/failures.txt" >&2
  exit 3
fi
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=true
status=0
figure() {  # figure NAME SECONDS COMMAND...: the command's stdout into $OUT/NAME.json
  local name=$1 seconds=$2 rc why
  shift 2
  timeout "$seconds" "$@" | tee "$OUT/$name.json"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ]; then why="over its ${seconds} s"; else why="exit status $rc"; fi
    echo "$name: failed ($why)" | tee -a "$OUT/failures.txt" >&2
    [ "$status" -ne 0 ] || status=$rc
  fi
}
figure classifier_cuda 270 "$PYTHON" benchmarks/classifier_throughput.py --device cuda \
  --bundle "$BUNDLE"
figure generation_cuda 150 "$PYTHON" benchmarks/generation_throughput.py --device cuda \
  --random_weights --model_dir "$BUNDLE/generator" --batch_sizes 1,16,64 --max_new_tokens 128 \
  --batches 2 --json
exit "$status"
