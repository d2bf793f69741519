"""The LLM-judge labeller: documents -> `{"score": N, "reason": "..."}` labels from any backend.

The paper labelled its classifier's training data with an LLM judge that scored documents with
the rubric of the method and answered in JSON, the answer's opening pre-filled because small
judges break JSON. `Annotate` does the same through any generation backend (local, vllm, openai):
the rubric is `models/generators/prompts/judge.txt`, whose reply opening is `{"score":`. Each
answer is parsed and validated; an invalid one is retried (sampled, see
`backend.RetryingGenerator`) and, after `max_attempts`, dead-lettered as `invalid_judgement`.

The labels are JSONL rows that `python -m models.classifier.train --labels` reads:
`id`, `text`, `source`, `url`, `score_0_5`, `reason`, `judge`, `attempts`.
"""

from __future__ import annotations

import json
import re
import typing

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from models.generators.backend import Generation, with_retries
from models.generators.prompts import KIND_JUDGE, build_prompt
from transforms.deadletter import count
from transforms.documents import Document
from transforms.generation import ParseReply, generate_keyed
from transforms.report import dead_letters_by_stage, read_counts

STAGE_ANNOTATE = "annotate"
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

  def parse(self, document: Document, generation: Generation):
    try:
      judgement = parse_judgement(generation.text)
    except ValueError as error:
      raise self.reject(INVALID_JUDGEMENT, document, generation, error=str(error)) from None
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
               backoff_s: float = 1.0, max_backoff_s: float = 30.0):
    super().__init__()
    self._handler = with_retries(
        handler, check_judgement, STAGE_ANNOTATE, max_attempts=max_attempts,
        backoff_s=backoff_s, max_backoff_s=max_backoff_s)
    self._judge_name = judge_name

  def expand(self, documents):
    requests = documents | "BuildPrompt" >> beam.ParDo(_BuildJudgePrompt())
    return generate_keyed(requests, self._handler, ParseJudgement(self._judge_name), str)



def label_tallies(line: str) -> list:
  """The report's tallies of one label row: the label, its score and its retries."""
  from transforms.report import tally  # pylint: disable=import-outside-toplevel
  label = json.loads(line)
  return [tally("write.labels"), tally(f"{STAGE_ANNOTATE}.score_{label['score_0_5']}"),
          tally(f"{STAGE_ANNOTATE}.retries", max(int(label.get("attempts", 1)) - 1, 0))]


def build_annotate_report(counters: dict[str, int], max_failure_fraction: float = 0.5) -> dict:
  """report.json of an annotate run: labels per score, dead letters, and the check that every
  document read is labelled or dead-lettered."""
  get = lambda name: int(counters.get(name, 0))
  dead_letters = dead_letters_by_stage(counters)
  valid, documents_read = read_counts(counters, dead_letters)
  del max_failure_fraction  # curate's failure checks; a judge run checks labels + dead letters
  labelled = get("write.labels")
  dead_total = sum(sum(reasons.values()) for reasons in dead_letters.values())
  check = {
      "documents_read": documents_read,
      "labelled": labelled,
      "dead_letters": dead_total,
      "holds": documents_read == labelled + dead_total,
  }
  return {
      "mode": "annotate",
      "documents_read": documents_read,
      "documents_valid": valid,
      "requests": get(f"{STAGE_ANNOTATE}.requests"),
      "labelled": labelled,
      "per_score": {str(score): get(f"{STAGE_ANNOTATE}.score_{score}") for score in range(6)},
      "retries": get(f"{STAGE_ANNOTATE}.retries"),
      "dead_letters": dead_letters,
      "dead_letters_total": dead_total,
      "dead_letters_written": get("write.dead_letter"),
      "checks": {"annotate": check},
      "checks_hold": check["holds"],
  }


def annotate_summary(report: dict) -> str:
  lines = [f"documents read: {report['documents_read']} ({report['documents_valid']} valid)",
           f"labelled: {report['labelled']} (retries: {report['retries']})",
           "per score: " + ", ".join(f"{k}: {v}" for k, v in report["per_score"].items()),
           f"dead letters: {report['dead_letters_total']}"]
  for stage, reasons in report["dead_letters"].items():
    lines.append(f"  {stage}: " + ", ".join(f"{r}: {n}" for r, n in reasons.items()))
  check = report["checks"]["annotate"]
  lines.append(f"check: read {check['documents_read']} = labelled {check['labelled']} + dead "
               f"letters {check['dead_letters']}: {'holds' if check['holds'] else 'FAILS'}")
  return "\n".join(lines)
