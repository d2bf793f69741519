"""The PyTorch ModelHandler of the safety classifier, for GPU workers (`--classifier_device=cuda`).

Same contract as `handler.OnnxSafetyModelHandler` (an example is one document's token windows,
the inference their (windows, 6) probabilities), so ScoreSafety and the gate take either. All
windows of a RunInference batch are scored together by `batched.BatchedScorer`: length-bucketed
padded batches of up to `max_batch_tokens`, the encoder in bf16 or fp16. Beam batches documents
by their token count (`window_tokens` as BatchElements' element size), so a RunInference batch
holds about `max_batch_tokens` tokens and the GPU gets full forward passes.

Why PyTorch and not ONNX Runtime's CUDA provider: the int8 graph's quantized operators have no
CUDA kernels (they fall back to CPU), its fp32 graph has no bf16, and an `onnxruntime-gpu` wheel
must match the worker's CUDA and cuDNN; transformers' BERT with SDPA attention needs only the
PyTorch that a GPU image already has. The weights are the committed ones, merged the same way as
for the ONNX export.
"""

from __future__ import annotations

import typing

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from models.classifier.batched import DTYPES, BatchedScorer
from models.classifier.handler import score_examples, windows_num_bytes

Windows = typing.Union[np.ndarray, typing.Sequence[np.ndarray]]


class TorchSafetyModelHandler(ModelHandler[Windows, np.ndarray, typing.Any]):
  """Scores token windows with the merged classifier in PyTorch, batched.

  Args:
    device: "cuda" (default) or "cpu".
    dtype: the encoder's dtype on CUDA (bfloat16, float16, float32).
    max_batch_tokens: padded tokens per forward pass.
    merged_dir: a `batched.save_merged` folder; default: the committed weights, merged at load.
  """

  def __init__(self, device: str = "cuda", dtype: str = "bfloat16",
               max_batch_tokens: int = 65536, merged_dir: str | None = None):
    super().__init__()
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    self._device = device
    self._dtype = dtype
    self._max_batch_tokens = max_batch_tokens
    self._merged_dir = merged_dir

  def tokenizer_folder(self) -> None:
    """None: the encoder package's tokenizer (this path runs the committed weights, so the
    worker has the `local` extra and its encoder package)."""
    return None

  def load_model(self) -> BatchedScorer:
    if self._merged_dir:
      from models.classifier.batched import load_merged
      classifier = load_merged(self._merged_dir)
    else:
      from models.classifier.model import load_classifier
      classifier = load_classifier()  # LoRA adapters merged into the encoder
    return BatchedScorer(classifier, self._device, self._dtype, self._max_batch_tokens)

  def run_inference(self, batch, model: BatchedScorer, inference_args=None):
    return score_examples(batch, model)

  def get_num_bytes(self, batch) -> int:
    return windows_num_bytes(batch)

  def get_metrics_namespace(self) -> str:
    return "safety_classifier_torch"

  def batch_elements_kwargs(self):
    # With an element size, BatchElements' batch sizes count it: a RunInference batch holds
    # documents of at most max_batch_tokens tokens in all (a longer document, alone).
    return {"min_batch_size": 1, "max_batch_size": self._max_batch_tokens,
            "element_size_fn": window_tokens}


def window_tokens(element) -> int:
  """Tokens in an example's windows; an element may be keyed, (key, windows), as RunInference
  batches it under KeyedModelHandler."""
  if isinstance(element, tuple) and len(element) == 2 and not isinstance(element[1], (int, str)):
    element = element[1]
  if isinstance(element, np.ndarray) and element.ndim == 1:
    return len(element)
  return sum(len(window) for window in element)
