"""`classifier_throughput.py --device cuda`: the batched GPU path against PyTorch fp16 eager.

Runs on a bare GPU machine (PyTorch, transformers, tokenizers, safetensors; no Beam, no ONNX
Runtime, no PyPI encoder package) from the bundle benchmarks/make_gpu_bundle.py writes. For
256- and 512-token windows, on the bundle's real documents, each pass times what the pipeline
does per document batch: tokenize with the tokenizer's batch API (in batches of
chunking.TOKENIZE_BATCH documents, as ScoreSafety does), window, and score, with

- `bucketed_bf16`: models/classifier/batched.BatchedScorer, the engine of
  TorchSafetyModelHandler (`--classifier_device=cuda`): SDPA attention, bf16 encoder,
  length-bucketed batches of --gpu_batch_tokens padded tokens;
- `eager_fp16_padded`: the baseline: transformers' eager attention, the encoder in fp16,
  fixed batches of 256 windows in document order, padded to the batch's longest window.

Reported: docs/s and real (non-padding) tokens/s, the compute-only rate (tokenization left out,
to show which side limits), the model FLOPs per real token and the share of the GPU's dense bf16
peak (--peak_tflops, default 790 for an H200) that the rate is, and, at 256 tokens, how many
documents get the same 0-5 score as the CPU int8 path (the bundle's scores, computed by the
pipeline's shipped handler where the bundle was made).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

WINDOWS = (256, 512)
OVERLAP = 32
EAGER_BATCH = 256


def flops_per_token(config, window: int) -> float:
  """Model FLOPs per token of a window of `window` tokens: 2 per multiply-add, counting the
  encoder's matrix products only (layer norms, softmax, GELU, pooling and the 6-way head are
  under 1%): per layer, Q, K, V and output projections (4 h^2 multiply-adds), the two
  feed-forward products (2 h f), and attention's QK^T and attention x V (2 window h)."""
  h, f = config.hidden_size, config.intermediate_size
  per_layer = 4 * h * h + 2 * h * f + 2 * window * h
  return 2.0 * config.num_hidden_layers * per_layer


def _documents(bundle: str) -> list[str]:
  with open(os.path.join(bundle, "documents.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f]


def _windows(windower, texts, batch: int):
  per_text = []
  for start in range(0, len(texts), batch):
    per_text.extend(w for w, _ in windower.windows_and_spans(texts[start:start + batch]))
  return per_text


def _eager_runner(classifier, device):
  import torch
  classifier = classifier.eval().to(device)
  classifier.encoder.half()

  def run(windows):
    probs = np.zeros((len(windows), 6), dtype=np.float32)
    for start in range(0, len(windows), EAGER_BATCH):
      rows = windows[start:start + EAGER_BATCH]
      length = max(len(w) for w in rows)
      ids = np.zeros((len(rows), length), dtype=np.int64)
      mask = np.zeros((len(rows), length), dtype=np.int64)
      for row, window in enumerate(rows):
        ids[row, :len(window)] = window
        mask[row, :len(window)] = 1
      with torch.inference_mode():
        logits = classifier(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        probs[start:start + len(rows)] = torch.softmax(logits.float(), -1).cpu().numpy()
    return probs
  return run


def _doc_scores(probs, per_text):
  from models.classifier.chunking import document_score
  scores, offset = [], 0
  for windows in per_text:
    scores.append(document_score(probs[offset:offset + len(windows)])[0])
    offset += len(windows)
  return np.asarray(scores)


def _timed(fn, passes: int):
  """Best wall time of `passes` calls of fn (after one untimed warm-up call) and its result."""
  import torch
  sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
  result = fn()
  best = float("inf")
  for _ in range(passes):
    sync()
    started = time.perf_counter()
    result = fn()
    sync()
    best = min(best, time.perf_counter() - started)
  return best, result


def gpu_report(args, device: str = "cuda") -> dict:
  """The report; `device` is "cuda" except in the CPU test of this code
  (tests/models/classifier/test_batched.py), where the figures mean nothing."""
  import torch
  from models.classifier.batched import BatchedScorer, load_merged
  from models.classifier.chunking import TOKENIZE_BATCH, Windower

  if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device cuda: no CUDA device is visible to PyTorch")
  bundle = args.bundle
  texts = _documents(bundle)
  with open(os.path.join(bundle, "int8_scores.json"), encoding="utf-8") as f:
    int8_scores = np.asarray(json.load(f)["256"])
  batch = TOKENIZE_BATCH
  peak = args.peak_tflops * 1e12
  bucketed = BatchedScorer(load_merged(bundle, "sdpa"), device, "bfloat16", args.gpu_batch_tokens)
  eager = _eager_runner(load_merged(bundle, "eager"), device)
  config = bucketed.classifier.encoder.config
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  report = {"device": name, "documents": len(texts),
            "torch": torch.__version__, "peak_bf16_tflops": args.peak_tflops,
            "tokenize_batch": batch, "max_batch_tokens": args.gpu_batch_tokens, "windows": {}}
  for window in WINDOWS:
    windower = Windower(window, OVERLAP, tokenizer_path=bundle)
    per_text = _windows(windower, texts, batch)
    flat = [w for windows in per_text for w in windows]
    tokens = sum(len(w) for w in flat)
    token_flops = flops_per_token(config, window)
    tokenize_s, _ = _timed(lambda: _windows(windower, texts, batch), args.gpu_passes)
    entry = {"windows": len(flat), "real_tokens": tokens,
             "model_gflops_per_token": token_flops / 1e9,
             "tokenize_only_tokens_per_s": tokens / tokenize_s, "engines": {}}
    for name, engine in (("bucketed_bf16", bucketed), ("eager_fp16_padded", eager)):
      total_s, probs = _timed(lambda e=engine: e([w for ws in _windows(windower, texts, batch)
                                                   for w in ws]), args.gpu_passes)
      compute_s, _ = _timed(lambda e=engine: e(flat), args.gpu_passes)
      entry["engines"][name] = {
          "docs_per_s": len(texts) / total_s, "tokens_per_s": tokens / total_s,
          "compute_only_tokens_per_s": tokens / compute_s,
          "share_of_bf16_peak": tokens / total_s * token_flops / peak,
          "compute_only_share_of_bf16_peak": tokens / compute_s * token_flops / peak,
          "scores": _doc_scores(probs, per_text)}
    engines = entry["engines"]
    entry["bucketed_vs_eager"] = (engines["bucketed_bf16"]["tokens_per_s"]
                                  / engines["eager_fp16_padded"]["tokens_per_s"])
    if window == 256:
      entry["bucketed_bf16_vs_cpu_int8_score_agreement"] = float(
          (engines["bucketed_bf16"]["scores"] == int8_scores).mean())
      entry["eager_fp16_vs_cpu_int8_score_agreement"] = float(
          (engines["eager_fp16_padded"]["scores"] == int8_scores).mean())
    for values in engines.values():
      del values["scores"]
    report["windows"][str(window)] = entry
  return report
