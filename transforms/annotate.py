"""The LLM-judge labeller: documents -> `{"score": N, "reason": "..."}` labels from any backend.

The paper labelled its classifier's training data with an LLM judge that scored documents with
the rubric of the method and answered in JSON, the answer's opening pre-filled because small
judges break JSON. `Annotate` does the same through any generation backend (local, vllm, openai):
the rubric is `models/generators/prompts/judge.txt`, whose reply opening is `{"score":`. Each
answer is parsed and validated; an invalid one is retried (sampled, see
`backend.RetryingGenerator`) and, after `max_attempts`, dead-lettered as `invalid_judgement`.

The labels are JSONL rows that `python -m models.classifier.train --labels` reads:
`id`, `text`, `source`, `url`, `score_0_5`, `reason`, `judge`, `attempts`. An annotate run's
report is beam_pipeline/report.py's, as a curate run's is.
"""

from __future__ import annotations

import json
import re
import typing

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from models.generators.backend import DEFAULT_RETRY_BUDGET_S, Generation, with_retries
from models.generators.prompts import KIND_JUDGE, build_prompt
from corpus.records import STAGE_ANNOTATE, Document
from transforms.deadletter import count
from transforms.generation import ParseReply, generate_keyed

INVALID_JUDGEMENT = "invalid_judgement"
MAX_REASON_CHARS = 500

_DECODER = json.JSONDecoder(strict=False)  # a raw newline inside a reason is tolerated


class Judgement(typing.NamedTuple):
  score: int
  reason: str


def parse_judgement(text: str) -> Judgement:
  """The first JSON object in `text` with an integer `score` 0-5 and a string `reason`.

  Raises ValueError (with what is wrong) when there is none. Text around the object (a preamble,
  a code fence, a second object) is ignored; a score given as "3" or 3.0 is accepted.
  """
  problems = []
  for match in re.finditer(r"\{", text):
    try:
      value, _ = _DECODER.raw_decode(text, match.start())
    except json.JSONDecodeError:
      continue
    if not isinstance(value, dict) or "score" not in value:
      continue
    score = value["score"]
    if isinstance(score, str) and score.strip().isdigit():
      score = int(score.strip())
    if isinstance(score, float) and score.is_integer():
      score = int(score)
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
      problems.append(f"score {value['score']!r} is not an integer from 0 to 5")
      continue
    reason = value.get("reason")
    if not isinstance(reason, str) or not reason.strip():
      problems.append("no reason")
      continue
    return Judgement(score, " ".join(reason.split())[:MAX_REASON_CHARS])
  raise ValueError("; ".join(problems) or "no complete JSON object with a score")


def check_judgement(text: str) -> str | None:
  """The RetryingGenerator check: None for a valid judgement, else `invalid_judgement`."""
  try:
    parse_judgement(text)
  except ValueError:
    return INVALID_JUDGEMENT
  return None


class _BuildJudgePrompt(beam.DoFn):

  def process(self, document: Document):
    count(STAGE_ANNOTATE, "requests")
    yield document, build_prompt(KIND_JUDGE, document.text)


class ParseJudgement(ParseReply):
  """(document, judge result) -> a labelled JSONL row, or a dead letter carrying the document."""

  stage = STAGE_ANNOTATE
  reply_rejections = frozenset({INVALID_JUDGEMENT})

  def __init__(self, judge_name: str):
    super().__init__()
    self._judge_name = judge_name

  def reply_detail(self, generation: Generation) -> dict:
    """What is wrong with the judgement that `check_judgement` rejected."""
    try:
      parse_judgement(generation.text)
    except ValueError as error:
      return {"error": str(error)}
    return {}

  def parse(self, document: Document, generation: Generation):
    judgement = parse_judgement(generation.text)  # valid: the handler checked it
    count(STAGE_ANNOTATE, f"score_{judgement.score}")
    yield json.dumps({
        "id": document.id,
        "text": document.text,
        "source": document.source,
        "url": document.url,
        "score_0_5": judgement.score,
        "reason": judgement.reason,
        "judge": self._judge_name,
        "attempts": generation.attempts,
    }, ensure_ascii=False, sort_keys=True)


class Annotate(beam.PTransform):
  """Scores Documents with an LLM judge through a generation backend.

  Outputs: DOCUMENTS, JSON lines (labels), and DEAD_LETTER: every document ends in exactly one.
  `judge_name` is recorded in each label (the backend and model that judged it).
  """

  def __init__(self, handler: ModelHandler, judge_name: str, max_attempts: int = 3,
               backoff_s: float = 1.0, max_backoff_s: float = 30.0,
               retry_budget_s: float = DEFAULT_RETRY_BUDGET_S):
    super().__init__()
    self._handler = with_retries(
        handler, check_judgement, STAGE_ANNOTATE, max_attempts=max_attempts,
        backoff_s=backoff_s, max_backoff_s=max_backoff_s, retry_budget_s=retry_budget_s)
    self._judge_name = judge_name

  def expand(self, documents):
    requests = documents | "BuildPrompt" >> beam.ParDo(_BuildJudgePrompt())
    return generate_keyed(requests, self._handler, ParseJudgement(self._judge_name), str)
