"""The records that flow through the pipeline and the names every room shares.

`Document` is the one record type for web documents, from the reader to the TFRecord writer;
each step fills in its own fields and leaves the rest as they were. `DeadLetter` is what every
step emits for a record it cannot use, with the stage and a reason. Beside them: the stage names
(in dead letters, counters and the `stage` feature), the output branches, the tagged outputs of a
step, the metrics namespace and the harmfulness tag.

This module imports nothing from the project (only Beam, to register the records' coders), so
models/, transforms/ and beam_pipeline/ may all import it and no import runs in a circle.
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
STAGE_ANNOTATE = "annotate"

# The output branches: each is a folder of TFRecord shards under --output. The originals come
# first (every scored document is kept once, as it is or tagged), then the generated branches.
RAW = "raw"
TAGGED = "tagged"
SAFEWEB = "safeweb"
REFUSEWEB = "refuseweb"
MORAL_EDUCATION = "moral_education"
ORIGINAL_BRANCHES = (RAW, TAGGED)
GENERATED_BRANCHES = (SAFEWEB, REFUSEWEB, MORAL_EDUCATION)
BRANCHES = ORIGINAL_BRANCHES + GENERATED_BRANCHES
# generation branch -> the stage that generates it (its dead letters and counters)
GENERATION_STAGES = {
    SAFEWEB: STAGE_REPHRASE,
    REFUSEWEB: STAGE_REFUSEWEB,
    MORAL_EDUCATION: STAGE_MORAL_EDUCATION,
}

# The tagged outputs of every step (`transforms.deadletter.apply_step`); DEAD_LETTER is also the
# dead letters' folder under --output.
DOCUMENTS = "documents"
DEAD_LETTER = "dead_letter"
# The folder of the report card's sample documents (`samples/<branch>.json`) under --output.
SAMPLES_DIR = "samples"

# Beam metrics of the pipeline's steps and of the generators' retries.
METRICS_NAMESPACE = "safety_pretraining"

# The harmfulness tag that tagging inserts and the tokenizer keeps as one token.
HARMFULNESS_TAG = "<potentially_unsafe_content>"

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
  `detail` any figure behind the reason (a score, an attempt count) as the JSON text of one
  object (`transforms.deadletter.detail_json`): a text field, so the record keeps its schema
  coder; in the written line it is that object itself.
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
            "detail": _detail_object(self.detail),
        },
        ensure_ascii=False,
        sort_keys=True)


def _detail_object(detail: str) -> dict:
  """A dead letter's detail as the JSON object its line holds. A detail that is no JSON object
  (only a DeadLetter made by hand has one) is kept whole: other JSON under `value`, any other
  text under `text`."""
  try:
    value = json.loads(detail or "{}")
  except ValueError:
    return {"text": detail}
  return value if isinstance(value, dict) else {"value": value}


beam.coders.registry.register_coder(Document, beam.coders.RowCoder)
beam.coders.registry.register_coder(DeadLetter, beam.coders.RowCoder)
