"""The bad-input corpus: every way input can be broken, one kind per file, with what must happen.

`write_corpus(folder)` writes the files and returns the kinds. Each kind names its files (so a
record's `source`, its file name, tells its kind in the output), how many records went in, how
many must come out, and the dead letters (by reason) it must produce. Most of the corpus is made
here rather than committed: it holds a 20 MB document and binary files.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import random
import typing
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

BIG_DOCUMENT_CHARS = 20 * 1024 * 1024
MARKUP_TEXT = 'Bold <b>claims</b> & a <script>alert("report card")</script> in a page about baking.'


def _id_with_small_hash(prefix: str) -> str:
  """An id whose SHA-256 starts with 000, so it is among its branch's samples in the report."""
  i = 0
  while not hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest().startswith("000"):
    i += 1
  return f"{prefix}-{i}"


MARKUP_ID = _id_with_small_hash("good-markup")
_WORDS = ("bread flour water salt yeast oven loaf crust dough knead rise bake proof crumb starter "
          "honey butter sugar milk egg garden river mountain library music lesson").split()


class Kind(typing.NamedTuple):
  """One kind of bad input and what the pipeline must make of it."""
  name: str
  files: typing.Tuple[str, ...]
  records_in: int
  out: int
  dead: typing.Dict[str, int]  # reason -> dead letters
  note: str = ""


def _line(record) -> bytes:
  return json.dumps(record, ensure_ascii=False).encode("utf-8")


def _text(rng: random.Random, words: int) -> str:
  return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _complete_lines(truncated_gzip: bytes) -> int:
  """How many whole lines a reader can recover from a gzip stream cut short."""
  data = zlib.decompressobj(wbits=31).decompress(truncated_gzip)
  return data.count(b"\n")


def write_corpus(folder) -> typing.List[Kind]:
  """Writes the corpus into `folder` (a pathlib.Path); returns its kinds."""
  rng = random.Random(6)
  kinds = []

  def write(name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)

  # Well-formed documents, one with markup the report card must show as text.
  good = [{"id": f"good-{i}", "text": _text(rng, 30), "url": f"https://example.org/{i}"}
          for i in range(4)]
  good.append({"id": MARKUP_ID, "text": MARKUP_TEXT})
  write("good.jsonl", b"\n".join(_line(r) for r in good) + b"\n")
  kinds.append(Kind("valid documents (control)", ("good.jsonl",), 5, 5, {}))

  # A gzip file cut in the middle: the lines before the cut are read, the rest is one dead letter.
  whole = gzip.compress(b"".join(
      _line({"id": f"cut-{i}", "text": _text(rng, 12)}) + b"\n" for i in range(300)), mtime=0)
  cut = whole[:len(whole) // 2]
  write("cut.jsonl.gz", cut)
  recoverable = _complete_lines(cut)
  kinds.append(Kind("truncated gzip", ("cut.jsonl.gz",), 300, recoverable,
                    {"unreadable_file": 1},
                    f"{300 - recoverable} records after the cut: one dead letter"))

  # Lines that are not JSON objects.
  lines = [
      b'{"id": "json-ok", "text": "A line that is fine."}',
      b'{"id": "json-cut", "text": "cut off in the mid',
      b'{"id": "json-comma", "text": "trailing comma",}',
      b"{'id': 'json-quotes', 'text': 'single quotes'}",
      b"just some words",
      b"[" * 100_000,  # nesting deeper than any parser's stack
      b'["an", "array"]',
      b"42",
  ]
  write("invalid_json.jsonl", b"\n".join(lines) + b"\n")
  kinds.append(Kind("invalid JSON lines", ("invalid_json.jsonl",), 8, 1,
                    {"invalid_json": 5, "not_an_object": 2}))

  # Bytes that are not UTF-8, and a JSON escape with no UTF-8 form.
  lines = [
      b"\xef\xbb\xbf" + _line({"id": "utf8-bom", "text": "A byte order mark opens the file."}),
      b'{"id": "utf8-latin1", "text": "caf\xe9 cr\xe8me"}',
      b'{"id": "utf8-cut", "text": "cut in a character \xe6\x9d"}',
      b'{"id": "utf8-overlong", "text": "an overlong slash \xc0\xaf"}',
      b'{"id": "utf8-surrogate", "text": "an encoded surrogate \xed\xa0\x80"}',
      b'{"id": "utf8-escape", "text": "half a pair \\ud83d alone"}',
      _line({"id": "utf8-ok", "text": "Z\u00fcrich, \u6771\u4eac, \U0001f642 are fine."}),
  ]
  write("invalid_utf8.jsonl", b"\n".join(lines) + b"\n")
  kinds.append(Kind("invalid UTF-8", ("invalid_utf8.jsonl",), 7, 2,
                    {"invalid_utf8": 4, "lone_surrogate": 1}))

  # NUL and other control characters (tab, form feed and friends are whitespace, and fine).
  lines = [
      _line({"id": "ctl-nul", "text": "a NUL \u0000 inside"}),
      b'{"id": "ctl-raw-nul", "text": "a raw NUL \x00 byte"}',
      _line({"id": "ctl-bell", "text": "a bell \u0007 rings"}),
      _line({"id": "ctl-ansi", "text": "\u001b[31mred terminal text\u001b[0m"}),
      _line({"id": "ctl-del", "text": "a DEL \u007f here"}),
      _line({"id": "ctl-ok", "text": "Tab\tand form\u000cfeed\r\nare whitespace."}),
  ]
  write("control.jsonl", b"\n".join(lines) + b"\n")
  kinds.append(Kind("NUL and control characters", ("control.jsonl",), 6, 1,
                    {"nul_character": 1, "invalid_json": 1, "control_character": 3}))

  # A 20 MB document, beside a normal one.
  phrase = "All work and no play makes a very long document. "
  big = phrase * (BIG_DOCUMENT_CHARS // len(phrase) + 1)
  lines = [_line({"id": "big-20mb", "text": big[:BIG_DOCUMENT_CHARS]}),
           _line({"id": "big-small", "text": "A small document next to a big one."})]
  write("big.jsonl", b"\n".join(lines) + b"\n")
  kinds.append(Kind("20 MB document", ("big.jsonl",), 2, 1, {"text_too_long": 1},
                    "over --max_chars (1,000,000): dead letter with its whole text"))

  # Empty and whitespace-only text; blank lines hold no record.
  lines = [_line({"id": "empty", "text": ""}), b"", b"   ",
           _line({"id": "spaces", "text": "   "}),
           _line({"id": "newlines", "text": "\n\t\r\n"}),
           _line({"id": "unicode-spaces", "text": "\u3000\u00a0\u2003"})]
  write("empty.jsonl", b"\n".join(lines) + b"\n")
  kinds.append(Kind("empty and whitespace-only text", ("empty.jsonl",), 4, 0,
                    {"empty_text": 4}, "blank lines hold no record"))

  # Fields of the wrong type.
  records = [
      {"id": "type-int", "text": 12345},
      {"id": "type-list", "text": ["a", "list"]},
      {"id": "type-dict", "text": {"body": "nested"}},
      {"id": "type-bool", "text": True},
      {"id": "type-null", "text": None},
      {"id": ["a", "list"], "text": "an id that is a list"},
      {"id": 1.5, "text": "an id that is a float"},
      {"id": "type-url", "text": "a url that is a number", "url": 7},
      {"id": 9001, "text": "An integer id is fine."},
  ]
  write("types.jsonl", b"\n".join(_line(r) for r in records) + b"\n")
  kinds.append(Kind("wrong field types", ("types.jsonl",), 9, 1,
                    {"text_not_string": 4, "missing_text": 1, "wrong_field_type": 3}))

  # Duplicate ids: one document per id is kept.
  records = [
      {"id": "dup-a", "text": "The same text twice."},
      {"id": "dup-a", "text": "The same text twice."},
      {"id": "dup-b", "text": "First text of b."},
      {"id": "dup-b", "text": "Second text of b."},
      {"id": "dup-b", "text": "Third text of b."},
      {"id": "dup-c", "text": "Only one c."},
  ]
  write("duplicates.jsonl", b"\n".join(_line(r) for r in records) + b"\n")
  kinds.append(Kind("duplicate ids", ("duplicates.jsonl",), 6, 3, {"duplicate_id": 3}))

  # A Parquet file without its text column.
  pq.write_table(pa.Table.from_pylist(
      [{"id": f"pq-{i}", "body": _text(rng, 10), "lang": "en"} for i in range(4)]),
      folder / "no_text.parquet")
  kinds.append(Kind("Parquet missing its text column", ("no_text.parquet",), 4, 0,
                    {"missing_text": 4}, "each row's dead letter lists the columns it has"))

  # Files that are not what their names say: nothing can be read from them.
  json_lines = b'{"id": "x1", "text": "one"}\n{"id": "x2", "text": "two"}\n'
  write("fake.parquet", json_lines)
  write("plain.jsonl.gz", json_lines)
  write("zipped.jsonl", gzip.compress(json_lines, mtime=0))
  write("fake.wet", json_lines)
  kinds.append(Kind("not what its extension says",
                    ("fake.parquet", "plain.jsonl.gz", "zipped.jsonl", "fake.wet"), 8, 0,
                    {"unreadable_file": 4}, "one dead letter per file (--unreadable_files)"))

  write("notes.txt", b"Not a format the pipeline reads.\n")
  kinds.append(Kind("unknown file type", ("notes.txt",), 1, 0, {"unknown_format": 1},
                    "one dead letter for the file (--unreadable_files)"))
  return kinds


def tally(kind: Kind, documents, dead_letters) -> typing.Tuple[int, typing.Dict[str, int]]:
  """(documents out, {reason: dead letters}) of one kind, found by source file name."""
  out = sum(1 for document in documents if document.source in kind.files)
  dead = collections.Counter(d["reason"] for d in dead_letters if d["source"] in kind.files)
  return out, dict(dead)
