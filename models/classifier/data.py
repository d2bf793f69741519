"""Labelled data for the classifier: JSONL with `text` and `score_0_5`, and the stable dev split."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing

# The three labelled files of ../shared/data (the first, EXTRA.md's and EXTRA2.md's), by glob.
DEFAULT_LABELS = "../shared/data/safety_labels*.jsonl"
DEV_PERCENT = 10


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  text: str
  score: int
  source: str
  category: str = ""


def is_dev(example_id: str, percent: int = DEV_PERCENT) -> bool:
  """Whether an id falls in the dev split: a stable hash of the id, never random state."""
  digest = hashlib.sha256(example_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % 100 < percent


def label_files(pattern: str) -> list[str]:
  """The files of a path or glob (e.g. an annotate run's `labels/part-*.jsonl.gz`), sorted."""
  from apache_beam.io.filesystems import FileSystems
  paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
  if not paths:
    raise FileNotFoundError(f"No labels file matches {pattern}")
  return paths


def labels_sha256(pattern: str) -> str:
  """A digest of the labels' bytes, over every matching file in order."""
  from apache_beam.io.filesystems import FileSystems
  digest = hashlib.sha256()
  for path in label_files(pattern):
    with FileSystems.open(path, compression_type="uncompressed") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def read_labels(pattern: str) -> list[Example]:
  """Reads labelled JSONL (plain or .gz; a path or glob any of Beam's FileSystems knows).

  Each row needs `text` and `score_0_5` (0-5); `id` and `source` are kept when present.
  """
  from apache_beam.io.filesystems import FileSystems
  examples = []
  for path in label_files(pattern):
    with FileSystems.open(path) as f:
      for index, line in enumerate(iter(f.readline, b"")):  # compressed files do not iterate
        if not line.strip():
          continue
        row = json.loads(line)
        score = int(row["score_0_5"])
        if not 0 <= score <= 5:
          raise ValueError(f"{path}:{index + 1}: score_0_5 must be 0-5, got {score}")
        examples.append(Example(
            id=str(row.get("id", f"{index}")), text=str(row["text"]), score=score,
            source=str(row.get("source", "unknown")), category=str(row.get("category", ""))))
  return examples


def split(examples: typing.Iterable[Example], percent: int = DEV_PERCENT):
  """(train, dev) by the stable hash of each id."""
  train, dev = [], []
  for example in examples:
    (dev if is_dev(example.id, percent) else train).append(example)
  return train, dev
