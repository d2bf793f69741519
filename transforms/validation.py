"""Validation: what text and fields a Document may carry; the rest goes to dead letter.

The reader (`transforms.reading`) runs these checks on every record it turns into a Document,
and `ValidateDocuments` runs them as a step of its own (stage `validate`).
"""

from __future__ import annotations

import re
import typing

import apache_beam as beam

from corpus.records import STAGE_VALIDATE, Document
from transforms.deadletter import RecordStep, Reject, apply_step

# C0 control characters other than whitespace (tab, newline, vertical tab, form feed, carriage
# return), the separators 0x1c-0x1f, and DEL: never part of a web page's text.
_CONTROL_CHARACTER = re.compile("[\x01-\x08\x0e-\x1f\x7f]")
# A lone UTF-16 surrogate: valid JSON (`"\\ud800"`), but no UTF-8 encoding exists for it.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
DEFAULT_MAX_CHARS = 1_000_000


def check_text(text: typing.Any, max_chars: int) -> None:
  """Raises `Reject` when `text` cannot be a document's text."""
  if text is None:
    raise Reject("missing_text")
  if not isinstance(text, str):
    raise Reject("text_not_string", type=type(text).__name__)
  if not text.strip():
    raise Reject("empty_text")
  if len(text) > max_chars:
    raise Reject("text_too_long", length=len(text), max_chars=max_chars)
  if "\x00" in text:
    raise Reject("nul_character", position=text.index("\x00"))
  control = _CONTROL_CHARACTER.search(text)
  if control:
    raise Reject(
        "control_character", position=control.start(), code=f"U+{ord(control.group()):04X}")
  surrogate = LONE_SURROGATE.search(text)
  if surrogate:
    raise Reject("lone_surrogate", field="text", position=surrogate.start())


def check_fields(document: Document) -> None:
  """Raises `Reject` when a field other than the text has no UTF-8 form (a lone surrogate)."""
  for field in ("id", "url", "source", "metadata"):
    value = getattr(document, field)
    surrogate = LONE_SURROGATE.search(value)
    if surrogate:
      raise Reject("lone_surrogate", field=field, position=surrogate.start())


def field_value(name: str, value, types: tuple, default: str) -> str:
  """A field as text: `default` when absent or empty; Reject when of another type."""
  if value is None or value == "":
    return default
  if isinstance(value, bool) or not isinstance(value, types):
    raise Reject("wrong_field_type", field=name, type=type(value).__name__)
  return str(value)


class _ValidateFn(RecordStep):
  stage = STAGE_VALIDATE

  def __init__(self, max_chars: int):
    super().__init__()
    self._max_chars = max_chars

  def apply(self, record: Document):
    check_text(record.text, self._max_chars)
    check_fields(record)
    yield record


class ValidateDocuments(beam.PTransform):
  """Passes documents with usable text; the rest go to dead letter (stage `validate`).

  Reasons: missing_text, text_not_string, empty_text (empty or whitespace only), text_too_long
  (more than `max_chars` characters), nul_character, control_character (a C0 control other than
  whitespace, or DEL), lone_surrogate (a field with no UTF-8 form). Returns
  {DOCUMENTS: ..., DEAD_LETTER: ...}.
  """

  def __init__(self, max_chars: int = DEFAULT_MAX_CHARS):
    super().__init__()
    self._max_chars = max_chars

  def expand(self, documents):
    return apply_step(documents, "Validate", _ValidateFn(self._max_chars))
