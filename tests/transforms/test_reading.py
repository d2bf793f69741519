"""The readers (JSONL, gzip, Parquet, WET), field mapping, stable ids, validation, dead letters."""

from __future__ import annotations

import gzip
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from corpus.records import (
    DEAD_LETTER, DOCUMENTS, METRICS_NAMESPACE, STAGE_DEDUPLICATE, STAGE_READ, STAGE_VALIDATE,
    DeadLetter, Document)
from transforms.formats import FORMAT_JSONL, FORMAT_PARQUET, FORMAT_WET, file_format
from transforms.reading import ReadDocuments
from transforms.validation import ValidateDocuments

RECORDS = [
    {"id": "a", "text": "First document.", "url": "https://example.com/a", "lang": "en"},
    {"id": "b", "text": "Zürich, 東京 🙂", "url": "https://example.com/b", "lang": "de"},
]


def _write_jsonl(path, records, opener=open):
  with opener(path, "wb") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")


def _write_parquet(path, records):
  pq.write_table(pa.Table.from_pylist(records), path, row_group_size=1)


def _warc_record(warc_type, block, headers=()):
  head = [b"WARC/1.0", b"WARC-Type: " + warc_type.encode()]
  head += [f"{name}: {value}".encode() for name, value in headers]
  head.append(b"Content-Length: %d" % len(block))
  return b"\r\n".join(head) + b"\r\n\r\n" + block + b"\r\n\r\n"


def _write_wet(path, records, extra=b""):
  data = _warc_record("warcinfo", b"software: test\r\n")
  for record in records:
    data += _warc_record("conversion", record["text"].encode("utf-8"), [
        ("WARC-Target-URI", record["url"]), ("WARC-Record-ID", record["id"]),
        ("WARC-Identified-Content-Language", record["lang"])])
  data += extra
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)


def _expected(records, source, metadata_key="lang"):
  return [
      Document(
          id=r["id"], text=r["text"], url=r["url"], source=source,
          metadata=json.dumps({metadata_key: r["lang"]}, ensure_ascii=False))
      for r in records]


def _run(pattern, check_documents, check_dead_letters, **kwargs):
  with test_pipeline.TestPipeline() as p:
    outputs = p | ReadDocuments(pattern, **kwargs)
    assert_that(outputs[DOCUMENTS], check_documents, label="Documents")
    assert_that(outputs[DEAD_LETTER], check_dead_letters, label="DeadLetters")


def _reasons(expected):
  """Matches dead letters by (stage, reason, id)."""

  def check(dead_letters):
    equal_to(expected)([(d.stage, d.reason, d.id) for d in dead_letters])

  return check


def test_file_format_by_name():
  assert file_format("a.jsonl") == file_format("a.JSON.GZ") == FORMAT_JSONL
  assert file_format("part-0.parquet") == FORMAT_PARQUET
  assert file_format("CC-MAIN-1.warc.wet.gz") == file_format("x.wet") == FORMAT_WET
  assert file_format("notes.txt") is None
  assert file_format("x.parquet.gz") is None


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.json.gz", "docs.parquet", "docs.warc.wet.gz"])
def test_reads_each_format(tmp_path, name):
  path = tmp_path / name
  if name.endswith(".parquet"):
    _write_parquet(path, RECORDS)
  elif ".wet" in name:
    _write_wet(path, RECORDS)
  else:
    _write_jsonl(path, RECORDS, gzip.open if name.endswith(".gz") else open)
  metadata_key = "WARC-Identified-Content-Language" if ".wet" in name else "lang"
  expected = _expected(RECORDS, name, metadata_key)
  if ".wet" in name:  # WET metadata also holds the WARC-Type header
    expected = [
        d._replace(metadata=json.dumps(
            {metadata_key: r["lang"], "WARC-Type": "conversion"}, ensure_ascii=False,
            sort_keys=True)) for d, r in zip(expected, RECORDS)]
  _run(str(path), equal_to(expected), equal_to([]))


def test_glob_over_several_files_and_formats(tmp_path):
  _write_jsonl(tmp_path / "one.jsonl", RECORDS[:1])
  _write_jsonl(tmp_path / "two.jsonl.gz", RECORDS[1:], gzip.open)
  _write_parquet(tmp_path / "three.parquet", [dict(RECORDS[0], id="c")])
  _write_wet(tmp_path / "four.wet", [dict(RECORDS[1], id="<urn:uuid:d>")])
  (tmp_path / "ignored.jsonl.bak").write_text("not matched by the glob\n")
  _run(
      str(tmp_path / "*[a-z].*[a-z]"),
      lambda docs: equal_to(["a", "b", "c", "<urn:uuid:d>"])([d.id for d in docs]),
      _reasons([(STAGE_READ, "unknown_format", "ignored.jsonl.bak")]),
      unreadable_files="dead_letter")


def test_field_mapping_and_metadata(tmp_path):
  records = [
      {"doc_id": 7, "content": "Seven.", "link": "https://x/7", "origin": "forum",
       "score": 0.5, "tags": ["a"]},
      {"doc_id": "eight", "content": "Eight.", "origin": 3},
  ]
  _write_jsonl(tmp_path / "mapped.jsonl", records)
  expected = [
      Document(
          id="7", text="Seven.", url="https://x/7", source="forum",
          metadata='{"score": 0.5, "tags": ["a"]}'),
      Document(
          id="eight", text="Eight.", url="", source="mapped.jsonl", metadata='{"origin": 3}'),
  ]
  _run(
      str(tmp_path / "mapped.jsonl"), equal_to(expected), equal_to([]), text_field="content",
      id_field="doc_id", url_field="link", source_field="origin")


def test_stable_ids_without_id_field(tmp_path):
  # Blank and whitespace-only lines hold no record but keep their line position.
  (tmp_path / "noid.jsonl").write_text(
      '{"text": "zero"}\n\n   \n{"text": "three"}\n{"text": "four", "id": ""}\n')
  _write_parquet(tmp_path / "noid.parquet", [{"text": "row 0"}, {"text": "row 1"}])
  _run(
      str(tmp_path / "noid.*"),
      lambda docs: equal_to([
          ("noid.jsonl:0", "zero"), ("noid.jsonl:3", "three"), ("noid.jsonl:4", "four"),
          ("noid.parquet:0", "row 0"), ("noid.parquet:1", "row 1"),
      ])([(d.id, d.text) for d in docs]),
      equal_to([]))


def _write_bad_inputs(tmp_path):
  """Writes files with every dead-letter reason; returns (pattern, records in, expected)."""
  lines = [
      b'{"id": "ok", "text": "Fine."}',
      b'{"text": "caf\xe9"}',  # latin-1, not UTF-8
      b'{"text": "broken',
      b'["a list"]',
      b'{"id": "m"}',
      b'{"id": "n", "text": 5}',
      b'{"id": "e", "text": " \\n\\t "}',
      b'{"id": "l", "text": "' + b"x" * 41 + b'"}',
      b'{"id": "z", "text": "nul\\u0000here"}',
  ]
  (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  (tmp_path / "notes.txt").write_text("what format?\n")
  whole = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(3000)))
  (tmp_path / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])
  _write_wet(
      tmp_path / "bad.wet",
      [dict(RECORDS[0], id="<urn:uuid:w>")],
      extra=_warc_record("conversion", b"\xff\xfe", [("WARC-Record-ID", "<urn:uuid:u>")])
      + b"WARC/1.0\r\nWARC-Type: conversion\r\nContent-Length: 100\r\n\r\ncut short")
  expected = [
      (STAGE_READ, "invalid_utf8", "bad.jsonl:1"),
      (STAGE_READ, "invalid_json", "bad.jsonl:2"),
      (STAGE_READ, "not_an_object", "bad.jsonl:3"),
      (STAGE_VALIDATE, "missing_text", "m"),
      (STAGE_VALIDATE, "text_not_string", "n"),
      (STAGE_VALIDATE, "empty_text", "e"),
      (STAGE_VALIDATE, "text_too_long", "l"),
      (STAGE_VALIDATE, "nul_character", "z"),
      (STAGE_READ, "unknown_format", "notes.txt"),
      (STAGE_READ, "invalid_utf8", "bad.wet:2"),
      (STAGE_READ, "unreadable_file", "bad.wet:3"),
  ]
  return str(tmp_path / "*"), expected


def test_every_dead_letter_reason_and_the_record_balance(tmp_path):
  pattern, expected = _write_bad_inputs(tmp_path)
  p = test_pipeline.TestPipeline()
  outputs = p | ReadDocuments(pattern, max_chars=40, unreadable_files="dead_letter")
  documents, dead_letters = outputs[DOCUMENTS], outputs[DEAD_LETTER]

  def check_dead_letters(found):
    cut = [d for d in found if d.source == "cut.jsonl.gz"]
    assert len(cut) == 1 and cut[0].reason == "unreadable_file", cut
    assert "EOFError" in json.loads(cut[0].detail)["error"]
    by_id = {d.id: d for d in found}
    assert by_id["bad.jsonl:2"].payload == '{"text": "broken'
    assert by_id["bad.jsonl:1"].payload == '{"text": "caf\ufffd"}'
    assert by_id["m"].payload == '{"id": "m"}' and by_id["m"].source == "bad.jsonl"
    assert json.loads(by_id["l"].detail) == {"length": 41, "max_chars": 40}
    _reasons(expected)([d for d in found if d.source != "cut.jsonl.gz"])

  def check_documents(found):
    ids = {d.id for d in found}
    assert {"ok", "<urn:uuid:w>"} <= ids
    cut = sorted(int(i.split(":")[1]) for i in ids if i.startswith("cut.jsonl.gz:"))
    # Everything before the cut, in order; the cut's position is where the dead letter points.
    assert cut == list(range(len(cut))) and len(cut) > 1000
    assert len(found) == 2 + len(cut)

  assert_that(documents, check_documents, label="Documents")
  assert_that(dead_letters, check_dead_letters, label="DeadLetters")
  result = p.run()
  result.wait_until_finish()

  def counter(name):
    found = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))["counters"]
    return sum(c.committed for c in found)

  assert counter("read.dead_letter.invalid_json") == 1
  assert counter("validate.dead_letter.nul_character") == 1
  assert counter("read.documents.wet") == 1
  # Records in = documents out + dead letters. unknown_format and unreadable_file stand for a
  # whole file or its unread rest, not for a record.
  records = counter("read.records.jsonl") + counter("read.records.wet")
  documents = counter("read.documents.jsonl") + counter("read.documents.wet")
  record_dead_letters = sum(
      counter(f"{stage}.dead_letter.{reason}") for stage, reason in {
          (stage, reason) for stage, reason, _ in expected
          if reason not in ("unknown_format", "unreadable_file")})
  assert records == documents + record_dead_letters
  assert records == 9 + 2 + counter("read.documents.jsonl") - 1  # bad.jsonl, bad.wet, cut.jsonl.gz


def test_validate_documents_alone():
  documents = [
      Document(id="ok", text="Fine."),
      Document(id="empty", text=""),
      Document(id="long", text="x" * 11),
      Document(id="nul", text="a\x00b"),
  ]
  with test_pipeline.TestPipeline() as p:
    outputs = p | beam.Create(documents) | ValidateDocuments(max_chars=10)
    assert_that(outputs[DOCUMENTS], equal_to(documents[:1]), label="Documents")
    assert_that(
        outputs[DEAD_LETTER],
        _reasons([
            (STAGE_VALIDATE, "empty_text", "empty"), (STAGE_VALIDATE, "text_too_long", "long"),
            (STAGE_VALIDATE, "nul_character", "nul")]),
        label="DeadLetters")


def test_dead_letters_read_back_through_read_documents(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "bad.jsonl").write_bytes(b'{"text": "broken\n[1, 2]\n{"id": "m"}\n')
  with test_pipeline.TestPipeline() as p:
    outputs = p | ReadDocuments(str(tmp_path / "in" / "*"))
    _ = (
        outputs[DEAD_LETTER]
        | beam.Map(DeadLetter.to_json)
        | beam.io.WriteToText(
            str(tmp_path / "dead" / "part"), file_name_suffix=".jsonl", num_shards=1))

  def check(found):
    by_id = {d.id: d for d in found}
    assert sorted(by_id) == ["bad.jsonl:0", "bad.jsonl:1", "m"], by_id
    assert by_id["bad.jsonl:0"].text == '{"text": "broken'
    assert by_id["m"].text == '{"id": "m"}'
    assert {d.source for d in found} == {"bad.jsonl"}
    assert {json.loads(d.metadata)["reason"] for d in found} == {
        "invalid_json", "not_an_object", "missing_text"}

  _run(str(tmp_path / "dead" / "*.jsonl"), check, equal_to([]))


def test_new_validation_reasons_and_duplicate_ids(tmp_path):
  lines = [
      json.dumps({"id": "ctl", "text": "bell \u0007 rings"}),
      json.dumps({"id": "ff", "text": "form\x0cfeed and\ttab are whitespace"}),
      '{"id": "sur", "text": "half a pair \\ud800 here"}',
      '{"id": "surl", "text": "fine", "url": "https://x/\\udfff"}',
      json.dumps({"id": ["a", "list"], "text": "an id of the wrong type"}),
      json.dumps({"id": "u", "text": "a url of the wrong type", "url": {"href": "x"}}),
      json.dumps({"id": "dup", "text": "the copy kept", "url": "a"}),
      json.dumps({"id": "dup", "text": "the copy dropped", "url": "b"}),
      json.dumps({"id": 7, "text": "an integer id"}),
  ]
  (tmp_path / "new.jsonl").write_text("\n".join(lines) + "\n")

  def check_dead_letters(found):
    _reasons([
        (STAGE_VALIDATE, "control_character", "ctl"),
        (STAGE_VALIDATE, "lone_surrogate", "sur"),
        (STAGE_VALIDATE, "lone_surrogate", "surl"),
        (STAGE_VALIDATE, "wrong_field_type", "new.jsonl:4"),
        (STAGE_VALIDATE, "wrong_field_type", "u"),
        (STAGE_DEDUPLICATE, "duplicate_id", "dup"),
    ])(found)
    by_reason = {d.reason: d for d in found}
    assert json.loads(by_reason["control_character"].detail) == {"code": "U+0007", "position": 5}
    duplicate = by_reason["duplicate_id"]
    assert duplicate.payload == "the copy dropped"
    assert json.loads(duplicate.detail)["copies"] == 2

  _run(
      str(tmp_path / "new.jsonl"),
      lambda docs: equal_to([("ff", ""), ("dup", "a"), ("7", "")])([(d.id, d.url) for d in docs]),
      check_dead_letters)


@pytest.mark.parametrize("name, content, error", [
    ("zipped.jsonl", gzip.compress(b'{"text": "x"}\n'), "gzip-compressed data, not JSON lines"),
    ("plain.jsonl.gz", b'{"text": "not compressed"}\n', "BadGzipFile"),
    ("table.parquet", b'{"text": "not parquet"}\n', "Parquet"),
    ("page.wet", b'{"text": "not warc"}\n', "expected a WARC version line"),
    ("notes.txt", b"what format?\n", "no known suffix"),
])
def test_a_file_that_cannot_be_read_at_all(tmp_path, name, content, error):
  """By default the run fails with one error naming the file; by option, one dead letter."""
  (tmp_path / name).write_bytes(content)
  with pytest.raises(Exception) as raised:
    with test_pipeline.TestPipeline() as p:
      _ = p | ReadDocuments(str(tmp_path / name))
  assert f"cannot read input file {tmp_path / name}" in str(raised.value)
  assert error in str(raised.value)

  def check(found):
    assert len(found) == 1 and found[0].id == name and found[0].payload == "", found
    assert json.loads(found[0].detail)["records_read"] == 0
    assert error in json.loads(found[0].detail)["error"]

  _run(str(tmp_path / name), equal_to([]), check, unreadable_files="dead_letter")
