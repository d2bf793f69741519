"""The record types that flow through the pipeline, and the readers that make them.

`Document` is the one record type for web documents, from the reader to the TFRecord writer;
each step fills in its own fields and leaves the rest as they were. `DeadLetter` is what every
step emits for a record it cannot use, with the stage and a reason.
"""

import json
import typing

import apache_beam as beam

# Stages, used in dead letters, counters and the `stage` feature.
STAGE_READ = "read"
STAGE_VALIDATE = "validate"
STAGE_DEDUPLICATE = "deduplicate"
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
  chunk_scores (one 0-5 score per window), deciding_span (the [start, end) character offsets in
  `text` of the window that decided the score, so generation can quote that part of a long
  document; empty when the scored text was not `text` itself, e.g. RefuseWeb's gate, which
  scores the assistant's turns; for tagged documents the offsets are those of the text without
  its tags). Filled by generation: stage, style, parent_id. Filled by tagging: tag_count.
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
  deciding_span: typing.List[int] = []


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
import hashlib  # noqa: E402
import re  # noqa: E402

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


# C0 control characters other than whitespace (tab, newline, vertical tab, form feed, carriage
# return), the separators 0x1c-0x1f, and DEL: never part of a web page's text.
_CONTROL_CHARACTER = re.compile("[\x01-\x08\x0e-\x1f\x7f]")
# A lone UTF-16 surrogate: valid JSON (`"\\ud800"`), but no UTF-8 encoding exists for it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# How a file starts when it is not the text format its name says (JSONL names only).
_BINARY_SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"BZh", "bzip2-compressed data"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"%PDF-", "a PDF document"),
)
UNREADABLE_FAIL = "fail"
UNREADABLE_DEAD_LETTER = "dead_letter"


class UnreadableFileError(IOError):
  """An input file of which not one record could be read; the message names the file."""


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
  surrogate = _LONE_SURROGATE.search(text)
  if surrogate:
    raise Reject("lone_surrogate", field="text", position=surrogate.start())


def check_fields(document: "Document") -> None:
  """Raises `Reject` when a field other than the text has no UTF-8 form (a lone surrogate)."""
  for field in ("id", "url", "source", "metadata"):
    value = getattr(document, field)
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate:
      raise Reject("lone_surrogate", field=field, position=surrogate.start())


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


def _check_not_binary(start: bytes) -> None:
  """Raises ValueError when a file named as text starts like a binary format."""
  for signature, kind in _BINARY_SIGNATURES:
    if start.startswith(signature):
      raise ValueError(f"the content is {kind}, not JSON lines")


def _jsonl_records(handle, field_names):
  del field_names  # JSON objects carry their own field names
  for position, line in enumerate(iter(handle.readline, b"")):
    if position == 0:
      _check_not_binary(line)
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
  """Reads one file into Documents; what cannot be read or validated goes to dead letter.

  A file of which no record can be read (its format unknown, or its content not what its name
  says) raises `UnreadableFileError` naming it, or with `unreadable_files="dead_letter"` becomes
  one dead letter for the whole file. A file that fails after some records keeps those records;
  its unread rest becomes one dead letter (reason unreadable_file) at the position it stopped.
  """

  def __init__(self, text_field, id_field, url_field, source_field, max_chars,
               unreadable_files=UNREADABLE_FAIL):
    super().__init__()
    if unreadable_files not in (UNREADABLE_FAIL, UNREADABLE_DEAD_LETTER):
      raise ValueError(f"unreadable_files must be fail or dead_letter, got {unreadable_files!r}")
    self._text_field = text_field
    self._id_field = id_field
    self._url_field = url_field
    self._source_field = source_field
    self._max_chars = max_chars
    self._unreadable_files = unreadable_files

  def process(self, readable_file):
    path = readable_file.metadata.path
    basename = FileSystems.split(path)[1]
    name_format = file_format(basename)
    if name_format is None:
      yield self._unreadable(
          "unknown_format", path, "the name ends in no known suffix (.jsonl, .json, .jsonl.gz, "
          ".json.gz, .parquet, .wet, .wet.gz)")
      return
    count(STAGE_READ, f"files.{name_format}")
    records = self._records(path, name_format)
    records_read = 0
    next_position = 0
    while True:
      try:
        record = next(records)
      except StopIteration:
        break
      except Exception as error:  # pylint: disable=broad-except  (any failure of the file itself)
        message = f"{type(error).__name__}: {error}"
        if records_read == 0:
          yield self._unreadable("unreadable_file", path, message)
        else:
          yield _dead_letter(
              STAGE_READ, "unreadable_file", f"{basename}:{next_position}", basename, "",
              {"error": message, "path": path, "records_read": records_read})
        break
      records_read += 1
      next_position = record.position + 1
      count(STAGE_READ, f"records.{name_format}")
      yield self._output(record, basename, name_format)

  def _unreadable(self, reason: str, path: str, message: str):
    """A whole file that cannot be read: the run's error, or its one dead letter."""
    basename = FileSystems.split(path)[1]
    if self._unreadable_files == UNREADABLE_FAIL:
      raise UnreadableFileError(
          f"cannot read input file {path}: {message} (pass --unreadable_files=dead_letter to "
          f"send such files to dead letter instead)")
    return _dead_letter(
        STAGE_READ, reason, basename, basename, "",
        {"error": message, "path": path, "records_read": 0})

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
    payload = record.payload if record.payload is not None else _to_json(record.fields)
    try:
      record_id = _field_value(self._id_field, record_id, (str, int), position_id)
      url = _field_value(self._url_field, url, (str,), "")
      if text is None:
        raise Reject("missing_text", fields=sorted(str(name) for name in record.fields))
      check_text(text, self._max_chars)
      document = Document(
          id=record_id, text=text, url=url, source=source, metadata=_to_json(fields))
      check_fields(document)
    except Reject as rejection:
      rejected_id = record_id if isinstance(record_id, str) and record_id else position_id
      if _LONE_SURROGATE.search(rejected_id):
        rejected_id = position_id
      return _dead_letter(
          STAGE_VALIDATE, rejection.reason, rejected_id, source, payload, rejection.detail)
    count(STAGE_READ, f"documents.{name_format}")
    return document


def _field_value(name: str, value, types: tuple, default: str) -> str:
  """A field as text: `default` when absent or empty; Reject when of another type."""
  if value is None or value == "":
    return default
  if isinstance(value, bool) or not isinstance(value, types):
    raise Reject("wrong_field_type", field=name, type=type(value).__name__)
  return str(value)


def _document_order(document: Document) -> tuple:
  """The order of documents that share an id: the first one is kept (the same on any runner)."""
  return (document.source, document.url, document.text, document.metadata)


class _DeduplicateFn(beam.DoFn):
  """(id, documents with that id) -> the first by `_document_order`; the rest to dead letter."""

  def process(self, id_and_documents):
    _, documents = id_and_documents
    documents = sorted(documents, key=_document_order)
    kept = documents[0]
    yield kept
    for duplicate in documents[1:]:
      yield _dead_letter(
          STAGE_DEDUPLICATE, "duplicate_id", duplicate.id, duplicate.source, duplicate.text,
          {"copies": len(documents), "kept_source": kept.source,
           "same_text": duplicate.text == kept.text,
           "kept_text_sha256": hashlib.sha256(kept.text.encode("utf-8")).hexdigest()})


class ReadDocuments(beam.PTransform):
  """Reads JSONL (.jsonl/.json, optionally .gz), Parquet and Common Crawl WET files into
  validated Documents with distinct ids; applied to a pipeline.

  `input_pattern` is a glob for any filesystem Beam knows (local, gs://). The format comes from
  the file name. Records map to Documents through the given field names; other fields become
  `metadata`. A record without an id gets `<file base name>:<position>`, its 0-based line, row
  or WARC record position. In JSONL, empty and whitespace-only lines hold no record: they are
  skipped (counted as `read.blank_lines`) but keep their line position. Of documents that share
  an id one is kept (the first by source, url, text); the others go to dead letter (stage
  `deduplicate`, reason duplicate_id). A file of which no record can be read fails the run with
  `UnreadableFileError` naming it, or with `unreadable_files="dead_letter"` becomes one dead
  letter. Returns {DOCUMENTS: valid Documents, DEAD_LETTER: every record that could not be read
  (stage `read`), failed `ValidateDocuments`' checks or had a wrong field type (stage
  `validate`), or repeated an id (stage `deduplicate`)}.
  """

  def __init__(
      self, input_pattern: str, text_field: str = "text", id_field: str = "id",
      url_field: str = "url", source_field: str = "source", max_chars: int = 1_000_000,
      unreadable_files: str = UNREADABLE_FAIL):
    super().__init__()
    self._input_pattern = input_pattern
    self._read_file = _ReadFileFn(
        text_field, id_field, url_field, source_field, max_chars, unreadable_files)

  def expand(self, pbegin):
    files = (
        pbegin
        | "MatchFiles" >> fileio.MatchFiles(self._input_pattern)
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadMatches" >> fileio.ReadMatches())
    outputs = apply_step(files, "ReadFiles", self._read_file)
    # Grouping by id also spreads the documents over workers, as a Reshuffle would.
    grouped = (
        outputs[DOCUMENTS]
        | "KeyById" >> beam.Map(lambda document: (document.id, document)).with_output_types(
            typing.Tuple[str, Document])
        | "GroupById" >> beam.GroupByKey())
    unique = apply_step(grouped, "DropDuplicateIds", _DeduplicateFn())
    dead_letters = (
        (outputs[DEAD_LETTER], unique[DEAD_LETTER])
        | "ReadDeadLetters" >> beam.Flatten().with_output_types(DeadLetter))
    return {DOCUMENTS: unique[DOCUMENTS], DEAD_LETTER: dead_letters}
