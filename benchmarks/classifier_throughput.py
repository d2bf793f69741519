"""Classifier throughput: PyTorch fp32 (the baseline) vs bf16 vs ONNX Runtime fp32 and int8.

    python benchmarks/classifier_throughput.py [--docs 512] [--chars 1500] [--json]
    python benchmarks/classifier_throughput.py --device cuda --bundle build/gpu_bundle [--json]
    python benchmarks/classifier_throughput.py --spinning [--processes 1,2] [--json]

Scores the same real documents (pieces of about --chars characters cut at word boundaries from
the long texts of the labelled data: movie reviews, Brown corpus, State of the Union) in
256-token windows with each engine, in the same process, and prints docs/s, tokens/s, each
engine's ratio to PyTorch fp32 eager, and how many documents get the same 0-5 score as with
ONNX fp32 (int8 vs fp32 agreement). PyTorch gets the windows in length-sorted padded batches
of --batch_tokens; ONNX Runtime runs one window per call, as the pipeline does, and once more in
padded batches for comparison.

`--spinning` measures the shipped session (idle ONNX Runtime threads sleep) against the same
session with ONNX Runtime's default spin-waiting, in 1 and in 2 processes at once (cores shared,
as by SDK processes on a worker), and prints the windows/s of each and their ratio.

`--device cuda` measures the GPU path (models/classifier/batched.py, what
`--classifier_device=cuda` runs) from a bundle made here by benchmarks/make_gpu_bundle.py (the
merged weights, the tokenizer, the documents and their CPU int8 scores), so it needs only
PyTorch, transformers, tokenizers and safetensors: see benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.classifier import chunking, data, model  # noqa: E402

LONG_SOURCES = ("movie_reviews", "brown_corpus", "state_union")


def real_documents(labels: str, count: int, chars: int) -> list[str]:
  """`count` pieces of about `chars` characters, cut at word boundaries, from long texts."""
  pieces = []
  for example in data.read_labels(labels):
    if example.source not in LONG_SOURCES:
      continue
    text = example.text
    while len(text) >= chars and len(pieces) < count:
      cut = text.rfind(" ", 0, chars)
      cut = chars if cut <= 0 else cut
      pieces.append(text[:cut].strip())
      text = text[cut:]
    if len(pieces) >= count:
      return pieces
  raise SystemExit(f"only {len(pieces)} documents of {chars} characters in {labels}")


def torch_runner(classifier, bf16: bool, batch_tokens: int):
  def run(windows):
    probs = np.zeros((len(windows), 6), dtype=np.float32)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    start = 0
    while start < len(order):
      length = len(windows[order[min(len(order) - 1, start)]])
      size = max(1, batch_tokens // max(length, 1))
      rows = order[start:start + size]
      ids, mask = model.pad_batch([windows[i] for i in rows])
      with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        probs[rows] = torch.softmax(classifier(ids, mask).float(), -1).numpy()
      start += size
    return probs
  return run


def measure(run, windows, per_doc, repeats: int):
  run(windows[:64])  # warm-up: kernels, allocations
  best = float("inf")
  for _ in range(repeats):
    started = time.perf_counter()
    probs = run(windows)
    best = min(best, time.perf_counter() - started)
  scores, offset = [], 0
  for n in per_doc:
    scores.append(chunking.document_score(probs[offset:offset + n])[0])
    offset += n
  return best, np.asarray(scores), probs


def main(argv=None):
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.spinning:
    spinning_main(args)
    return
  if args.device == "cuda":
    from benchmarks.classifier_gpu import gpu_report
    report = gpu_report(args)
    print(json.dumps(report, indent=2, sort_keys=True))
    return
  cpu_main(args)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--labels", default=data.DEFAULT_LABELS, help="labelled JSONL")
  parser.add_argument("--docs", type=int, default=512, help="documents scored")
  parser.add_argument("--chars", type=int, default=1500, help="characters per document")
  parser.add_argument("--batch_tokens", type=int, default=8192,
                      help="padded tokens per batch of the batched engines")
  parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best counts")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--static_int8", action="store_true",
                      help="also a statically quantized (calibrated) int8 graph, one window per "
                           "call and in padded batches, with the batch invariance of each")
  parser.add_argument("--spinning", action="store_true",
                      help="measure sleeping against spin-waiting ONNX Runtime threads instead")
  parser.add_argument("--processes", default="1,2",
                      help="with --spinning: how many processes score at once, comma-separated")
  parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                      help="cpu: the engines above; cuda: the batched GPU path (needs --bundle)")
  parser.add_argument("--bundle", default="build/gpu_bundle",
                      help="with --device cuda: the folder benchmarks/make_gpu_bundle.py wrote")
  parser.add_argument("--gpu_batch_tokens", type=int, default=65536,
                      help="with --device cuda: padded tokens per forward pass")
  parser.add_argument("--gpu_passes", type=int, default=20,
                      help="with --device cuda: timed passes over the documents (the best "
                           "counts)")
  parser.add_argument("--peak_tflops", type=float, default=790.0,
                      help="with --device cuda: the GPU's dense bf16 peak (H200: about 790)")
  return parser


def _spinning_worker(onnx_path, windows, spinning, start, queue):
  from models.classifier.handler import make_session, run_windows
  session = make_session(onnx_path, spinning=spinning)
  run_windows(session, windows[:16])
  start.wait()
  began = time.perf_counter()
  run_windows(session, windows)
  queue.put(time.perf_counter() - began)


def spinning_main(args):
  """Windows/s of the shipped session (threads sleep) and of spin-waiting threads, in 1..N
  processes scoring the same windows at once; each process count's ratio in this run."""
  import multiprocessing
  from models.classifier import export
  texts = real_documents(args.labels, args.docs, args.chars)
  windows = [w for ws in chunking.Windower().windows(texts) for w in ws]
  onnx_path = export.ensure_exported()["int8"]
  context = multiprocessing.get_context("spawn")
  report = {"windows": len(windows), "cores": os.cpu_count(), "runs": []}
  for processes in [int(n) for n in args.processes.split(",")]:
    row = {"processes": processes}
    for _ in range(args.repeats):
      for spinning in (True, False):
        # every process loads and warms its session, then all start together
        start, queue = context.Barrier(processes), context.Queue()
        workers = [context.Process(target=_spinning_worker,
                                   args=(onnx_path, windows, spinning, start, queue))
                   for _ in range(processes)]
        for worker in workers:
          worker.start()
        slowest = max(queue.get() for _ in workers)
        for worker in workers:
          worker.join()
        key = "spinning_windows_per_s" if spinning else "sleeping_windows_per_s"
        row[key] = max(row.get(key, 0.0), processes * len(windows) / slowest)
    row["sleeping_vs_spinning"] = row["sleeping_windows_per_s"] / row["spinning_windows_per_s"]
    report["runs"].append(row)
  if args.json:
    print(json.dumps(report, indent=2, sort_keys=True))
    return
  print(f"{len(windows)} windows a process, {report['cores']} cores")
  print(f"{'processes':>9}{'spinning w/s':>14}{'sleeping w/s':>14}{'ratio':>8}")
  for row in report["runs"]:
    print(f"{row['processes']:>9}{row['spinning_windows_per_s']:>14.1f}"
          f"{row['sleeping_windows_per_s']:>14.1f}{row['sleeping_vs_spinning']:>7.2f}x")


def cpu_main(args):
  from models.classifier import export
  from models.classifier.handler import make_session, run_windows
  texts = real_documents(args.labels, args.docs, args.chars)
  per_text = chunking.Windower().windows(texts)
  windows = [w for text_windows in per_text for w in text_windows]
  per_doc = [len(w) for w in per_text]
  tokens = sum(len(w) for w in windows)
  paths = export.ensure_exported()
  classifier = model.load_classifier()
  engines = {
      "pytorch_fp32": torch_runner(classifier, False, args.batch_tokens),
      "pytorch_bf16": torch_runner(classifier, True, args.batch_tokens),
      # the shipped path: one window per ONNX Runtime call (see models/classifier/handler.py)
      "onnx_fp32": lambda w, s=make_session(paths["fp32"]): run_windows(s, w),
      "onnx_int8": lambda w, s=make_session(paths["int8"]): run_windows(s, w),
      "onnx_int8_padded_batches": (
          lambda w, s=make_session(paths["int8"]): run_windows(s, w, args.batch_tokens)),
  }
  if args.static_int8:
    # Calibrated on windows of other documents than the measured ones.
    import tempfile
    calibration = [w for ws in chunking.Windower().windows(
        real_documents(args.labels, args.docs + 32, args.chars)[args.docs:]) for w in ws][:48]
    static = export.quantize_static_int8(
        paths["fp32"], os.path.join(tempfile.mkdtemp(), "model.int8.static.onnx"), calibration)
    engines["onnx_int8_static"] = lambda w, s=make_session(static): run_windows(s, w)
    engines["onnx_int8_static_padded_batches"] = (
        lambda w, s=make_session(static): run_windows(s, w, args.batch_tokens))
  results, scores, probs = {}, {}, {}
  for name, run in engines.items():
    seconds, scores[name], probs[name] = measure(run, windows, per_doc, args.repeats)
    results[name] = {"seconds": seconds, "docs_per_s": len(texts) / seconds,
                     "tokens_per_s": tokens / seconds}
  baseline = results["pytorch_fp32"]["seconds"]
  for name in results:
    results[name]["ratio_vs_pytorch_fp32"] = baseline / results[name]["seconds"]
  report = {
      "documents": len(texts), "windows": len(windows), "tokens": tokens,
      "threads": torch.get_num_threads(), "engines": results,
      "int8_vs_fp32_score_agreement": float((scores["onnx_int8"] == scores["onnx_fp32"]).mean()),
      "onnx_fp32_vs_pytorch_fp32_score_agreement": float(
          (scores["onnx_fp32"] == scores["pytorch_fp32"]).mean()),
      "int8_vs_pytorch_bf16_ratio": results["pytorch_bf16"]["seconds"]
      / results["onnx_int8"]["seconds"],
      # How far padded batching moves a window's probabilities (0 would be batch-invariant).
      "int8_batch_invariance_max_abs_diff": float(
          np.abs(probs["onnx_int8"] - probs["onnx_int8_padded_batches"]).max()),
  }
  if args.static_int8:
    report.update({
        "static_int8_vs_fp32_score_agreement": float(
            (scores["onnx_int8_static"] == scores["onnx_fp32"]).mean()),
        "static_int8_padded_vs_fp32_score_agreement": float(
            (scores["onnx_int8_static_padded_batches"] == scores["onnx_fp32"]).mean()),
        "static_int8_batch_invariance_max_abs_diff": float(
            np.abs(probs["onnx_int8_static"] - probs["onnx_int8_static_padded_batches"]).max()),
        "static_int8_padded_vs_shipped_int8_ratio": results["onnx_int8"]["seconds"]
        / results["onnx_int8_static_padded_batches"]["seconds"],
    })
  if args.json:
    print(json.dumps(report, indent=2, sort_keys=True))
    return
  print(f"{len(texts)} documents, {len(windows)} windows, {tokens} tokens, "
        f"{report['threads']} threads")
  print(f"{'engine':<16}{'docs/s':>10}{'tokens/s':>12}{'vs fp32':>10}")
  for name, r in results.items():
    print(f"{name:<16}{r['docs_per_s']:>10.1f}{r['tokens_per_s']:>12.0f}"
          f"{r['ratio_vs_pytorch_fp32']:>9.2f}x")
  print(f"int8 vs fp32 same score: {report['int8_vs_fp32_score_agreement']:.1%}; "
        f"int8 vs PyTorch bf16: {report['int8_vs_pytorch_bf16_ratio']:.2f}x")


if __name__ == "__main__":
  main()
