"""The safety gate's step (transforms/gate.py): a generated text that still scores at or above
the bound is a dead letter of its branch's gate stage; the rest pass unchanged."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from corpus.records import DEAD_LETTER, DOCUMENTS, Document
from transforms.deadletter import apply_step
from transforms.gate import SafetyGate, _GateDoFn, gate_stage


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


@pytest.mark.slow
def test_the_gates_failed_inference_counts_toward_its_branchs_failures(tmp_path):
  """The gate's own scoring fails on every batch (a classifier whose graph does not fit its
  tokenizer, in real ONNX Runtime): each generated text is a dead letter inference_error of the
  gate stage, and the report counts those as the branch's failures, not as texts the gate
  rejected for their content, so the branch fails its check."""
  from beam_pipeline import report as run_report
  from beam_pipeline.report import RunStatistics, Tallies
  from models.classifier.handler import OnnxSafetyModelHandler
  from tests.models.classifier.mismatched import mismatched_model

  handler = OnnxSafetyModelHandler(mismatched_model(str(tmp_path / "model")))
  generated = [Document(id=f"d{i}/safeweb", text=f"A rewritten text about gardens, number {i}.",
                        parent_id=f"d{i}") for i in range(4)]
  with TestPipeline() as pipeline:
    requests = pipeline | beam.Create(generated)
    gated = requests | SafetyGate(handler, "safeweb", 4, 512, 64)
    tallies = [
        requests | "TallyRequests" >> Tallies(run_report.request_tallies, "rephrase"),
        gated[DOCUMENTS] | "TallyWritten" >> Tallies(run_report.written_tallies, "safeweb"),
        gated[DEAD_LETTER] | "TallyDeadLetters" >> Tallies(run_report.dead_letter_tallies)]
    report = (tallies | beam.Flatten() | RunStatistics()
              | beam.Map(lambda counters: run_report.build_report(
                  dict(counters, **{"read.documents.valid": 4, "write.raw": 4}))))
    assert_that(gated[DEAD_LETTER] | beam.Map(lambda letter: (letter.stage, letter.reason)),
                equal_to([("gate_safeweb", "inference_error")] * 4), label="DeadLetters")
    entry = report | beam.Map(lambda r: (
        r["failed_checks"], r["checks"]["generation"]["safeweb"]["failures"],
        r["checks"]["generation"]["safeweb"]["rejected_by_gate"]))
    assert_that(entry, equal_to([(["safeweb_failures"], 4, 0)]), label="Report")
