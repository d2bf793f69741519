"""Writes the bundle that benchmarks/gpu_check.sh carries to a bare GPU machine.

    python benchmarks/make_gpu_bundle.py [--output build/gpu_bundle] [--docs 512] [--chars 1500]

The GPU machine has PyTorch, transformers, tokenizers and the CPU onnxruntime, none of this
package's other dependencies (Beam, the PyPI package of the base encoder, peft, the labelled
data), and a device run carries at most 64 MiB. So the bundle holds what the GPU figures need,
made here: the merged classifier (adapters folded in, encoder weights in fp16: 45 MB; the head
fp32), the encoder's config and tokenizer, the same real documents as the CPU benchmark, and
their 0-5 scores from the pipeline's shipped CPU path (the int8 ONNX graph, one window per call,
256-token windows), for the GPU path's agreement figure; and in `generator/` the local
generator's config and tokenizer without its weights (SmolLM2: 500 MB of float32), which
`generation_throughput.py --random_weights` builds a model from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.classifier_throughput import real_documents  # noqa: E402
from benchmarks.generation_throughput import copy_model_config  # noqa: E402
from models.classifier import chunking, data  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", default="build/gpu_bundle")
  parser.add_argument("--labels", default=data.DEFAULT_LABELS, help="labelled JSONL")
  parser.add_argument("--docs", type=int, default=512)
  parser.add_argument("--chars", type=int, default=1500)
  parser.add_argument("--generator_model", default=None,
                      help="the local generator's GGUF or folder (default: SmolLM2)")
  args = parser.parse_args(argv)

  from models.classifier.batched import save_merged
  from models.classifier.export import ensure_exported
  from models.classifier.handler import make_session, run_windows
  from models.classifier.model import load_classifier

  texts = real_documents(args.labels, args.docs, args.chars)
  save_merged(load_classifier(), args.output,
              os.path.join(chunking.encoder_dir(), "tokenizer.json"), encoder_dtype="float16")
  with open(os.path.join(args.output, "documents.jsonl"), "w", encoding="utf-8") as f:
    for text in texts:
      f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
  session = make_session(ensure_exported()["int8"])
  windower = chunking.Windower(256, 32)
  scores = [chunking.document_score(run_windows(session, windows))[0]
            for windows in windower.windows(texts)]
  with open(os.path.join(args.output, "int8_scores.json"), "w", encoding="utf-8") as f:
    json.dump({"256": scores}, f)
  from models.generators.local import prepare_local_model
  copy_model_config(prepare_local_model(args.generator_model),
                    os.path.join(args.output, "generator"))
  size = sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(args.output) for name in names)
  print(f"{args.output}: {len(texts)} documents, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
  main()
