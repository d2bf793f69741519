"""A dead letter's detail is one JSON object in its line, JSON all the way down: whatever a step
puts in it (a row that crossed a portable runner's coder, a set, bytes, a NumPy number, an
exception), a reader gets objects, lists, strings and numbers, never a Python repr."""

from __future__ import annotations

import json
import typing

import apache_beam as beam
import numpy as np

from corpus.records import DeadLetter, Document
from transforms.deadletter import Unparsed, dead_letter_for


class _Review(typing.NamedTuple):
  failed: typing.List[str]
  similarity: float


def _line(dead_letter: DeadLetter) -> dict:
  return json.loads(dead_letter.to_json())


def test_every_kind_of_value_in_a_detail_is_written_as_json():
  detail = {
      "review": _Review(failed=["preamble"], similarity=0.25),
      "row": beam.Row(score=4, parent_id="doc-1"),
      "checks": {"off_topic", "preamble"},
      "bytes": b"caf\xc3\xa9",
      "count": np.int64(3),
      "scores": np.array([1, 2]),
      "error": ValueError("bad reply"),
      "nan": float("nan"),
      "nested": ({"attempt": 1}, [frozenset({2, 1})]),
      7: "an int key",
  }
  document = Document(id="doc-1", text="some text", source="src", safety_score=2)
  line = _line(dead_letter_for("rephrase", document, "quality_preamble", detail))
  assert line["detail"] == {
      "review": {"failed": ["preamble"], "similarity": 0.25},
      "row": {"score": 4, "parent_id": "doc-1"},
      "checks": ["off_topic", "preamble"],
      "bytes": "café",
      "count": 3,
      "scores": [1, 2],
      "error": "ValueError: bad reply",
      "nan": "nan",
      "nested": [{"attempt": 1}, [[1, 2]]],
      "7": "an int key",
  }
  assert line["id"] == "doc-1" and line["text"] == "some text" and line["reason"] == (
      "quality_preamble")


def test_a_generated_row_class_is_an_object():
  """Portable runners decode schema'd records into generated NamedTuple classes."""
  generated = typing.NamedTuple("BeamSchema_0123", [("id", str), ("score", int)])
  record = Unparsed("doc-2", "src")
  line = _line(dead_letter_for("gate", record, "still_unsafe", {"parent": generated("p", 5)}))
  assert line["detail"] == {"parent": {"id": "p", "score": 5}}


def test_detail_field_is_the_json_text_of_one_object():
  record = Unparsed("f.jsonl:3", "f.jsonl", "[1, 2]")
  dead_letter = dead_letter_for("read", record, "not_an_object", {"type": "list"})
  assert json.loads(dead_letter.detail) == {"type": "list"}
  assert _line(dead_letter)["detail"] == {"type": "list"}
  assert _line(dead_letter_for("read", record, "invalid_json"))["detail"] == {}


def test_a_hand_made_detail_that_is_no_object_stays_an_object_in_the_line():
  """Only DeadLetters built by hand can hold such a detail; the line still has an object."""
  assert _line(DeadLetter("gate", "still_unsafe", detail="not json"))["detail"] == {
      "text": "not json"}
  assert _line(DeadLetter("gate", "still_unsafe", detail="[5]"))["detail"] == {"value": [5]}
  assert _line(DeadLetter("gate", "still_unsafe", detail=""))["detail"] == {}
