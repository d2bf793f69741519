"""ReadDocuments: input files -> validated Documents with distinct ids, and dead letters.

The formats are `transforms.formats`', the checks `transforms.validation`'s, deduplication
`transforms.deduplicate`'s; this module reads each file with its format's reader and turns each
record into a Document or, through `transforms.deadletter.rejected`, a dead letter.
"""

from __future__ import annotations

import json
import typing

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from corpus.records import DEAD_LETTER, DOCUMENTS, STAGE_READ, STAGE_VALIDATE, DeadLetter, Document
from transforms.deadletter import Reject, Unparsed, apply_step, count, rejected
from transforms.deduplicate import drop_duplicate_ids
from transforms.formats import KNOWN_SUFFIXES, RECORD_READERS, RawRecord, file_format, open_bytes
from transforms.validation import (DEFAULT_MAX_CHARS, LONE_SURROGATE, check_fields, check_text,
                                   field_value)

UNREADABLE_FAIL = "fail"
UNREADABLE_DEAD_LETTER = "dead_letter"
# ReadDocuments' output of the paths its pattern matched: an input that matched no file, or
# files that hold no record, is the report's `empty_input` check to judge, not an error here.
MATCHED_FILES = "matched_files"


class UnreadableFileError(IOError):
  """An input file of which not one record could be read; the message names the file."""


class FieldNames(typing.NamedTuple):
  """The input fields that hold a Document's text, id, url and source (the `--*_field` flags)."""
  text: str = "text"
  id: str = "id"
  url: str = "url"
  source: str = "source"


def _to_json(value) -> str:
  return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


class _ReadFileFn(beam.DoFn):
  """Reads one file into Documents; what cannot be read or validated goes to dead letter.

  A file of which no record can be read (its format unknown, or its content not what its name
  says) raises `UnreadableFileError` naming it, or with `unreadable_files="dead_letter"` becomes
  one dead letter for the whole file. A file that fails after some records keeps those records;
  its unread rest becomes one dead letter (reason unreadable_file) at the position it stopped.
  """

  def __init__(self, fields: FieldNames, max_chars: int, unreadable_files=UNREADABLE_FAIL):
    super().__init__()
    if unreadable_files not in (UNREADABLE_FAIL, UNREADABLE_DEAD_LETTER):
      raise ValueError(f"unreadable_files must be fail or dead_letter, got {unreadable_files!r}")
    self._fields, self._max_chars, self._unreadable_files = fields, max_chars, unreadable_files

  def process(self, readable_file):
    path = readable_file.metadata.path
    basename = FileSystems.split(path)[1]
    name_format = file_format(basename)
    if name_format is None:
      yield self._unreadable(
          "unknown_format", path, f"the name ends in no known suffix ({KNOWN_SUFFIXES})")
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
          yield rejected(
              STAGE_READ, Unparsed(f"{basename}:{next_position}", basename), "unreadable_file",
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
    return rejected(STAGE_READ, Unparsed(basename, basename), reason,
                    {"error": message, "path": path, "records_read": 0})

  def _records(self, path, name_format):
    with open_bytes(path) as handle:
      yield from RECORD_READERS[name_format](
          handle, (self._fields.text, self._fields.id, self._fields.url))

  def _output(self, record: RawRecord, basename: str, name_format: str):
    position_id = f"{basename}:{record.position}"
    if record.fields is None:
      return rejected(
          STAGE_READ, Unparsed(position_id, basename, record.payload), record.reason,
          record.detail)
    fields = dict(record.fields)
    names = self._fields
    text = fields.pop(names.text, None)
    record_id = fields.pop(names.id, None)
    url = fields.pop(names.url, None)
    source = fields.get(names.source)
    if isinstance(source, str):
      del fields[names.source]
    else:
      source = basename
    payload = record.payload if record.payload is not None else _to_json(record.fields)
    try:
      record_id = field_value(names.id, record_id, (str, int), position_id)
      url = field_value(names.url, url, (str,), "")
      if text is None:
        raise Reject("missing_text", fields=sorted(str(name) for name in record.fields))
      check_text(text, self._max_chars)
      document = Document(
          id=record_id, text=text, url=url, source=source, metadata=_to_json(fields))
      check_fields(document)
    except Reject as rejection:
      rejected_id = record_id if isinstance(record_id, str) and record_id else position_id
      if LONE_SURROGATE.search(rejected_id):
        rejected_id = position_id
      return rejected(STAGE_VALIDATE, Unparsed(rejected_id, source, payload), rejection.reason,
                      rejection.detail)
    count(STAGE_READ, f"documents.{name_format}")
    return document


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
  `validate`), or repeated an id (stage `deduplicate`), MATCHED_FILES: the path of every file
  the pattern matched}. A pattern that matches nothing gives empty outputs, wildcard or not.
  """

  def __init__(
      self, input_pattern: str, text_field: str = "text", id_field: str = "id",
      url_field: str = "url", source_field: str = "source", max_chars: int = DEFAULT_MAX_CHARS,
      unreadable_files: str = UNREADABLE_FAIL):
    super().__init__()
    self._input_pattern = input_pattern
    self._read_file = _ReadFileFn(
        FieldNames(text_field, id_field, url_field, source_field), max_chars, unreadable_files)

  def expand(self, pbegin):
    matched = pbegin | "MatchFiles" >> fileio.MatchFiles(
        self._input_pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
    files = (
        matched
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadMatches" >> fileio.ReadMatches())
    outputs = apply_step(files, "ReadFiles", self._read_file)
    unique = drop_duplicate_ids(outputs[DOCUMENTS])
    dead_letters = (
        (outputs[DEAD_LETTER], unique[DEAD_LETTER])
        | "ReadDeadLetters" >> beam.Flatten().with_output_types(DeadLetter))
    paths = matched | "MatchedPaths" >> beam.Map(
        lambda metadata: metadata.path).with_output_types(str)
    return {DOCUMENTS: unique[DOCUMENTS], DEAD_LETTER: dead_letters, MATCHED_FILES: paths}
