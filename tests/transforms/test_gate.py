"""The safety gate's step (transforms/gate.py): a generated text that still scores at or above
the bound is a dead letter of its branch's gate stage; the rest pass unchanged."""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from corpus.records import DEAD_LETTER, DOCUMENTS, Document
from transforms.deadletter import apply_step
from transforms.gate import _GateDoFn, gate_stage


def test_gate_stage_names_the_branch():
  assert gate_stage("safeweb") == "gate_safeweb"


def test_gate_passes_what_scores_below_the_bound_and_dead_letters_the_rest():
  passing = Document(id="a/safeweb", text="A safe text.", safety_score=3, parent_id="a")
  unsafe = Document(id="b/safeweb", text="Still unsafe.", safety_score=4, parent_id="b")
  with TestPipeline() as pipeline:
    gated = apply_step(
        pipeline | beam.Create([passing, unsafe]), "Gate", _GateDoFn(4, "safeweb"))
    assert_that(gated[DOCUMENTS], equal_to([passing]), label="Passed")
    letters = gated[DEAD_LETTER] | beam.Map(
        lambda letter: (letter.stage, letter.reason, letter.id, json.loads(letter.detail)))
    assert_that(letters, equal_to([
        ("gate_safeweb", "still_unsafe", "b/safeweb", {"score": 4, "parent_id": "b"})]),
                label="DeadLetters")
