"""Rephrase, RefuseWeb and MoralEducation: prompt -> RunInference -> parse.

The three steps share one implementation, `GenerateFrom`, parametrised by the prompt kind: build
the chat prompt of each document, run it through `RunInference` with a generator backend keyed by
the source document (replies checked and failures retried by `RetryingGenerator`), and turn each
result into a new `Document` or, with its reason and attempt count, a dead letter.
"""

from __future__ import annotations

import functools
import json
import re
import typing

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler
from apache_beam.ml.inference.base import RunInference

from corpus.records import DEAD_LETTER, DOCUMENTS, GENERATION_STAGES, UNSCORED, DeadLetter
from corpus.records import Document
from models.generators.backend import DEFAULT_RETRY_BUDGET_S, EMPTY_GENERATION, Generation
from models.generators.backend import RetryingGenerator
from models.generators.backend import as_generation, with_retries
from models.generators.prompts import KIND_MORAL_EDUCATION, KIND_REFUSEWEB, KIND_REPHRASE
from models.generators.prompts import QUOTE_BEGIN, QUOTE_END
from models.generators.prompts import build_prompt, pick_style
from transforms.deadletter import RecordStep, Reject, apply_step, count, failed_batch_dead_letters
from transforms.dialogue import ASSISTANT, USER, parse_dialogue, pick_speakers, render_dialogue
from transforms.quality import QualityGate
from transforms.quality_checks import BRANCH_KINDS
from transforms.quality_samples import REVIEW_CHARS
from transforms.quality_samples import QualityReview

REVIEWS = "reviews"  # GenerateFrom's output of QualityReviews

NOT_A_DIALOGUE = "not_a_dialogue"
GENERATION_ERROR = "generation_error"  # a batch the backend failed on as a whole
# Reasons `check_reply` gives; the others come from the backend (timeouts, HTTP errors, ...).
REPLY_REJECTIONS = frozenset({EMPTY_GENERATION, NOT_A_DIALOGUE})


class _Branch(typing.NamedTuple):
  stage: str  # dead letters and counters
  output_stage: str  # the generated documents: their branch, and their `stage` field


# prompt kind -> its stage and the branch it writes
_BRANCHES = {kind: _Branch(GENERATION_STAGES[branch], branch)
             for branch, kind in BRANCH_KINDS.items()}


def _without_quote_markers(text: str) -> str:
  lines = [line for line in text.splitlines() if QUOTE_BEGIN not in line and QUOTE_END not in line]
  return "\n".join(lines).strip()


class _BuildPrompt(beam.DoFn):
  """(source document, chat prompt) pairs, counted as generation requests."""

  def __init__(self, kind: str, seed: int):
    super().__init__()
    self._kind = kind
    self._seed = seed

  def process(self, document: Document):
    count(_BRANCHES[self._kind].stage, "requests")
    style = pick_style(document.id, self._seed) if self._kind == KIND_REPHRASE else None
    # A long document is quoted around the window that decided its score.
    yield document, build_prompt(self._kind, document.text, style, document.deciding_span)


def _generated_document(parent: Document, text: str, kind: str, seed: int) -> Document:
  """The new document made from a generator reply to `parent`, not yet checked."""
  output_stage = _BRANCHES[kind].output_stage
  return Document(
      id=f"{parent.id}/{output_stage}",
      text=text,
      url=parent.url,
      source=parent.source,
      safety_score=UNSCORED,
      safety_probs=[],
      chunk_scores=[],
      stage=output_stage,
      style=pick_style(parent.id, seed) if kind == KIND_REPHRASE else "",
      parent_id=parent.id)


def check_reply(kind: str, text: str) -> str | None:
  """None when a reply is usable for `kind`, else the reason it is not.

  `empty_generation`: no word left after the quote markers are dropped (nothing, or only a
  reply opening such as "#"); `not_a_dialogue` (RefuseWeb): no user turn or no assistant turn.
  The generation steps retry a rejected reply (see `backend.RetryingGenerator`).
  """
  text = _without_quote_markers(text)
  if not re.search(r"\w", text):
    return EMPTY_GENERATION
  if kind == KIND_REFUSEWEB and {role for role, _ in parse_dialogue(text)} != {USER, ASSISTANT}:
    return NOT_A_DIALOGUE
  return None


class ParseReply(RecordStep):
  """Base of the steps after a generator: (source document, backend result) -> outputs.

  A result whose generation failed (after its retries) becomes a dead letter; so does a reply
  that the step's own check rejected (`reply_rejections`: the reasons of the check the handler
  ran on every attempt, `check_reply` or `check_judgement`; it is not run again here). Every
  dead letter carries the source document, so it can be run again, with the reason, the attempt
  count and the rejected reply in its detail. `parse` sees only usable replies.
  """

  reply_rejections: frozenset = frozenset()

  def reply_detail(self, generation: Generation) -> dict:
    """Detail the dead letter of a reply rejected by the step's own check carries."""
    del generation
    return {}

  def dead_letter_subject(self, record):
    return record[0]

  def rejection_detail(self, document: Document) -> dict:
    """Detail every dead letter of this step carries (beside attempts and the reply)."""
    return {}

  def reject(self, reason: str, document: Document, generation: Generation, **detail) -> Reject:
    if generation.quality:  # the quality gate's verdict on each attempt
      detail["reviews"] = json.loads(generation.quality)
    return Reject(reason, **self.rejection_detail(document), attempts=generation.attempts,
                  reply=generation.text[:500], **detail)

  def parse(self, document: Document, generation: Generation) -> typing.Iterable:
    raise NotImplementedError

  def apply(self, record: tuple[Document, typing.Any]):
    document, result = record
    generation = as_generation(getattr(result, "inference", result))
    if generation.error in self.reply_rejections:  # the handler's check rejected the reply
      raise self.reject(
          generation.error, document, generation, **self.reply_detail(generation))
    if generation.error:
      status = {"status": generation.status} if generation.status else {}
      raise self.reject(generation.error, document, generation, error=generation.detail, **status)
    yield from self.parse(document, generation)


def generate_keyed(requests, handler: ModelHandler, parse: ParseReply, output_type=None,
                   review_of=None):
  """(source document, chat prompt) pairs -> RunInference with `handler` -> `parse`.

  Returns a dict: DOCUMENTS (`parse`'s outputs, typed `output_type`, by default Documents) and
  DEAD_LETTER: every request ends in exactly one of them; a batch the backend failed as a whole
  becomes `generation_error` dead letters of `parse`'s stage. With `review_of`, a function of
  one (source document, result) pair, also REVIEWS: its QualityReview of every request.
  """
  generated, failures = requests | "Generate" >> RunInference(
      KeyedModelHandler(handler)).with_exception_handling()
  parsed = apply_step(generated, "Parse", parse, output_type)
  failed = failures.failed_inferences | "FailedBatches" >> beam.FlatMap(
      failed_batch_dead_letters, parse.stage, GENERATION_ERROR).with_output_types(DeadLetter)
  outputs = {
      DOCUMENTS: parsed[DOCUMENTS],
      DEAD_LETTER: (parsed[DEAD_LETTER], failed) | "DeadLetters" >> beam.Flatten(),
  }
  if review_of is not None:
    outputs[REVIEWS] = generated | "Reviews" >> beam.Map(review_of).with_output_types(
        QualityReview)
  return outputs


def review_record(keyed, kind: str, seed: int = 0) -> QualityReview:
  """The QualityReview of one (source document, result) pair: branch, style, source and final
  text side by side, the final reason and every attempt's review."""
  document, result = keyed
  generation = as_generation(getattr(result, "inference", result))
  style = pick_style(document.id, seed) if kind == KIND_REPHRASE else ""
  return QualityReview(
      branch=_BRANCHES[kind].output_stage, style=style, id=document.id,
      source_text=document.text[:REVIEW_CHARS], output_text=generation.text[:REVIEW_CHARS],
      reason=generation.error, attempts=generation.quality or "[]")


class ParseGeneration(ParseReply):
  """(source document, generator result) -> the generated document, or a dead letter.

  What `check_reply` rejected is a dead letter (`ParseReply`); RefuseWeb replies are
  normalised into a dialogue with seeded speaker names.
  """

  reply_rejections = REPLY_REJECTIONS

  def __init__(self, kind: str, seed: int = 0):
    super().__init__()
    self.stage = _BRANCHES[kind].stage
    self._kind = kind
    self._seed = seed

  def rejection_detail(self, document: Document) -> dict:
    return {"output_id": f"{document.id}/{_BRANCHES[self._kind].output_stage}"}

  def parse(self, document: Document, generation: Generation):
    parent = document
    text = _without_quote_markers(generation.text)  # the handler checked it (check_reply)
    document = _generated_document(parent, text, self._kind, self._seed)
    if self._kind == KIND_REFUSEWEB:
      speakers = pick_speakers(parent.id, self._seed)
      document = document._replace(
          text=render_dialogue(parse_dialogue(text), speakers), style="/".join(speakers))
    yield document


class GenerateFrom(beam.PTransform):
  """Generates one new document per input document with a generator ModelHandler.

  `kind` is a prompt kind (`rephrase`, `refuseweb`, `moral_education`); `handler` is a backend
  (`models.generators`: local, vllm, openai) from a chat prompt to a reply; it is wrapped in a
  `RetryingGenerator` that checks each reply, asks again for a rejected one up to
  `max_attempts` replies in all, and retries a request the endpoint failed for up to
  `retry_budget_s` seconds, waiting `backoff_s` to `max_backoff_s` with jitter. `seed` fixes
  the rephrasing style and the RefuseWeb speaker names. `quality` (a
  transforms.quality.QualityGate of this kind, or True for the default settings) reviews every
  usable reply: a text failing a check is retried, then dead-lettered as `quality_<check>`.
  Outputs: DOCUMENTS (main) and DEAD_LETTER: every request ends in exactly one of them (a batch
  that fails as a whole becomes `generation_error` dead letters); REVIEWS: a QualityReview of
  every request (the report's quality figures and samples).
  """

  kind: str = ""

  def __init__(
      self, handler: ModelHandler, seed: int = 0, kind: str | None = None,
      label: str | None = None, max_attempts: int = 3, backoff_s: float = 1.0,
      max_backoff_s: float = 30.0, quality: "QualityGate | bool | None" = None,
      retry_budget_s: float = DEFAULT_RETRY_BUDGET_S):
    super().__init__(label)
    self.kind = kind or self.kind
    if self.kind not in _BRANCHES:
      raise ValueError(f"Unknown generation kind {self.kind!r}; expected one of {list(_BRANCHES)}.")
    if quality is True:
      quality = QualityGate(self.kind)
    self._handler = with_retries(
        handler, functools.partial(check_reply, self.kind), _BRANCHES[self.kind].stage,
        max_attempts=max_attempts, backoff_s=backoff_s, max_backoff_s=max_backoff_s,
        retry_budget_s=retry_budget_s, review=quality or None)
    self._seed = seed

  @property
  def handler(self) -> RetryingGenerator:
    return self._handler

  def expand(self, documents):
    requests = documents | "BuildPrompt" >> beam.ParDo(_BuildPrompt(self.kind, self._seed))
    return generate_keyed(
        requests, self._handler, ParseGeneration(self.kind, self._seed),
        review_of=functools.partial(review_record, kind=self.kind, seed=self._seed))


class Rephrase(GenerateFrom):
  """Scored documents (1-3) -> safe rewrites in a seeded style (stage `safeweb`)."""
  kind = KIND_REPHRASE


class RefuseWeb(GenerateFrom):
  """Scored documents (4-5) -> refusal dialogues with seeded speaker names (stage `refuseweb`)."""
  kind = KIND_REFUSEWEB


class MoralEducation(GenerateFrom):
  """RefuseWeb documents -> third-person ethics articles (stage `moral_education`)."""
  kind = KIND_MORAL_EDUCATION
