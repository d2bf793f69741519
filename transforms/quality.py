"""The quality gate: the cuts, then the quality checks, on every generated text.

The checks themselves (one decision each, their settings and which branch runs which) are
`transforms.quality_checks`. A text that fails one gets the reason `quality_<check>`; the
generation steps retry it (sampling, as for any rejected reply, `backend.RetryingGenerator`)
and dead-letter it after the last attempt.

Before the checks, what can be cut cleanly is cut and counted, not rejected: an opening
preamble ("Here is the rewritten text:"), a closing remark ("I hope this helps!") and, with
`--quality_truncation=trim`, an unfinished last sentence of a text that stopped at the token
limit. The off_topic check's embeddings come from `TextEncoder`, the safety classifier's own
encoder.
"""

from __future__ import annotations

import logging
import re
import typing

import numpy as np

from models.generators.prompts import KIND_REFUSEWEB, QUOTE_BEGIN, QUOTE_END, chat_messages
from transforms.quality_checks import (CHECK_FUNCTIONS, FINISH_LENGTH, KIND_CHECKS, OFF_TOPIC,
                                       Candidate, QualitySettings, plain, reason_of)

_LOG = logging.getLogger(__name__)

# The cuts made before the checks (counted in the report).
CUT_PREAMBLE = "preamble"
CUT_CLOSING = "closing_remark"
CUT_TRUNCATED = "unfinished_sentence"

_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*_]*(?=\s|$)")
# A first line that only introduces what follows ("Sure! Here is the rewritten text:").
_PREAMBLE_LINE = re.compile(
    r"^\W*(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[^\n]{0,80}|"
    r"(?:here is|here's|here are|below is|the following is)\b[^\n]{0,120}|"
    r"[^\n]{0,120}\b(?:rewrit\w*|rephras\w*|version|as requested)\b[^\n]{0,60}:)\s*$",
    re.IGNORECASE)
# A last paragraph that only comments on what precedes it.
_CLOSING = re.compile(
    r"^\W*(?:I hope (?:this|that|you)|let me know\b|feel free to\b|note:|"
    r"(?:this|the) (?:rewrit\w*|rephras\w*|version|script|dialogue|conversation|article) "
    r"(?:is|was|keeps|uses|has|maintains|contains|avoids|focuses)\b|"
    r"in this (?:rewrit\w*|version|script|dialogue|conversation)\b)", re.IGNORECASE)


# --- the cuts ---------------------------------------------------------------------------------

def cut_preamble(text: str) -> tuple[str, bool]:
  """The text without an opening line that only introduces it, when what follows has words."""
  first, newline, rest = text.partition("\n")
  if newline and _PREAMBLE_LINE.match(plain(first)) and re.search(r"\w", rest):
    return rest.strip(), True
  return text, False


def cut_closing_remark(text: str) -> tuple[str, bool]:
  """The text without a last paragraph that only comments on it ("I hope this helps!")."""
  paragraphs = re.split(r"\n\s*\n", text.strip())
  if len(paragraphs) > 1 and _CLOSING.match(plain(paragraphs[-1])):
    return "\n\n".join(paragraphs[:-1]).strip(), True
  return text, False


def cut_unfinished_sentence(text: str) -> tuple[str, bool]:
  """A text stopped mid-sentence cut back to its last sentence end, when that keeps at least
  half of it (else the text as it is, which the truncation check then rejects)."""
  ends = list(_SENTENCE_END.finditer(text))
  if not ends:
    return text, False
  kept = text[:ends[-1].end()].rstrip()
  if kept == text.rstrip() or len(kept) < len(text) / 2:
    return text, False
  return kept, True


# --- the gate ---------------------------------------------------------------------------------

class Review(typing.NamedTuple):
  """The gate's verdict on one reply: the text after the cuts, the reason (the first failing
  check's, "" when all pass), every failing check, the cuts made, the source/text cosine."""
  text: str
  reason: str
  failed: tuple = ()
  cuts: tuple = ()
  similarity: float | None = None

  def record(self) -> dict:
    """This review as one attempt of the history a Generation carries (JSON-able)."""
    entry = {"failed": list(self.failed), "cuts": list(self.cuts)}
    if self.similarity is not None:
      entry["similarity"] = round(self.similarity, 4)
    return entry


def quoted_source(prompt) -> str:
  """The text a prompt quotes (between the quote markers of its user turn), as the generator
  saw it: cut to the prompt's length and defused."""
  for message in chat_messages(prompt):
    if message["role"] == "user" and QUOTE_BEGIN in message["content"]:
      inside = message["content"].split(QUOTE_BEGIN, 1)[1]
      return inside.split(QUOTE_END, 1)[0].strip()
  return ""


class TextEncoder:
  """Embeddings of texts under the safety classifier's encoder: the exported graph's second
  output (`embedding`), windowed as scoring windows them. Loaded on first use, once per
  process; None embeddings when the graph has no such output (then off_topic keeps texts).

  `model_path` is the model location as `artifacts.settle_model` settled it where the graph
  was built (the job's --classifier_model, also with --classifier_device=cuda); None: the
  folder the image names in $SAFETY_PRETRAINING_CLASSIFIER. Nothing is built on a worker."""

  def __init__(self, model_path: str | None = None, window: int = 256, overlap: int = 32):
    self._model_path = model_path
    self._window = window
    self._overlap = overlap
    self._session = None
    self._windower = None
    self._available = None

  def __getstate__(self):
    return {"_model_path": self._model_path, "_window": self._window, "_overlap": self._overlap,
            "_session": None, "_windower": None, "_available": None}

  def _load(self) -> bool:
    if self._available is None:
      from models.classifier.chunking import Windower
      from models.classifier.handler import OnnxSafetyModelHandler, has_embedding, make_session
      # the handler reads the image's model and downloads a remote one as scoring does
      files = OnnxSafetyModelHandler(self._model_path).model_files()
      path = files.onnx
      self._session = make_session(path, intra_op_threads=1)
      self._windower = Windower(self._window, self._overlap,
                                tokenizer_path=files.tokenizer_folder)
      self._available = has_embedding(self._session)
      if not self._available:
        _LOG.warning("%s has no embedding output: the off_topic check keeps every text "
                     "(re-export with python -m models.classifier.export)", path)
    return self._available

  def embed(self, text: str) -> np.ndarray | None:
    if not self._load():
      return None
    from models.classifier.handler import embed_windows
    ids = self._windower.content_ids([text])[0]
    return embed_windows(self._session, self._windower.split_ids(ids))

  def similarity(self, first: str, second: str) -> float | None:
    a, b = self.embed(first), self.embed(second)
    return None if a is None or b is None else float(np.dot(a, b))


class QualityGate:
  """The checks of one prompt kind, as `RetryingGenerator` runs them on each reply.

  `enabled=False` makes no cuts and fails nothing (`--quality=off`); the reviews still say
  which checks would have failed, so the report shows them. `checks` limits the checks run.
  """

  def __init__(self, kind: str, settings: QualitySettings = QualitySettings(),
               encoder: TextEncoder | None = None, enabled: bool = True,
               checks: typing.Sequence[str] | None = None):
    if kind not in KIND_CHECKS:
      raise ValueError(f"no quality checks for prompt kind {kind!r}")
    self.kind, self.settings, self.encoder, self.enabled = kind, settings, encoder, enabled
    self.checks = tuple(c for c in KIND_CHECKS[kind] if checks is None or c in checks)

  def review(self, source: str, text: str, finish_reason: str = "") -> Review:
    """Cuts what can be cut cleanly, then runs every check; the first failure is the reason."""
    cuts = []
    if self.enabled:
      for name, cut in ((CUT_PREAMBLE, cut_preamble), (CUT_CLOSING, cut_closing_remark)):
        if self.kind == KIND_REFUSEWEB:
          break  # a dialogue's opening is the prefilled user turn; parse_dialogue drops the rest
        text, was_cut = cut(text)
        if was_cut:
          cuts.append(name)
      if finish_reason == FINISH_LENGTH and self.settings.truncation == "trim":
        text, was_cut = cut_unfinished_sentence(text)
        if was_cut:
          cuts.append(CUT_TRUNCATED)
          finish_reason = "trimmed"
    similarity = None
    if OFF_TOPIC in self.checks and self.encoder is not None and source:
      similarity = self.encoder.similarity(source, text)
    candidate = Candidate(self.kind, source, text, finish_reason, similarity)
    failed = tuple(check for check in self.checks
                   if not CHECK_FUNCTIONS[check](candidate, self.settings))
    reason = reason_of(failed[0]) if failed and self.enabled else ""
    return Review(text, reason, failed, tuple(cuts), similarity)

  def __call__(self, prompt, generation):
    """RetryingGenerator's review of one reply: the Generation with the cut text, the reason as
    its error when a check fails, and this attempt's review."""
    review = self.review(quoted_source(prompt), generation.text, generation.finish_reason)
    return generation._replace(text=review.text, error=review.reason), review.record()
