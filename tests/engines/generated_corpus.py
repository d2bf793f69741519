"""A corpus of any size for the scale runs, built from the bundled sample, the same on every call.

Each document is a seeded shuffle of sentences drawn from the sample's documents (benign and
unsafe alike, so every score band and so every branch gets records), of a seeded length: the
scale runs and `benchmarks/pipeline_throughput.py` need many distinct documents that read like
the sample, not one document repeated (deduplication would drop repeats, and identical texts
batch unlike real ones). Ids and urls are unique; the files are split into `files` parts, as a
crawl comes in many files.
"""

from __future__ import annotations

import json
import os
import random
import re

# Sentence ends of the sample's English prose.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SEED = 20251201


def sample_sentences() -> list[str]:
  """Every distinct sentence of the bundled sample, in file order."""
  from beam_pipeline.options import SAMPLE_INPUT
  sentences: dict[str, None] = {}
  with open(SAMPLE_INPUT, encoding="utf-8") as f:
    for line in f:
      for sentence in _SENTENCE_END.split(json.loads(line)["text"]):
        if len(sentence) >= 20:
          sentences.setdefault(sentence.strip(), None)
  return list(sentences)


def documents(count: int, seed: int = SEED, min_chars: int = 150, max_chars: int = 1500):
  """`count` documents as dicts (id, url, source, text)."""
  pool = sample_sentences()
  rng = random.Random(seed)
  for index in range(count):
    target = rng.randint(min_chars, max_chars)
    parts: list[str] = []
    size = 0
    while size < target:
      sentence = rng.choice(pool)
      parts.append(sentence)
      size += len(sentence) + 1
    yield {"id": f"gen-{index:07d}", "url": f"https://generated.example/{index}",
           "source": f"generated-{index % 7}", "text": " ".join(parts)}


def write(folder: str, count: int, files: int = 4, seed: int = SEED, **lengths) -> str:
  """Writes `count` documents (`lengths`: documents' min_chars, max_chars) into `files` JSONL
  files in `folder`; returns their glob."""
  os.makedirs(folder, exist_ok=True)
  handles = [open(os.path.join(folder, f"part-{i:03d}.jsonl"), "w", encoding="utf-8")  # pylint: disable=consider-using-with
             for i in range(files)]
  try:
    for index, document in enumerate(documents(count, seed, **lengths)):
      handles[index % files].write(json.dumps(document) + "\n")
  finally:
    for handle in handles:
      handle.close()
  return os.path.join(folder, "*.jsonl")
