"""Calibrates the off_topic threshold (`--quality_min_topic_similarity`) on real pairs.

    python benchmarks/calibrate_topic.py [--documents 300] [--benchmark RUN.json]

The quality gate calls a text off topic when the cosine between its embedding and its source's,
under the safety classifier's own encoder (the exported graph's `embedding` output), is below
the threshold. Two kinds of real pairs say where the threshold belongs:

- halves: long real documents (web pages, posts, news, books; the benchmark's licensed sources
  and the public-domain ones) split in two; a document's two halves are a pair on one topic
  (written differently, as a rewrite is), the first half of one document with the second half
  of another is a pair on two topics;
- generated (with `--benchmark`, the `--output` JSON of benchmarks/generation_quality.py): each
  source with the text generated from it, against the same text beside another source.

For each it prints the cosine percentiles of same-topic and different-topic pairs and the
threshold that best separates them (the largest true-positive rate minus false-positive rate,
Youden's J), with the share of same-topic pairs it would reject and of different-topic pairs it
would keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.generation_quality import DATA, LICENSED_SOURCES  # noqa: E402
from models.classifier import artifacts  # noqa: E402
from transforms.quality import TextEncoder  # noqa: E402

LONG_SOURCES = set(LICENSED_SOURCES) | {"gutenberg", "state_union"}


def halves(pattern: str, count: int, min_chars: int = 1200) -> list[tuple[str, str]]:
  """(first half, second half) of `count` long documents, split at a sentence end near the
  middle, picked by a hash of the id (sources taking turns)."""
  import glob
  by_source: dict[str, list] = {}
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        if row["source"] in LONG_SOURCES and len(row["text"]) >= min_chars:
          key = hashlib.sha256(row["id"].encode()).hexdigest()
          by_source.setdefault(row["source"], []).append((key, row["text"]))
  queues = [sorted(rows)[:count] for _, rows in sorted(by_source.items())]
  texts = []
  while len(texts) < count and any(queues):
    for queue in queues:
      if queue and len(texts) < count:
        texts.append(queue.pop(0)[1])
  pairs = []
  for text in texts:
    middle = len(text) // 2
    cut = text.find(". ", middle)
    cut = cut + 1 if 0 < cut < middle + 400 else middle
    pairs.append((text[:cut].strip(), text[cut:].strip()))
  return pairs


def separation(same: np.ndarray, different: np.ndarray) -> dict:
  """Percentiles and the threshold with the largest TPR - FPR."""
  candidates = np.unique(np.concatenate([same, different]))
  best = max(candidates, key=lambda t: (same >= t).mean() - (different >= t).mean())
  pct = lambda values: {p: round(float(np.percentile(values, p)), 3) for p in (1, 5, 25, 50, 75, 95)}
  return {"same_topic": pct(same), "different_topic": pct(different),
          "threshold": round(float(best), 3),
          "same_topic_rejected": round(float((same < best).mean()), 3),
          "different_topic_kept": round(float((different >= best).mean()), 3),
          "pairs": int(len(same))}


def shifted(vectors: list[np.ndarray]) -> list[tuple[int, int]]:
  return [(i, (i + 1 + i % 7) % len(vectors)) for i in range(len(vectors))]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--documents", type=int, default=300)
  parser.add_argument("--data", default=DATA)
  parser.add_argument("--benchmark", default=None,
                      help="the --output JSON of benchmarks/generation_quality.py")
  parser.add_argument("--classifier_model", default=None)
  args = parser.parse_args(argv)
  encoder = TextEncoder(artifacts.settle_model(args.classifier_model))
  results = {}
  pairs = halves(args.data, args.documents)
  firsts = [encoder.embed(a) for a, _ in pairs]
  seconds = [encoder.embed(b) for _, b in pairs]
  same = np.array([float(a @ b) for a, b in zip(firsts, seconds)])
  different = np.array([float(firsts[i] @ seconds[j]) for i, j in shifted(firsts)])
  results["halves"] = separation(same, different)
  if args.benchmark:
    with open(args.benchmark, encoding="utf-8") as f:
      rows = [r for r in json.load(f)["requests"] if r["output"].strip()]
    sources = [encoder.embed(r["source"]) for r in rows]
    outputs = [encoder.embed(r["output"]) for r in rows]
    same = np.array([float(a @ b) for a, b in zip(sources, outputs)])
    different = np.array([float(sources[i] @ outputs[j]) for i, j in shifted(sources)])
    results["generated"] = separation(same, different)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
