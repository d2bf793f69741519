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

from corpus.records import HARMFULNESS_TAG, STAGE_TAG, Document
from transforms.deadletter import RecordStep, Reject, apply_step, count

_WORD = re.compile(r"\S+")

# Characters a page can hide inside a word (zero-width spaces and joiners, soft hyphen, BOM).
_INVISIBLE = "[\u00ad\u200b-\u200d\u2060\ufeff]*"


def _spelled(word: str) -> str:
  """A pattern for `word` with invisible characters allowed between its letters."""
  return _INVISIBLE.join(re.escape(letter) for letter in word)


_SEPARATOR = f"(?:[\\s_.\\-]|{_INVISIBLE[:-1]})*"
_TAG_WORDS = _SEPARATOR.join(_spelled(word) for word in ("potentially", "unsafe", "content"))
# The tag and its near spellings: any case; spaces, hyphens, dots or nothing for the
# underscores; a closing or self-closing slash; HTML-escaped, full-width or JSON-escaped angle
# brackets; and the bare underscored token, which no English text spells. A page can carry any
# of them, and a tokenizer that keeps the tag as one token, or a model that learns the
# tag's meaning, must never see one in safe data, nor one the tagger did not put there.
_TAG_LIKE = re.compile(
    "(?:(?:<|&lt;|&#0*60;|&#x0*3c;|\uff1c|\u2039|\\\\u003c)" + f"{_SEPARATOR}/?{_SEPARATOR}"
    + _TAG_WORDS + f"{_SEPARATOR}/?{_SEPARATOR}" + "(?:>|&gt;|&#0*62;|&#x0*3e;|\uff1e|\u203a|\\\\u003e)"
    + "|" + _spelled("potentially") + "_" + _spelled("unsafe") + "_" + _spelled("content") + ")"
    + "[ \t]*", re.IGNORECASE)


def count_tags(text: str) -> int:
  """How many tags, or near spellings of one, `text` holds."""
  return sum(1 for _ in _TAG_LIKE.finditer(text))


def strip_tags(text: str) -> tuple[str, int]:
  """`text` without the tag or any near spelling of it, and how many were removed.

  A tag between two words leaves one space (so "a<tag>b" reads "a b", not "ab"); one beside a
  space or a line end leaves nothing, so no double spaces appear. Text without a tag is
  returned unchanged, byte for byte.
  """
  removed = 0

  def replace(match: re.Match) -> str:
    nonlocal removed
    removed += 1
    before = text[match.start() - 1] if match.start() else "\n"
    after = text[match.end()] if match.end() < len(text) else "\n"
    return "" if before.isspace() or after.isspace() else " "

  stripped = _TAG_LIKE.sub(replace, text)
  return stripped, removed


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


class _StripTagsFn(RecordStep):

  def __init__(self, stage: str):
    super().__init__()
    self.stage = stage

  def apply(self, document: Document):
    text, removed = strip_tags(document.text)
    if removed:
      count(self.stage, "tags_stripped", removed)
      if not text.strip():
        raise Reject("empty_text", tags_stripped=removed)
      document = document._replace(text=text)
    yield document


class StripTags(beam.PTransform):
  """Removes the tag and its near spellings from every Document's text (see `strip_tags`).

  Applied to every input document before scoring and to every generated text before its gates,
  so the only tags in the output are the ones HarmfulnessTag inserts, in `tagged/`. A text that
  was nothing but tags becomes an `empty_text` dead letter of `stage`. Returns
  {DOCUMENTS: ..., DEAD_LETTER: ...}; `stripped_tallies` counts what it removes.
  """

  def __init__(self, stage: str):
    super().__init__()
    self._stage = stage

  def expand(self, documents):
    return apply_step(documents, "StripTags", _StripTagsFn(self._stage))
