"""The input formats: a file's format from its name, and one record reader per format.

A reader takes an open binary file and yields `RawRecord`s: the record's fields as a dict, or,
for a record that cannot be parsed, the reason and what could be recovered of it. Turning
records into Documents, and failures into dead letters, is `transforms.reading`'s job.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import typing

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from corpus.records import STAGE_READ
from transforms.deadletter import count

FORMAT_JSONL = "jsonl"
FORMAT_PARQUET = "parquet"
FORMAT_WET = "wet"

_FORMAT_SUFFIXES = (
    (FORMAT_WET, (".wet", ".wet.gz")),  # covers .warc.wet.gz
    (FORMAT_JSONL, (".jsonl", ".json", ".jsonl.gz", ".json.gz")),
    (FORMAT_PARQUET, (".parquet",)),
)
KNOWN_SUFFIXES = ".jsonl, .json, .jsonl.gz, .json.gz, .parquet, .wet, .wet.gz"
_PARQUET_BATCH_ROWS = 1024

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


def file_format(file_name: str) -> str | None:
  """The reader format for a file name (FORMAT_JSONL, FORMAT_PARQUET, FORMAT_WET), or None."""
  name = file_name.lower()
  for name_format, suffixes in _FORMAT_SUFFIXES:
    if name.endswith(suffixes):
      return name_format
  return None


class RawRecord(typing.NamedTuple):
  """One record as a reader found it, before it becomes a Document or a dead letter."""
  position: int
  payload: str | None  # the record as text for a dead letter; None: JSON of `fields`
  fields: dict | None = None  # None when the record could not be parsed
  reason: str = ""
  detail: dict = {}


@contextlib.contextmanager
def open_bytes(path: str):
  """The file at `path` as a binary stream, gunzipped when its name ends in .gz."""
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
      yield RawRecord(
          position, line.decode("utf-8", errors="replace"), reason="invalid_utf8",
          detail={"error": str(error)})
      continue
    try:
      fields = json.loads(text)
    except (ValueError, RecursionError) as error:
      yield RawRecord(position, text, reason="invalid_json", detail={"error": str(error)})
      continue
    if not isinstance(fields, dict):
      yield RawRecord(
          position, text, reason="not_an_object", detail={"type": type(fields).__name__})
      continue
    yield RawRecord(position, text, fields)


def _parquet_records(handle, field_names):
  del field_names  # columns carry their own names
  # Imported here: it is heavy, and only this reader needs it.
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  position = 0
  for batch in pq.ParquetFile(handle).iter_batches(batch_size=_PARQUET_BATCH_ROWS):
    for row in batch.to_pylist():
      yield RawRecord(position, None, row)
      position += 1


def _wet_headers(handle) -> dict | None:
  """The headers of the next WARC record (None at the end of the file)."""
  while True:
    line = handle.readline()
    if not line:
      return None
    if line.strip():
      break
  if not line.startswith(b"WARC/"):
    raise ValueError(f"expected a WARC version line, found {line[:40]!r}")
  headers = {}
  while True:
    line = handle.readline()
    if not line:
      raise EOFError("WARC headers end without a blank line")
    if not line.strip():
      return headers
    name, colon, value = line.decode("utf-8", errors="replace").partition(":")
    if not colon:
      raise ValueError(f"bad WARC header line {line[:40]!r}")
    headers[name.strip()] = value.strip()


def _wet_records(handle, field_names):
  """WARC `conversion` records; other record types (warcinfo) are counted and skipped."""
  text_field, id_field, url_field = field_names
  position = 0
  while True:
    headers = _wet_headers(handle)
    if headers is None:
      return
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
        yield RawRecord(
            position, block.decode("utf-8", errors="replace"), reason="invalid_utf8",
            detail={"error": str(error), "warc_record_id": by_name.get("warc-record-id", "")})
      else:
        fields = {
            name: value for name, value in headers.items()
            if name.lower() not in ("warc-record-id", "warc-target-uri", "content-length")}
        fields[text_field] = text
        fields[id_field] = by_name.get("warc-record-id")
        fields[url_field] = by_name.get("warc-target-uri", "")
        yield RawRecord(position, None, fields)
    position += 1


# format -> reader(binary handle, (text field, id field, url field)) -> RawRecords
RECORD_READERS = {
    FORMAT_JSONL: _jsonl_records,
    FORMAT_PARQUET: _parquet_records,
    FORMAT_WET: _wet_records,
}
