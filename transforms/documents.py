"""The record types that flow through the pipeline, and the readers that make them.

`Document` is the one record type for web documents, from the reader to the TFRecord writer;
each step fills in its own fields and leaves the rest as they were. `DeadLetter` is what every
step emits for a record it cannot use, with the stage and a reason.
"""

from __future__ import annotations

import json
import typing

import apache_beam as beam

# Stages, used in dead letters, counters and the `stage` feature.
STAGE_READ = "read"
STAGE_VALIDATE = "validate"
STAGE_SCORE = "score"
STAGE_ROUTE = "route"
STAGE_REPHRASE = "rephrase"
STAGE_REFUSEWEB = "refuseweb"
STAGE_MORAL_EDUCATION = "moral_education"
STAGE_GATE = "gate"
STAGE_TAG = "tag"

UNSCORED = -1


class Document(typing.NamedTuple):
  """A web document or a text generated from one.

  Fields filled by the reader: id, text, url, source, metadata (a JSON object as text).
  Filled by scoring: safety_score (0-5; UNSCORED before), safety_probs (6 floats),
  chunk_scores (one 0-5 score per window). Filled by generation: stage, style, parent_id.
  Filled by tagging: tag_count.
  """
  id: str
  text: str
  url: str = ""
  source: str = ""
  metadata: str = "{}"
  safety_score: int = UNSCORED
  safety_probs: typing.List[float] = []
  chunk_scores: typing.List[int] = []
  stage: str = "raw"
  style: str = ""
  parent_id: str = ""
  tag_count: int = 0


class DeadLetter(typing.NamedTuple):
  """A record that a stage could not use.

  `payload` holds the record as far as it could be recovered (the raw line, or the document's
  text); `id` and `source` say where it came from, `stage` and `reason` why it stopped, and
  `detail` any figure behind the reason (a score, an attempt count) as a JSON object.
  """
  stage: str
  reason: str
  id: str = ""
  source: str = ""
  payload: str = ""
  detail: str = "{}"

  def to_json(self) -> str:
    """One JSONL line that the JSONL reader can read back (`payload` is its `text`)."""
    return json.dumps(
        {
            "id": self.id,
            "text": self.payload,
            "source": self.source,
            "stage": self.stage,
            "reason": self.reason,
            "detail": json.loads(self.detail or "{}"),
        },
        ensure_ascii=False,
        sort_keys=True)


beam.coders.registry.register_coder(Document, beam.coders.RowCoder)
beam.coders.registry.register_coder(DeadLetter, beam.coders.RowCoder)


# The readers and validation. deadletter.py imports the record types above, so it is imported
# here, after them: import transforms.documents (or the package) before transforms.deadletter.
import codecs  # noqa: E402
import contextlib  # noqa: E402
import gzip  # noqa: E402

from apache_beam.io import fileio  # noqa: E402
from apache_beam.io.filesystem import CompressionTypes  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402

from transforms.deadletter import (  # noqa: E402
    DEAD_LETTER, DOCUMENTS, RecordStep, Reject, apply_step, count)

FORMAT_JSONL = "jsonl"
FORMAT_PARQUET = "parquet"
FORMAT_WET = "wet"

_FORMAT_SUFFIXES = (
    (FORMAT_WET, (".wet", ".wet.gz")),  # covers .warc.wet.gz
    (FORMAT_JSONL, (".jsonl", ".json", ".jsonl.gz", ".json.gz")),
    (FORMAT_PARQUET, (".parquet",)),
)
_PARQUET_BATCH_ROWS = 1024


def file_format(file_name: str) -> str | None:
  """The reader format for a file name (FORMAT_JSONL, FORMAT_PARQUET, FORMAT_WET), or None."""
  name = file_name.lower()
  for name_format, suffixes in _FORMAT_SUFFIXES:
    if name.endswith(suffixes):
      return name_format
  return None


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


class _ValidateFn(RecordStep):
  stage = STAGE_VALIDATE

  def __init__(self, max_chars: int):
    super().__init__()
    self._max_chars = max_chars

  def apply(self, record: Document):
    check_text(record.text, self._max_chars)
    yield record


class ValidateDocuments(beam.PTransform):
  """Passes documents with usable text; the rest go to dead letter (stage `validate`).

  Reasons: missing_text, text_not_string, empty_text (empty or whitespace only), text_too_long
  (more than `max_chars` characters), nul_character. Returns {DOCUMENTS: ..., DEAD_LETTER: ...}.
  """

  def __init__(self, max_chars: int = 1_000_000):
    super().__init__()
    self._max_chars = max_chars

  def expand(self, documents):
    return apply_step(documents, "Validate", _ValidateFn(self._max_chars))


class _RawRecord(typing.NamedTuple):
  """One record as a reader found it, before it becomes a Document or a dead letter."""
  position: int
  payload: str | None  # the record as text for a dead letter; None: JSON of `fields`
  fields: dict | None = None  # None when the record could not be parsed
  reason: str = ""
  detail: dict = {}


@contextlib.contextmanager
def _open_bytes(path: str):
  # Python's gzip, not FileSystems' GZIP decompression: that one ends a truncated file silently.
  with FileSystems.open(
      path, mime_type="application/octet-stream",
      compression_type=CompressionTypes.UNCOMPRESSED) as raw:
    if path.lower().endswith(".gz"):
      with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
        yield unzipped
    else:
      yield raw


def _jsonl_records(handle, field_names):
  del field_names  # JSON objects carry their own field names
  for position, line in enumerate(iter(handle.readline, b"")):
    line = line.rstrip(b"\r\n")
    if position == 0 and line.startswith(codecs.BOM_UTF8):
      line = line[len(codecs.BOM_UTF8):]
    if not line.strip():
      count(STAGE_READ, "blank_lines")
      continue
    try:
      text = line.decode("utf-8")
    except UnicodeDecodeError as error:
      yield _RawRecord(
          position, line.decode("utf-8", errors="replace"), reason="invalid_utf8",
          detail={"error": str(error)})
      continue
    try:
      fields = json.loads(text)
    except (ValueError, RecursionError) as error:
      yield _RawRecord(position, text, reason="invalid_json", detail={"error": str(error)})
      continue
    if not isinstance(fields, dict):
      yield _RawRecord(
          position, text, reason="not_an_object", detail={"type": type(fields).__name__})
      continue
    yield _RawRecord(position, text, fields)


def _parquet_records(handle, field_names):
  del field_names  # columns carry their own names
  # Imported here: it is heavy, and only this reader needs it.
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  position = 0
  for batch in pq.ParquetFile(handle).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
    for row in batch.to_pylist():
      yield _RawRecord(position, None, row)
      position += 1


def _wet_records(handle, field_names):
  """WARC `conversion` records; other record types (warcinfo) are counted and skipped."""
  text_field, id_field, url_field = field_names
  position = 0
  while True:
    line = handle.readline()
    if not line:
      return
    if not line.strip():
      continue
    if not line.startswith(b"WARC/"):
      raise ValueError(f"expected a WARC version line, found {line[:40]!r}")
    headers = {}
    while True:
      line = handle.readline()
      if not line:
        raise EOFError("WARC headers end without a blank line")
      if not line.strip():
        break
      name, colon, value = line.decode("utf-8", errors="replace").partition(":")
      if not colon:
        raise ValueError(f"bad WARC header line {line[:40]!r}")
      headers[name.strip()] = value.strip()
    by_name = {name.lower(): value for name, value in headers.items()}
    length = int(by_name["content-length"])
    block = handle.read(length)
    if len(block) < length:
      raise EOFError(f"WARC record ends after {len(block)} of {length} bytes")
    if by_name.get("warc-type") != "conversion":
      count(STAGE_READ, "skipped_warc_records")
    else:
      try:
        text = block.decode("utf-8")
      except UnicodeDecodeError as error:
        yield _RawRecord(
            position, block.decode("utf-8", errors="replace"), reason="invalid_utf8",
            detail={"error": str(error), "warc_record_id": by_name.get("warc-record-id", "")})
      else:
        fields = {
            name: value for name, value in headers.items()
            if name.lower() not in ("warc-record-id", "warc-target-uri", "content-length")}
        fields[text_field] = text
        fields[id_field] = by_name.get("warc-record-id")
        fields[url_field] = by_name.get("warc-target-uri", "")
        yield _RawRecord(position, None, fields)
    position += 1


_RECORD_READERS = {
    FORMAT_JSONL: _jsonl_records,
    FORMAT_PARQUET: _parquet_records,
    FORMAT_WET: _wet_records,
}


def _to_json(value) -> str:
  return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _dead_letter(stage, reason, record_id, source, payload, detail):
  count(stage, f"dead_letter.{reason}")
  return beam.pvalue.TaggedOutput(
      DEAD_LETTER,
      DeadLetter(
          stage=stage, reason=reason, id=record_id, source=source, payload=payload,
          detail=json.dumps(detail, sort_keys=True, default=str)))


class _ReadFileFn(beam.DoFn):
  """Reads one file into Documents; what cannot be read or validated goes to dead letter."""

  def __init__(self, text_field, id_field, url_field, source_field, max_chars):
    super().__init__()
    self._text_field = text_field
    self._id_field = id_field
    self._url_field = url_field
    self._source_field = source_field
    self._max_chars = max_chars

  def process(self, readable_file):
    path = readable_file.metadata.path
    basename = FileSystems.split(path)[1]
    name_format = file_format(basename)
    if name_format is None:
      yield _dead_letter(STAGE_READ, "unknown_format", basename, basename, "", {"path": path})
      return
    count(STAGE_READ, f"files.{name_format}")
    records = self._records(path, name_format)
    next_position = 0
    while True:
      try:
        record = next(records)
      except StopIteration:
        break
      except Exception as error:  # pylint: disable=broad-except  (any failure of the file itself)
        yield _dead_letter(
            STAGE_READ, "unreadable_file", f"{basename}:{next_position}", basename, "",
            {"error": f"{type(error).__name__}: {error}", "path": path})
        break
      next_position = record.position + 1
      count(STAGE_READ, f"records.{name_format}")
      yield self._output(record, basename, name_format)

  def _records(self, path, name_format):
    with _open_bytes(path) as handle:
      yield from _RECORD_READERS[name_format](
          handle, (self._text_field, self._id_field, self._url_field))

  def _output(self, record: _RawRecord, basename: str, name_format: str):
    position_id = f"{basename}:{record.position}"
    if record.fields is None:
      return _dead_letter(
          STAGE_READ, record.reason, position_id, basename, record.payload, record.detail)
    fields = dict(record.fields)
    text = fields.pop(self._text_field, None)
    record_id = fields.pop(self._id_field, None)
    url = fields.pop(self._url_field, None)
    source = fields.get(self._source_field)
    if isinstance(source, str):
      del fields[self._source_field]
    else:
      source = basename
    record_id = position_id if record_id is None or record_id == "" else str(record_id)
    try:
      check_text(text, self._max_chars)
    except Reject as rejection:
      payload = record.payload if record.payload is not None else _to_json(record.fields)
      return _dead_letter(
          STAGE_VALIDATE, rejection.reason, record_id, source, payload, rejection.detail)
    count(STAGE_READ, f"documents.{name_format}")
    return Document(
        id=record_id, text=text, url="" if url is None else str(url), source=source,
        metadata=_to_json(fields))


class ReadDocuments(beam.PTransform):
  """Reads JSONL (.jsonl/.json, optionally .gz), Parquet and Common Crawl WET files into
  validated Documents; applied to a pipeline.

  `input_pattern` is a glob for any filesystem Beam knows (local, gs://). The format comes from
  the file name. Records map to Documents through the given field names; other fields become
  `metadata`. A record without an id gets `<file base name>:<position>`, its 0-based line, row
  or WARC record position. In JSONL, empty and whitespace-only lines hold no record: they are
  skipped (counted as `read.blank_lines`) but keep their line position. Returns
  {DOCUMENTS: valid Documents, DEAD_LETTER: every record that could not be read (stage `read`)
  or failed `ValidateDocuments`' checks (stage `validate`)}.
  """

  def __init__(
      self, input_pattern: str, text_field: str = "text", id_field: str = "id",
      url_field: str = "url", source_field: str = "source", max_chars: int = 1_000_000):
    super().__init__()
    self._input_pattern = input_pattern
    self._read_file = _ReadFileFn(text_field, id_field, url_field, source_field, max_chars)

  def expand(self, pbegin):
    files = (
        pbegin
        | "MatchFiles" >> fileio.MatchFiles(self._input_pattern)
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadMatches" >> fileio.ReadMatches())
    outputs = apply_step(files, "ReadFiles", self._read_file)
    documents = outputs[DOCUMENTS] | "SpreadDocuments" >> beam.Reshuffle()
    return {DOCUMENTS: documents, DEAD_LETTER: outputs[DEAD_LETTER]}
