"""Labelled data for the classifier: JSONL with `text` and `score_0_5`, and the stable dev split."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing

DEFAULT_LABELS = "../shared/data/safety_labels.jsonl"
DEV_PERCENT = 10


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  text: str
  score: int
  source: str


def is_dev(example_id: str, percent: int = DEV_PERCENT) -> bool:
  """Whether an id falls in the dev split: a stable hash of the id, never random state."""
  digest = hashlib.sha256(example_id.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % 100 < percent


def read_labels(path: str) -> list[Example]:
  """Reads labelled JSONL (plain or .gz, any path Beam's FileSystems knows)."""
  from apache_beam.io.filesystems import FileSystems
  examples = []
  with FileSystems.open(path) as f:
    for index, line in enumerate(f):
      if not line.strip():
        continue
      row = json.loads(line)
      score = int(row["score_0_5"])
      if not 0 <= score <= 5:
        raise ValueError(f"{path}:{index + 1}: score_0_5 must be 0-5, got {score}")
      examples.append(Example(
          id=str(row.get("id", f"{index}")), text=str(row["text"]), score=score,
          source=str(row.get("source", "unknown"))))
  return examples


def split(examples: typing.Iterable[Example], percent: int = DEV_PERCENT):
  """(train, dev) by the stable hash of each id."""
  train, dev = [], []
  for example in examples:
    (dev if is_dev(example.id, percent) else train).append(example)
  return train, dev
