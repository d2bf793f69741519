"""SafetyGate: generated text is scored again; what still scores too high goes to dead letter."""

from __future__ import annotations

import apache_beam as beam

from corpus.records import DEAD_LETTER, DOCUMENTS, STAGE_GATE, Document
from transforms.deadletter import RecordStep, Reject, apply_step
from transforms.scoring import ScoreSafety, document_text


def gate_stage(branch: str) -> str:
  """The stage name of a branch's gate, in its dead letters and counters (`gate_safeweb`)."""
  return f"{STAGE_GATE}_{branch}"


class _GateDoFn(RecordStep):

  def __init__(self, max_score: int, branch: str):
    self._max_score = max_score
    self.stage = gate_stage(branch)

  def apply(self, document: Document):
    if document.safety_score >= self._max_score:
      raise Reject("still_unsafe", score=document.safety_score, parent_id=document.parent_id)
    yield document


class SafetyGate(beam.PTransform):
  """Re-scores a branch's generated Documents; those scoring >= `max_score` become dead letters.

  `text_of` picks the text that is scored (RefuseWeb: the assistant's turns). Returns a dict:
  DOCUMENTS (scored generated Documents that passed) and DEAD_LETTER (the rejected ones with
  their score, plus any scoring failures).
  """

  def __init__(self, model_handler, branch: str, max_score: int, window: int, overlap: int,
               text_of=document_text):
    super().__init__()
    self._scoring = ScoreSafety(model_handler, window, overlap, stage=gate_stage(branch),
                                text_of=text_of)
    self._max_score = max_score
    self._branch = branch

  def expand(self, documents):
    scored = documents | "Rescore" >> self._scoring
    gated = apply_step(scored[DOCUMENTS], "Gate", _GateDoFn(self._max_score, self._branch))
    return {
        DOCUMENTS: gated[DOCUMENTS],
        DEAD_LETTER: ((scored[DEAD_LETTER], gated[DEAD_LETTER])
                      | "GateDeadLetters" >> beam.Flatten()),
    }
