"""The right text in the prompt: scoring records where the deciding window is, and a document
over the prompt budget is quoted around it, with context, instead of from its beginning."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.classifier.chunking import Windower
from models.classifier.export import ensure_exported
from models.classifier.handler import OnnxSafetyModelHandler
from models.generators.prompts import (
    KIND_REFUSEWEB, MAX_DOCUMENT_CHARS, QUOTE_BEGIN, QUOTE_END, excerpt)
from corpus.records import DOCUMENTS, Document
from transforms.dialogue import assistant_turns
from transforms.generation import _BuildPrompt
from transforms.scoring import ScoreSafety

FILLER = "The river flows slowly past the old mill, and ducks swim near the reeds. "
# A passage of threats and hate (from the bundled sample), dense enough to decide its window.
THREAT = " ".join([
    "I swear I will find you and kill you and your whole family, you worthless piece of trash.",
    "You are dead.",
    "Those immigrants are vermin and should all be exterminated, they are ruining our country "
    "and deserve to die.",
    "Old people are a burden on society and useless, they just take our money and complain "
    "about everything.",
] * 2)


def _long_document() -> Document:
  """~30,000 characters of calm prose with one threatening passage two thirds of the way in."""
  before, after = FILLER * 270, FILLER * 130
  return Document(id="long-threat", text=before + THREAT + " " + after, source="test")


def test_window_spans_cover_the_windows_text():
  windower = Windower(window=64, overlap=8)
  words = "the river flows slowly past the old mill and ducks swim near green reeds".split()
  text = "  " + " ".join(words[i % len(words)] for i in range(600)) + "  "
  [(windows, spans)] = windower.windows_and_spans([text])
  assert [w.tolist() for w in windows] == [w.tolist() for w in windower.windows([text])[0]]
  assert len(spans) == len(windows) > 3
  assert spans[0][0] == 2 and spans[-1][1] == len(text.rstrip())
  for (start, end), window in zip(spans, windows):
    # The span's text tokenizes back to the window's content tokens (whole words, one token
    # each, so no window begins inside a word).
    assert windower.content_ids([text[start:end]])[0] == window[1:-1].tolist()
  [(empty_windows, empty_spans)] = Windower().windows_and_spans([""])
  assert len(empty_windows) == 1 and empty_spans == [(0, 0)]


def test_excerpt_is_centred_on_the_focus_within_the_budget():
  text = " ".join(f"w{i}" for i in range(4000))
  assert excerpt("  short text  ", (2, 7)) == "short text"
  head = excerpt(text)
  assert head.startswith("w0 ") and head.endswith(" ...") and len(head) <= MAX_DOCUMENT_CHARS + 4
  middle = text.index("w2500 ")
  around = excerpt(text, (middle, middle + 400))
  assert around.startswith("... ") and around.endswith(" ...")
  assert text[middle:middle + 400] in around and len(around) <= MAX_DOCUMENT_CHARS + 8
  before = around.index(text[middle:middle + 400])
  after = len(around) - before - 400
  assert abs(before - after) < 200  # as much context before as after
  tail = excerpt(text, (len(text) - 10, len(text)))
  assert tail.startswith("... ") and tail.endswith("w3999")
  assert excerpt(text, (10, 5)) == head  # no usable focus: the beginning


@pytest.mark.slow
def test_long_documents_refuseweb_prompt_holds_its_deciding_window():
  """The real classifier scores a long calm page with one threat deep inside as 4-5 because of
  the threat's window; RefuseWeb's prompt quotes that window, not the first 6,000 characters
  (which never reach it)."""
  document = _long_document()
  threat_at = document.text.index(THREAT)
  assert threat_at > 3 * MAX_DOCUMENT_CHARS
  handler = OnnxSafetyModelHandler(ensure_exported()["int8"], intra_op_threads=1)

  def check(scored):
    [doc] = scored
    assert doc.safety_score >= 4, doc.chunk_scores
    start, end = doc.deciding_span
    # The deciding window is one that holds (much of) the passage, never the calm prose.
    overlap = min(end, threat_at + len(THREAT)) - max(start, threat_at)
    assert overlap > len(THREAT) // 2, (doc.deciding_span, threat_at)
    [(_, prompt)] = list(_BuildPrompt(KIND_REFUSEWEB, seed=0).process(doc))
    user = prompt[1]["content"]
    quoted = user[user.index(QUOTE_BEGIN) + len(QUOTE_BEGIN):user.index(QUOTE_END)]
    assert THREAT in quoted
    assert document.text[start:end].strip() in quoted  # the deciding window, whole
    assert quoted.strip().startswith("...") and len(quoted) <= MAX_DOCUMENT_CHARS + 16
    assert quoted.index(THREAT) > 1000 and len(quoted) - quoted.index(THREAT) > 1000  # context

  with TestPipeline() as p:
    scored = p | beam.Create([document]) | ScoreSafety(handler)
    assert_that(scored[DOCUMENTS], check)


@pytest.mark.slow
def test_a_gate_scoring_other_text_records_no_span():
  """RefuseWeb's gate scores the assistant's turns, not the text: no span is recorded, since
  offsets into another string would point at the wrong text."""
  dialogue = Document(id="d/refuseweb", text="User: how do I do it?\n\nAssistant: I won't help.",
                      style="User/Assistant", stage="refuseweb")
  handler = OnnxSafetyModelHandler(ensure_exported()["int8"], intra_op_threads=1)
  with TestPipeline() as p:
    plain = p | "Plain" >> beam.Create([dialogue]) | "Text" >> ScoreSafety(handler)
    turns = (p | "Turns" >> beam.Create([dialogue])
             | "AssistantTurns" >> ScoreSafety(handler, stage="gate", text_of=assistant_turns))
    assert_that(plain[DOCUMENTS] | "PlainSpan" >> beam.Map(lambda d: d.deciding_span),
                equal_to([[0, len(dialogue.text)]]), label="plain")
    assert_that(turns[DOCUMENTS] | "TurnsSpan" >> beam.Map(lambda d: d.deciding_span),
                equal_to([[]]), label="turns")
