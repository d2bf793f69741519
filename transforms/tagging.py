"""HarmfulnessTag: marks unsafe text with `<potentially_unsafe_content>` (the paper's tags).

Before each word after the first, the tag is inserted with probability `tag_rate`. Whether a
word is tagged comes from a seeded hash of the document id and the word's position, never from
global random state, so every runner gives the same text. The tag is inserted directly before
the word, so removing every tag gives back the original text byte for byte.
"""

from __future__ import annotations

import hashlib
import re

import apache_beam as beam
import numpy as np

from transforms.deadletter import RecordStep, apply_step, count
from transforms.documents import STAGE_TAG, Document
from transforms.schema import HARMFULNESS_TAG

_WORD = re.compile(r"\S+")


def tag_positions(doc_id: str, n_words: int, tag_rate: float, seed: int) -> np.ndarray:
  """Indices (1..n_words-1) of the words that get a tag, from a hash of the id and seed."""
  if n_words < 2 or tag_rate <= 0:
    return np.zeros(0, dtype=np.int64)
  digest = hashlib.sha256(f"{seed}\x00{doc_id}".encode("utf-8")).digest()
  generator = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
  draws = generator.random(n_words - 1)
  return np.flatnonzero(draws < tag_rate) + 1


def insert_tags(text: str, doc_id: str, tag_rate: float, seed: int) -> tuple[str, int]:
  """The text with tags inserted, and how many."""
  starts = [m.start() for m in _WORD.finditer(text)]
  positions = tag_positions(doc_id, len(starts), tag_rate, seed)
  if not len(positions):
    return text, 0
  pieces, previous = [], 0
  for index in positions:
    start = starts[index]
    pieces.append(text[previous:start])
    pieces.append(HARMFULNESS_TAG)
    previous = start
  pieces.append(text[previous:])
  return "".join(pieces), len(positions)


class _TagDoFn(RecordStep):
  stage = STAGE_TAG

  def __init__(self, tag_rate: float, min_score: int, seed: int):
    self._tag_rate = tag_rate
    self._min_score = min_score
    self._seed = seed

  def apply(self, document: Document):
    if document.safety_score < self._min_score:
      yield document._replace(stage="tagged", tag_count=0)
      return
    text, tags = insert_tags(document.text, document.id, self._tag_rate, self._seed)
    count(STAGE_TAG, "tags_inserted", tags)
    yield document._replace(text=text, stage="tagged", tag_count=tags)


class HarmfulnessTag(beam.PTransform):
  """Tags Documents scored >= `min_score`; returns {DOCUMENTS: tagged, DEAD_LETTER: ...}."""

  def __init__(self, tag_rate: float = 0.05, min_score: int = 1, seed: int = 0):
    super().__init__()
    if not 0.0 <= tag_rate <= 1.0:
      raise ValueError(f"tag_rate must be in [0, 1], got {tag_rate}")
    self._tag_rate = tag_rate
    self._min_score = min_score
    self._seed = seed

  def expand(self, documents):
    return apply_step(
        documents, "Tag", _TagDoFn(self._tag_rate, self._min_score, self._seed))
