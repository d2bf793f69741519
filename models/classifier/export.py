"""Exports the safety classifier to ONNX: fp32 (fused attention) and int8 (per-channel dynamic).

    python -m models.classifier.export [--weights FILE] [--output_dir DIR]

One graph from `input_ids` and `attention_mask` (int64, dynamic batch and length) to `probs`
(the 6 score probabilities): encoder with merged LoRA adapters, mean pooling, L2 normalisation,
head and softmax. The encoder is exported with eager attention so ONNX Runtime's transformer
optimizer fuses attention, layer norms and GELU. The result is deterministic: the same weights
and library versions give the same bytes. Without `--output_dir` the files go to a cache folder
named by a fingerprint of the weights and the library versions, where the pipeline finds them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile

from models.cache import cache_root
from models.classifier import model

LOG = logging.getLogger("models.classifier.export")

FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
OPSET = 17


def fingerprint(weights_file: str = model.WEIGHTS_FILE, config_file: str = model.CONFIG_FILE) -> str:
  """A short hash of the committed weights, their settings and the exporting libraries."""
  import onnx
  import onnxruntime
  import torch
  import transformers
  digest = hashlib.sha256()
  for path in (weights_file, config_file):
    with open(path, "rb") as f:
      digest.update(f.read())
  for version in (torch.__version__, onnx.__version__, onnxruntime.__version__,
                  transformers.__version__, str(OPSET)):
    digest.update(version.encode())
  return digest.hexdigest()[:16]


def export(weights_file: str, config_file: str, output_dir: str) -> dict[str, str]:
  """Writes model.onnx (fp32, fused) and model.int8.onnx into output_dir; returns their paths."""
  import onnx
  import torch
  from onnxruntime.quantization import QuantType, quantize_dynamic
  from onnxruntime.transformers.optimizer import optimize_model

  os.makedirs(output_dir, exist_ok=True)
  classifier = model.load_classifier(weights_file, config_file)
  graph = model.ProbabilityModel(classifier).eval()
  config = classifier.encoder.config
  with tempfile.TemporaryDirectory() as work:
    raw = os.path.join(work, "raw.onnx")
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    with torch.no_grad():
      torch.onnx.export(
          graph, (ids, mask), raw, dynamo=False, opset_version=OPSET,
          input_names=["input_ids", "attention_mask"], output_names=["probs"],
          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                        "attention_mask": {0: "batch", 1: "length"},
                        "probs": {0: "batch"}})
    optimized = optimize_model(
        raw, model_type="bert", num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size, opt_level=1, use_gpu=False)
    LOG.info("fused operators: %s", json.dumps(optimized.get_fused_operator_statistics()))
    fp32 = os.path.join(output_dir, FP32_NAME)
    optimized.save_model_to_file(fp32)
    int8 = os.path.join(output_dir, INT8_NAME)
    quantize_dynamic(
        fp32, int8, per_channel=True, weight_type=QuantType.QInt8,
        # the fused contrib operators defeat ONNX shape inference; their outputs are fp32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
  return {"fp32": fp32, "int8": int8}


def ensure_exported(weights_file: str = model.WEIGHTS_FILE,
                    config_file: str = model.CONFIG_FILE) -> dict[str, str]:
  """The cached ONNX files of the committed classifier, built once per machine."""
  folder = os.path.join(cache_root(), "classifier", fingerprint(weights_file, config_file))
  paths = {"fp32": os.path.join(folder, FP32_NAME), "int8": os.path.join(folder, INT8_NAME)}
  if all(os.path.exists(p) for p in paths.values()):
    return paths
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(folder))
  try:
    export(weights_file, config_file, staging)
    try:
      os.rename(staging, folder)
    except OSError:
      if not all(os.path.exists(p) for p in paths.values()):  # not built by a concurrent worker
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  LOG.info("classifier ONNX files in %s", folder)
  return paths


def default_model_path(precision: str = "int8") -> str:
  """The shipped classifier file (int8 unless asked otherwise), exported if not yet cached."""
  return ensure_exported()[precision]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m models.classifier.export", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", default=model.WEIGHTS_FILE,
                      help="head/adapter safetensors (default: the committed ones)")
  parser.add_argument("--config", default=None,
                      help="the weights' JSON settings (default: classifier.json beside --weights)")
  parser.add_argument("--output_dir", default=None,
                      help="folder for model.onnx and model.int8.onnx (default: the cache folder "
                           "that the pipeline reads)")
  return parser


def main(argv=None):
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  args = build_parser().parse_args(argv)
  config = args.config or os.path.join(os.path.dirname(args.weights), "classifier.json")
  if args.output_dir:
    paths = export(args.weights, config, args.output_dir)
  else:
    paths = ensure_exported(args.weights, config)
  print(json.dumps(paths, indent=2))


if __name__ == "__main__":
  main()
