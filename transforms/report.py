"""The run's report: counts from the Beam metrics counters, the two checks, report.json."""

from __future__ import annotations

import collections
import json

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from transforms.deadletter import METRICS_NAMESPACE
from transforms.documents import (STAGE_DEDUPLICATE, STAGE_MORAL_EDUCATION, STAGE_READ,
                                  STAGE_REFUSEWEB, STAGE_REPHRASE, STAGE_SCORE, STAGE_TAG,
                                  STAGE_VALIDATE)
from transforms.gate import gate_stage

BRANCHES = ("raw", "safeweb", "refuseweb", "moral_education", "tagged")
# generation branch -> the stage that generates it
GENERATION_STAGES = {
    "safeweb": STAGE_REPHRASE,
    "refuseweb": STAGE_REFUSEWEB,
    "moral_education": STAGE_MORAL_EDUCATION,
}
BEFORE_OUTPUT_STAGES = (STAGE_READ, STAGE_VALIDATE, STAGE_DEDUPLICATE, STAGE_SCORE, STAGE_TAG)
# Counters of the report card (transforms.records) and of progress (transforms.progress).
_CARD_PREFIX = "card."
_PROGRESS_PREFIX = "progress."


def counters_from(result) -> dict[str, int]:
  """The pipeline's counters by name; committed values where the runner has them."""
  query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  counters: dict[str, int] = collections.Counter()
  for counter in query["counters"]:
    try:
      value = counter.committed
    except Exception:  # pylint: disable=broad-except  (runners without committed metrics)
      value = None
    if value is None:
      value = counter.attempted
    counters[counter.key.metric.name] += int(value or 0)
  return dict(counters)


def dead_letters_by_stage(counters: dict[str, int]) -> dict[str, dict[str, int]]:
  """{stage: {reason: count}} from the `<stage>.dead_letter.<reason>` counters, sorted."""
  dead_letters: dict[str, dict[str, int]] = collections.defaultdict(dict)
  for name, value in counters.items():
    if name.startswith((_CARD_PREFIX, _PROGRESS_PREFIX)):  # a source name may hold anything
      continue
    stage, marker, reason = name.partition(".dead_letter.")
    if marker and value:
      dead_letters[stage][reason] = value
  return {stage: dict(sorted(r.items())) for stage, r in sorted(dead_letters.items())}


def read_counts(counters: dict[str, int], dead_letters: dict[str, dict[str, int]]):
  """(valid documents, documents read): the valid ones plus the read and validate dead letters."""
  valid = sum(v for k, v in counters.items() if k.startswith(f"{STAGE_READ}.documents."))
  unusable = sum(
      sum(dead_letters.get(stage, {}).values()) for stage in (STAGE_READ, STAGE_VALIDATE))
  return valid, valid + unusable


def build_report(counters: dict[str, int]) -> dict:
  """report.json's content from the counters."""
  get = lambda name: int(counters.get(name, 0))
  dead_letters = dead_letters_by_stage(counters)
  dead_in = lambda stage: sum(dead_letters.get(stage, {}).values())
  valid, documents_read = read_counts(counters, dead_letters)
  per_branch = {branch: get(f"write.{branch}") for branch in BRANCHES}
  dead_before_output = sum(dead_in(stage) for stage in BEFORE_OUTPUT_STAGES)
  originals = {
      "documents_read": documents_read,
      "raw": per_branch["raw"],
      "tagged": per_branch["tagged"],
      "dead_lettered_before_routing": dead_before_output,
  }
  originals["holds"] = documents_read == (
      originals["raw"] + originals["tagged"] + dead_before_output)
  generation = {}
  for branch, stage in GENERATION_STAGES.items():
    entry = {
        "requests": get(f"{stage}.requests"),
        "retries": get(f"{stage}.retries"),
        "outputs": per_branch[branch],
        "dead_letters": dead_in(stage) + dead_in(gate_stage(branch)),
    }
    entry["holds"] = entry["requests"] == entry["outputs"] + entry["dead_letters"]
    generation[branch] = entry
  return {
      "documents_read": documents_read,
      "documents_valid": valid,
      "per_score": {str(score): get(f"{STAGE_SCORE}.score_{score}") for score in range(6)},
      "documents_scored": get(f"{_PROGRESS_PREFIX}documents_scored"),
      "per_branch": per_branch,
      "dead_letters": dead_letters,
      "dead_letters_total": sum(sum(r.values()) for r in dead_letters.values()),
      "dead_letters_written": get("write.dead_letter"),
      "tags_inserted": get(f"{STAGE_TAG}.tags_inserted"),
      "score_distribution": _score_distribution(counters),
      "tags": _tag_figures(get),
      "checks": {"originals": originals, "generation": generation},
      "checks_hold": originals["holds"] and all(g["holds"] for g in generation.values()),
  }


def _score_distribution(counters: dict[str, int]) -> dict[str, dict[str, dict[str, int]]]:
  """{branch: {source: {score: documents written}}}, every branch and score 0-5 present."""
  distribution: dict[str, dict[str, dict[str, int]]] = {branch: {} for branch in BRANCHES}
  prefix = f"{_CARD_PREFIX}score."
  for name, value in counters.items():
    if not name.startswith(prefix) or not value:
      continue
    branch, score, source = name[len(prefix):].split(".", 2)
    by_score = distribution.setdefault(branch, {}).setdefault(
        source, {str(s): 0 for s in range(6)})
    by_score[score] = by_score.get(score, 0) + int(value)
  return {branch: dict(sorted(sources.items())) for branch, sources in distribution.items()}


def _tag_figures(get) -> dict:
  """Tags in the tagged branch: per word gap (each word after a document's first may get one)."""
  documents = get(f"{_CARD_PREFIX}documents.tagged")
  words = get(f"{_CARD_PREFIX}words.tagged")
  tags = get(f"{_CARD_PREFIX}tags.tagged")
  gaps = max(words - documents, 0)
  return {
      "documents": documents, "words": words, "tags": tags, "word_gaps": gaps,
      "rate": round(tags / gaps, 6) if gaps else 0.0,
  }


def write_report(report: dict, output_dir: str) -> str:
  path = FileSystems.join(output_dir, "report.json")
  with FileSystems.create(path) as f:
    f.write((json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8"))
  return path


def summary(report: dict) -> str:
  """A short human summary of the report."""
  lines = [f"documents read: {report['documents_read']} ({report['documents_valid']} valid)"]
  lines.append("per score: " + ", ".join(f"{k}: {v}" for k, v in report["per_score"].items()))
  lines.append("per branch: " + ", ".join(f"{k}: {v}" for k, v in report["per_branch"].items()))
  lines.append(f"tags inserted: {report['tags_inserted']}")
  if "tags" in report:
    tags = report["tags"]
    lines.append(f"tag rate: {tags['tags']} tags in {tags['word_gaps']} word gaps "
                 f"({100 * tags['rate']:.2f}%)")
  lines.append(f"dead letters: {report['dead_letters_total']}")
  for stage, reasons in report["dead_letters"].items():
    lines.append(f"  {stage}: " + ", ".join(f"{r}: {n}" for r, n in reasons.items()))
  originals = report["checks"]["originals"]
  lines.append(
      f"check originals: read {originals['documents_read']} = raw {originals['raw']} + tagged "
      f"{originals['tagged']} + dead letters {originals['dead_lettered_before_routing']}: "
      f"{'holds' if originals['holds'] else 'FAILS'}")
  for branch, entry in report["checks"]["generation"].items():
    lines.append(
        f"check {branch}: requests {entry['requests']} = outputs {entry['outputs']} + dead "
        f"letters {entry['dead_letters']}: {'holds' if entry['holds'] else 'FAILS'}")
  return "\n".join(lines)
