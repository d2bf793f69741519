"""The dead-letter plumbing shared by every step.

A step is a `RecordStep`: a DoFn whose subclass implements one method, `apply(record)`, that
yields the records to pass on and raises `Reject(reason)` for a record it cannot use. The base
class turns a rejection into a `DeadLetter` on the `DEAD_LETTER` tagged output and counts
records in, out and rejected per stage and reason as Beam metrics. A DoFn that is no RecordStep
(a reader, deduplication: one input, several rejections) emits its dead letters through the same
helper, `rejected`, so every dead letter is made and counted one way.
"""

from __future__ import annotations

import collections.abc
import json
import math
import typing

import apache_beam as beam
from apache_beam.metrics import Metrics

from corpus.records import DEAD_LETTER, DOCUMENTS, METRICS_NAMESPACE, DeadLetter, Document


def apply_step(records, label: str, dofn: beam.DoFn, output_type: typing.Any = None):
  """Applies a step's DoFn; its outputs are DOCUMENTS (`output_type`, by default Documents) and
  DEAD_LETTER (DeadLetters).

  Both outputs are typed, so they travel with a deterministic coder (the RowCoder for records).
  """
  return records | label >> beam.ParDo(dofn).with_output_types(
      output_type or Document, **{DEAD_LETTER: DeadLetter}).with_outputs(
          DEAD_LETTER, main=DOCUMENTS)


class Reject(Exception):
  """Raised by a step for a record it cannot use; `reason` is a short snake_case code."""

  def __init__(self, reason: str, **detail):
    super().__init__(reason)
    self.reason = reason
    self.detail = detail


class Unparsed(typing.NamedTuple):
  """What a dead letter carries of a record that is no Document (yet): where it came from and
  as much of it as could be recovered (a raw line, the fields as JSON, or nothing)."""
  id: str
  source: str
  payload: str = ""


def json_value(value: typing.Any) -> typing.Any:
  """`value` as plain JSON data, so a dead letter's detail reads back with `json.loads` as
  objects, lists, strings and numbers all the way down, never as the Python `repr` of a value.

  Mappings, named tuples and rows (a record that crossed a portable runner's coder is a generated
  row class) become objects; tuples, lists and sets (sorted) lists; NumPy values their Python
  numbers; bytes their UTF-8 text; an exception `Type: message`; a float that is no number
  (NaN, infinity), which JSON cannot hold, its name. Anything else becomes its `str()`.
  """
  if value is None or isinstance(value, (bool, int, str)):
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else str(value)
  if isinstance(value, collections.abc.Mapping):
    return {str(key): json_value(item) for key, item in value.items()}
  for as_dict in ("_asdict", "as_dict"):  # named tuples, beam.Row and generated row classes
    if callable(getattr(value, as_dict, None)):
      return json_value(getattr(value, as_dict)())
  if isinstance(value, (bytes, bytearray)):
    return bytes(value).decode("utf-8", errors="replace")
  if isinstance(value, BaseException):
    return f"{type(value).__name__}: {value}"
  if callable(getattr(value, "tolist", None)):  # NumPy scalars and arrays
    return json_value(value.tolist())
  if isinstance(value, (set, frozenset)):
    return sorted((json_value(item) for item in value), key=json.dumps)
  if isinstance(value, (list, tuple)):
    return [json_value(item) for item in value]
  return str(value)


def detail_json(detail: dict | None) -> str:
  """A dead letter's `detail` field: `detail` (`json_value`) as JSON text of one object."""
  return json.dumps(json_value(detail or {}), sort_keys=True, ensure_ascii=False)


def dead_letter_for(
    stage: str, record: typing.Any, reason: str, detail: dict | None = None) -> DeadLetter:
  """A DeadLetter for a Document, an `Unparsed` record, or anything else (kept as its text form).

  A Document is recognised by its fields, not its class: portable runners (Flink, Prism,
  Dataflow) decode schema'd records into generated row classes with the same fields.
  """
  detail_json_text = detail_json(detail)
  if all(hasattr(record, field) for field in ("id", "text", "source", "safety_score")):
    return DeadLetter(
        stage=stage, reason=reason, id=record.id, source=record.source, payload=record.text,
        detail=detail_json_text)
  if isinstance(record, Unparsed):
    return DeadLetter(
        stage=stage, reason=reason, id=record.id, source=record.source, payload=record.payload,
        detail=detail_json_text)
  return DeadLetter(stage=stage, reason=reason, payload=str(record), detail=detail_json_text)


def rejected(stage: str, record: typing.Any, reason: str, detail: dict | None = None):
  """The one way a DoFn emits a dead letter: counted under `<stage>.dead_letter.<reason>` and
  tagged DEAD_LETTER (see `dead_letter_for` for what `record` may be)."""
  count(stage, f"dead_letter.{reason}")
  return beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_for(stage, record, reason, detail))


def failed_batch_dead_letters(failure, stage: str, reason: str):
  """Dead letters for a batch that RunInference failed on (its `failed_inferences` output):
  one per distinct keyed Document of the batch, with the exception in the detail."""
  batch, exception = failure
  error = f"{type(exception).__name__}: {exception}"[:500]
  seen = set()
  for document, _ in batch:
    if document.id in seen:  # one document can have several windows in a scoring batch
      continue
    seen.add(document.id)
    count(stage, f"dead_letter.{reason}")
    yield dead_letter_for(stage, document, reason, {"error": error})


def count(stage: str, name: str, n: int = 1) -> None:
  """Increments the counter `<stage>.<name>` in the pipeline's metrics namespace."""
  Metrics.counter(METRICS_NAMESPACE, f"{stage}.{name}").inc(n)


class RecordStep(beam.DoFn):
  """Base for steps that map one record to zero or more, with rejections as dead letters."""

  stage: str = ""

  def apply(self, record) -> typing.Iterable:
    raise NotImplementedError

  def dead_letter_subject(self, record) -> typing.Any:
    """What a rejected record's dead letter carries (default: the record itself)."""
    return record

  def process(self, record):
    count(self.stage, "in")
    try:
      outputs = list(self.apply(record))
    except Reject as rejection:
      yield rejected(
          self.stage, self.dead_letter_subject(record), rejection.reason, rejection.detail)
      return
    count(self.stage, "out", len(outputs))
    yield from outputs
