"""Exports the safety classifier to ONNX: fp32 (fused attention) and int8 (per-channel dynamic).

    python -m models.classifier.export [--weights FILE] [--output_dir DIR]
    python -m models.classifier.export --hf_model CHECKPOINT_DIR --output_dir DIR

One graph from `input_ids` and `attention_mask` (int64, dynamic batch and length) to `probs`
(the 6 score probabilities; the first output, the scoring contract) and `embedding` (the second:
the pooled features the head reads, L2-normalised, which the quality gate compares between a
source and its rewrite to catch off-topic output): encoder with merged LoRA adapters, mean
pooling, L2 normalisation, head and softmax. The encoder is exported with eager attention so ONNX Runtime's transformer
optimizer fuses attention, layer norms and GELU. The result is deterministic: the same weights
and library versions give the same bytes. Without `--output_dir` the files go to a cache folder
named by a fingerprint of the weights and the library versions, where the pipeline finds them.

Beside the graphs goes the `tokenizer.json` the model windows text with, so that the folder is
all a worker needs (`models.classifier.artifacts`): workers have no encoder package and no
torch, and never run this module. And `model.json`, `{"max_positions": N}`: the longest window
the graph takes, which the launch checks `--window` against without downloading the model.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile

from models.cache import cache_root
from models.classifier import model
from models.classifier.folder import (FP32_NAME, INT8_NAME, MAX_POSITIONS, METADATA_NAME,
                                     TOKENIZER_NAME, window_error)
from models.classifier.chunking import encoder_dir
from models.tool_logs import build_step, quiet_tools

LOG = logging.getLogger("models.classifier.export")

OPSET = 17
# The layout of the exported graph's outputs, part of the cache key: version 2 added the
# `embedding` output. A cache folder holds one layout, so a machine that still runs a checkout
# of version 1 keeps its folder and this one exports beside it.
GRAPH_VERSION = 2
PROBS = "probs"
EMBEDDING = "embedding"


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
                  transformers.__version__, str(OPSET), f"graph{GRAPH_VERSION}"):
    digest.update(version.encode())
  return digest.hexdigest()[:16]


def export(weights_file: str, config_file: str, output_dir: str) -> dict[str, str]:
  """Writes model.onnx (fp32, fused), model.int8.onnx, the encoder's tokenizer.json and
  model.json into output_dir: a model folder as workers read it. Returns the paths."""
  classifier = model.load_classifier(weights_file, config_file)
  paths = export_graph(model.ScoringModel(classifier).eval(), classifier.encoder.config,
                       output_dir, output_name=(PROBS, EMBEDDING))
  paths["tokenizer"] = add_tokenizer(output_dir)
  paths["metadata"] = add_metadata(output_dir, classifier.encoder.config)
  return paths


def graph_positions(config, onnx_path: str) -> int:
  """The longest window the exported graph takes: the config's max_position_embeddings, or
  that less the padding offset of the RoBERTa family (whose positions start after
  pad_token_id), whichever the graph is seen to run."""
  declared = config.max_position_embeddings
  offset = (getattr(config, "pad_token_id", None) or 0) + 1
  for length in (declared, declared - offset):
    if window_error(onnx_path, length) is None:
      return length
  raise SystemExit(f"{onnx_path} runs no window of {declared} or {declared - offset} tokens "
                   f"(its config's max_position_embeddings): {window_error(onnx_path, declared)}")


@contextlib.contextmanager
def _placed(folder: str, name: str):
  """(a temporary path in `folder`, the final path of `name` there): what the block writes to
  the temporary path is renamed to `name` (mode 644) when the block succeeds, so a process
  reading the folder meanwhile never sees part of a file; the temporary one is removed either
  way."""
  target = os.path.join(folder, name)
  handle, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
  os.close(handle)
  try:
    yield partial, target
    os.chmod(partial, 0o644)
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.unlink(partial)


def add_metadata(folder: str, config) -> str:
  """Writes model.json ({"max_positions": N}, `graph_positions` of the folder's fp32 graph)
  into `folder`, through a temporary name and a rename; returns its path."""
  positions = graph_positions(config, os.path.join(folder, FP32_NAME))
  with _placed(folder, METADATA_NAME) as (partial, target):
    with open(partial, "w", encoding="utf-8") as f:
      json.dump({MAX_POSITIONS: positions}, f, sort_keys=True)
  return target


def add_tokenizer(folder: str, source: str | None = None) -> str:
  """Copies tokenizer.json (default: the encoder package's) into `folder`, through a temporary
  name of its own and a rename, so that a process reading the folder meanwhile never sees part
  of it; returns its path."""
  with _placed(folder, TOKENIZER_NAME) as (partial, target):
    shutil.copyfile(source or os.path.join(encoder_dir(), TOKENIZER_NAME), partial)
  return target


def export_hf(hf_model: str, output_dir: str) -> dict[str, str]:
  """Exports a local Hugging Face sequence-classification checkpoint with 6 labels (scores 0-5,
  label i = score i) to the pipeline's contract: model.onnx, model.int8.onnx, the
  checkpoint's tokenizer.json, which the pipeline then windows with, and model.json."""
  import torch
  from transformers import AutoModelForSequenceClassification

  class HfProbabilities(torch.nn.Module):
    """The checkpoint as ids and mask -> its 6 probabilities."""

    def __init__(self, classifier):
      super().__init__()
      self.classifier = classifier

    def forward(self, input_ids, attention_mask):
      logits = self.classifier(input_ids=input_ids, attention_mask=attention_mask).logits
      return torch.softmax(logits.float(), dim=-1)

  classifier = AutoModelForSequenceClassification.from_pretrained(
      hf_model, attn_implementation="eager").eval()
  if classifier.config.num_labels != 6:
    raise SystemExit(f"{hf_model} has {classifier.config.num_labels} labels; the safety scale "
                     "needs 6 (scores 0-5, label i = score i)")
  tokenizer = os.path.join(hf_model, TOKENIZER_NAME)
  if not os.path.exists(tokenizer):
    raise SystemExit(f"{hf_model} has no tokenizer.json (a fast tokenizer): save it with "
                     "AutoTokenizer.from_pretrained(...).save_pretrained(DIR)")
  paths = export_graph(HfProbabilities(classifier).eval(), classifier.config, output_dir)
  paths["tokenizer"] = add_tokenizer(output_dir, tokenizer)
  paths["metadata"] = add_metadata(output_dir, classifier.config)
  return paths


def export_graph(graph, config, output_dir: str, output_name: str | tuple[str, ...] = PROBS,
                 names: tuple[str, str] = (FP32_NAME, INT8_NAME)) -> dict[str, str]:
  """Exports a module of (input_ids, attention_mask) to ONNX, fused (fp32) and int8.

  `output_name` names the module's output, or its outputs in order when it returns a tuple."""
  import onnx
  import torch
  from onnxruntime.quantization import QuantType, quantize_dynamic
  from onnxruntime.transformers.optimizer import optimize_model

  output_names = (output_name,) if isinstance(output_name, str) else tuple(output_name)
  os.makedirs(output_dir, exist_ok=True)
  with tempfile.TemporaryDirectory() as work:
    raw = os.path.join(work, "raw.onnx")
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    with torch.no_grad():
      torch.onnx.export(
          graph, (ids, mask), raw, dynamo=False, opset_version=OPSET,
          input_names=["input_ids", "attention_mask"], output_names=list(output_names),
          dynamic_axes={"input_ids": {0: "batch", 1: "length"},
                        "attention_mask": {0: "batch", 1: "length"},
                        **{name: {0: "batch"} for name in output_names}})
    optimized = optimize_model(
        raw, model_type=config.model_type if config.model_type in (
            "bert", "roberta", "distilbert", "bart", "gpt2") else "bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size, opt_level=1, use_gpu=False)
    LOG.info("fused operators: %s", json.dumps(optimized.get_fused_operator_statistics()))
    fp32 = os.path.join(output_dir, names[0])
    optimized.save_model_to_file(fp32)
    int8 = os.path.join(output_dir, names[1])
    quantize_dynamic(
        fp32, int8, per_channel=True, weight_type=QuantType.QInt8,
        # the fused contrib operators defeat ONNX shape inference; their outputs are fp32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
  return {"fp32": fp32, "int8": int8}


def quantize_static_int8(fp32_path: str, output_path: str, calibration_windows) -> str:
  """A statically quantized int8 graph of the fp32 one: MatMul weights int8 per channel,
  activations int8 with ranges calibrated (min-max) on `calibration_windows` and then fixed, in
  ONNX's QDQ form. With fixed activation scales a window's probabilities no longer depend on
  its batch neighbours, so it could be run in padded batches; it is not the shipped graph,
  because it has not been shown faster than the dynamic one, one window per call
  (benchmarks/classifier_throughput.py --static_int8; on the shared 2-core machine one run
  gave 0.41x, another 1.5x). ONNX Runtime 1.32's quantizer fails on this graph in the QOperator
  form (per-channel or not), hence QDQ."""
  import numpy as np
  import onnx
  from onnxruntime.quantization import (
      CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static)

  class Windows(CalibrationDataReader):
    def __init__(self, windows):
      self._windows = iter(windows)

    def get_next(self):
      window = next(self._windows, None)
      if window is None:
        return None
      ids = np.asarray(window, dtype=np.int64)[None, :]
      return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

  quantize_static(
      fp32_path, output_path, Windows(calibration_windows), quant_format=QuantFormat.QDQ,
      per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
      op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax,
      extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "ActivationSymmetric": True})
  return output_path


def ensure_exported(weights_file: str = model.WEIGHTS_FILE,
                    config_file: str = model.CONFIG_FILE) -> dict[str, str]:
  """The cached model folder of the committed classifier (ONNX files and tokenizer.json), built
  once per machine. This runs where the pipeline is launched, never on a worker: the fingerprint
  alone imports torch and transformers."""
  folder = os.path.join(cache_root(), "classifier", fingerprint(weights_file, config_file))
  paths = {"fp32": os.path.join(folder, FP32_NAME), "int8": os.path.join(folder, INT8_NAME),
           "tokenizer": os.path.join(folder, TOKENIZER_NAME),
           "metadata": os.path.join(folder, METADATA_NAME)}
  if all(os.path.exists(paths[p]) for p in ("fp32", "int8")):
    # A folder exported before the tokenizer (or model.json) went beside the graphs gets it
    # now; both come from the same pinned encoder package the fingerprint covers.
    if not os.path.exists(paths["tokenizer"]):
      add_tokenizer(folder)
    if not os.path.exists(paths["metadata"]):
      from transformers import AutoConfig
      add_metadata(folder, AutoConfig.from_pretrained(encoder_dir()))
    return paths
  os.makedirs(os.path.dirname(folder), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(folder))
  try:
    with build_step("the classifier model folder"):
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
  """The shipped classifier file (int8 unless asked otherwise), exported if not yet cached;
  tokenizer.json lies beside it."""
  return ensure_exported()[precision]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m models.classifier.export", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--weights", default=model.WEIGHTS_FILE,
                      help="head/adapter safetensors (default: the committed ones)")
  parser.add_argument("--config", default=None,
                      help="the weights' JSON settings (default: classifier.json beside --weights)")
  parser.add_argument("--hf_model", default=None,
                      help="instead: a local Hugging Face sequence-classification checkpoint "
                           "with 6 labels (e.g. a released safety classifier), exported to the "
                           "same contract; needs --output_dir")
  parser.add_argument("--output_dir", default=None,
                      help="model folder for model.onnx, model.int8.onnx, tokenizer.json and "
                           "model.json (default: the cache folder that the pipeline reads); pass "
                           "it as --classifier_model")
  return parser


def main(argv=None):
  # The tools log every fused operator and quantized tensor at INFO; a build step is one line.
  quiet_tools()
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
  args = build_parser().parse_args(argv)
  config = args.config or os.path.join(os.path.dirname(args.weights), "classifier.json")
  if args.hf_model:
    if not args.output_dir:
      raise SystemExit("--hf_model needs --output_dir")
    with build_step(f"the model folder {args.output_dir}", once=False):
      paths = export_hf(args.hf_model, args.output_dir)
  elif args.output_dir:
    with build_step(f"the classifier model folder {args.output_dir}", once=False):
      paths = export(args.weights, config, args.output_dir)
  else:
    paths = ensure_exported(args.weights, config)
  print(json.dumps(paths, indent=2))


if __name__ == "__main__":
  main()
