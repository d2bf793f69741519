#!/usr/bin/env bash
# Every GPU figure of issue 12, on a bare GPU machine: PyTorch, transformers, tokenizers and the
# CPU onnxruntime, none of this package's other dependencies.
#
#   here (the package installed):  .venv/bin/python benchmarks/make_gpu_bundle.py
#   on the GPU machine:            bash benchmarks/gpu_check.sh      (carry build/gpu_bundle)
#
# Writes its JSON under $OUT (default build/gpu_check) and prints it; the whole run is bounded
# to 8 minutes. Figures: benchmarks/classifier_throughput.py --device cuda (docs/s, real
# tokens/s at 256- and 512-token windows, tokenization included, share of the bf16 peak, ratio
# to PyTorch fp16 eager with padded batches, agreement with the CPU int8 scores).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-build/gpu_bundle}
OUT=${OUT:-build/gpu_check}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -f "$BUNDLE/merged.safetensors" ]; then
  echo "no bundle in $BUNDLE: run benchmarks/make_gpu_bundle.py where the package is installed" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.csv"
"$PYTHON" - <<'PY' | tee "$OUT/versions.json"
import json, torch, transformers, tokenizers
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                  "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                  "cuda_available": torch.cuda.is_available(), "cpus": __import__("os").cpu_count()}))
PY
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=true
timeout 420 "$PYTHON" benchmarks/classifier_throughput.py --device cuda --bundle "$BUNDLE" \
  | tee "$OUT/classifier_cuda.json"
echo "generation_throughput --device cuda: not run: the local backend's GPU path (--generator_device) is not built on this branch, and its model folder (SmolLM2, 270 MB) is over what a device run carries" | tee "$OUT/generation.txt"
