"""The run's report, for both modes (curate and annotate): statistics computed as data in the
graph, the checks, report.json, and the summary printed at the end.

The figures are tallies, `(name, source, count)` rows that the graph derives from the
PCollections themselves (documents read, scored, sent to each generation step, written; dead
letters by stage and reason; labels; quality reviews), summed by `RunStatistics` into one record
`{name: count}`, and turned into the report by `build_report` (`mode` curate or annotate). They
are data, not runner metrics, because a job launched from a template is never seen by the
process that built it, and because metrics keyed by an input file (a crawl has ~90,000 of them)
pass every runner's metric limits: per-source tallies keep the `top_sources` largest sources by
name and fold the rest into `other`. Beam counters stay for progress (Flink's and Dataflow's
UIs) and are not read here. CommitOutput (beam_pipeline/output_folder.py) writes the report with
`write_report_files`, report.html beside it (beam_pipeline/report_card.py).
"""

from __future__ import annotations

import collections
import json
import typing

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import report_card
from corpus.records import (BRANCHES, GENERATED_BRANCHES, GENERATION_STAGES, HARMFULNESS_TAG,
                            STAGE_ANNOTATE, STAGE_DEDUPLICATE, STAGE_READ, STAGE_SCORE,
                            STAGE_TAG, STAGE_VALIDATE, TAGGED)
from models.generators.backend import (CONNECTION_ERROR, HTTP_ERROR, MALFORMED_RESPONSE,
                                       REQUEST_REJECTED, TIMEOUT)
from transforms.gate import gate_stage
from transforms.generation import GENERATION_ERROR
from transforms.progress import STAGE_PROGRESS
from transforms.quality_checks import BRANCH_KINDS, KIND_CHECKS
from transforms.quality_samples import QUALITY_SAMPLES_PREFIX, QualityReview
from transforms.scoring import INFERENCE_ERROR
from transforms.tagging import count_tags

CURATE = "curate"
ANNOTATE = "annotate"
BEFORE_OUTPUT_STAGES = (STAGE_READ, STAGE_VALIDATE, STAGE_DEDUPLICATE, STAGE_SCORE, STAGE_TAG)
# Counters of the report card (the branch tallies below) and of progress (transforms.progress).
_CARD_PREFIX = "card."
_PROGRESS_PREFIX = f"{STAGE_PROGRESS}."
# Generation dead-letter reasons that mean the backend failed, not that a reply was unusable or
# unsafe (models.generators.backend): a branch that loses most requests to these is broken.
FAILURE_REASONS = frozenset({
    TIMEOUT, HTTP_ERROR, REQUEST_REJECTED, CONNECTION_ERROR, MALFORMED_RESPONSE,
    GENERATION_ERROR})
OTHER_SOURCES = "other"
NO_SOURCE = "(no source)"
DEFAULT_TOP_SOURCES = 20
DEFAULT_MAX_FAILURE_FRACTION = 0.5

Tally = typing.Tuple[str, str, int]  # (name, source or "", count)


def tally(name: str, n: int = 1, source: str = "") -> Tally:
  return name, source, n


class _SumTallies(beam.CombineFn):
  """{name: count} from (name, count) pairs: the one report record of a run."""

  def create_accumulator(self):
    return {}

  def add_input(self, accumulator, element):
    name, value = element
    accumulator[name] = accumulator.get(name, 0) + value
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = {}
    for accumulator in accumulators:
      for name, value in accumulator.items():
        merged[name] = merged.get(name, 0) + value
    return merged

  def extract_output(self, accumulator):
    return dict(sorted(accumulator.items()))


def written_tallies(document, branch: str) -> typing.List[Tally]:
  """What the report counts of a document written to `branch`: the branch, the score per source
  (the report card), its words and tags."""
  words = len(document.text.replace(HARMFULNESS_TAG, " ").split())
  tallies = [
      tally(f"write.{branch}"),
      tally(f"{_CARD_PREFIX}score.{branch}.{document.safety_score}",
            source=document.source or NO_SOURCE),
      tally(f"{_CARD_PREFIX}documents.{branch}"),
      tally(f"{_CARD_PREFIX}words.{branch}", words),
      tally(f"{_CARD_PREFIX}tags.{branch}", document.tag_count),
  ]
  if branch == TAGGED:
    tallies.append(tally(f"{STAGE_TAG}.tags_inserted", document.tag_count))
  return tallies


def dead_letter_tallies(dead_letter) -> typing.List[Tally]:
  return [tally(f"{dead_letter.stage}.dead_letter.{dead_letter.reason}"),
          tally("write.dead_letter")]


def scored_tallies(document) -> typing.List[Tally]:
  return [tally(f"{STAGE_SCORE}.score_{document.safety_score}"),
          tally(f"{_PROGRESS_PREFIX}documents_scored")]


def matched_file_tallies(path: str) -> typing.List[Tally]:
  """A file the input pattern matched (ReadDocuments' MATCHED_FILES)."""
  del path
  return [tally(f"{STAGE_READ}.files_matched")]


def read_tallies(document) -> typing.List[Tally]:
  """A document ReadDocuments passed on (valid and deduplicated; the rest are dead letters)."""
  del document
  return [tally(f"{STAGE_READ}.documents.valid")]


def stripped_tallies(document, where: str) -> typing.List[Tally]:
  """The tags (and near spellings) that StripTags will remove from a document of `where`
  (`input` or a generation branch), tallied before it does."""
  tags = count_tags(document.text)
  return [tally(f"strip.{where}.tags", tags), tally(f"strip.{where}.documents")] if tags else []


def request_tallies(document, stage: str) -> typing.List[Tally]:
  """A document sent to the generation step `stage` (one request, retries aside)."""
  del document
  return [tally(f"{stage}.requests")]


def label_tallies(line: str) -> list:
  """The report's tallies of one label row: the label, its score and its retries."""
  label = json.loads(line)
  return [tally("write.labels"), tally(f"{STAGE_ANNOTATE}.score_{label['score_0_5']}"),
          tally(f"{STAGE_ANNOTATE}.retries", max(int(label.get("attempts", 1)) - 1, 0))]


def review_tallies(review: QualityReview) -> list:
  """The report's figures of one request: `quality.<branch>.<style>.<name>` counts."""
  prefix = f"quality.{review.branch}.{review.style or 'all'}"
  attempts = json.loads(review.attempts or "[]")
  reviewed = [attempt for attempt in attempts if "failed" in attempt]
  tallies = [tally(f"{prefix}.requests"), tally(f"{prefix}.attempts", len(attempts)),
             tally(f"{prefix}.reviewed", len(reviewed))]
  if not review.reason:
    tallies.append(tally(f"{prefix}.passed"))
  if attempts and "failed" in attempts[0] and not attempts[0]["failed"]:
    tallies.append(tally(f"{prefix}.passed_first_attempt"))
  for attempt in reviewed:
    tallies.extend(tally(f"{prefix}.failed.{check}") for check in attempt["failed"])
    tallies.extend(tally(f"{prefix}.cut.{cut}") for cut in attempt["cuts"])
  return tallies


class Tallies(beam.PTransform):
  """`records | Tallies(fn, *args)`: the tallies `fn(record, *args)` of every record."""

  def __init__(self, fn, *args):
    super().__init__()
    self._fn = fn
    self._args = args

  def expand(self, records):
    return records | beam.FlatMap(self._fn, *self._args).with_output_types(Tally)


def _bound_source(summed, top: typing.List[typing.Tuple[int, str]]):
  (name, source), value = summed
  if source and source not in {kept for _, kept in top}:
    source = OTHER_SOURCES
  return (f"{name}.{source}" if source else name), value


class RunStatistics(beam.PTransform):
  """Tallies -> one record {name: count}, with at most `top_sources` named sources.

  CombinePerKey sums each (name, source); the sources' totals pick the `top_sources` largest
  (ties by name, so every runner keeps the same); every other source is renamed `other` and the
  sums are combined again, so the single record's size does not grow with the input files.
  """

  def __init__(self, top_sources: int = DEFAULT_TOP_SOURCES):
    super().__init__()
    self._top_sources = top_sources

  def expand(self, tallies):
    summed = (
        tallies
        | "ByNameAndSource" >> beam.Map(lambda t: ((t[0], t[1]), t[2])).with_output_types(
            typing.Tuple[typing.Tuple[str, str], int])
        | "SumPerNameAndSource" >> beam.CombinePerKey(sum))
    top = (
        summed
        | "SourceCounts" >> beam.FlatMap(
            lambda kv: [(kv[0][1], kv[1])] if kv[0][1] and kv[0][0].startswith(
                f"{_CARD_PREFIX}score.") else [])
        | "SumPerSource" >> beam.CombinePerKey(sum)
        | "CountFirst" >> beam.Map(lambda kv: (kv[1], kv[0]))
        | "TopSources" >> beam.combiners.Top.Of(self._top_sources))
    return (
        summed
        | "BoundSources" >> beam.Map(_bound_source, beam.pvalue.AsSingleton(top))
        | "OneRecord" >> beam.CombineGlobally(_SumTallies()))


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
  """(valid documents, documents read): the valid ones plus the read and validate dead letters.

  Valid documents are those ReadDocuments passes on (tallied after deduplication) plus the
  duplicates it dead-lettered."""
  valid = sum(v for k, v in counters.items() if k.startswith(f"{STAGE_READ}.documents."))
  valid += sum(dead_letters.get(STAGE_DEDUPLICATE, {}).values())
  unusable = sum(
      sum(dead_letters.get(stage, {}).values()) for stage in (STAGE_READ, STAGE_VALIDATE))
  return valid, valid + unusable


def _fraction(part: int, whole: int) -> float:
  return round(part / whole, 6) if whole else 0.0


def _within(check: dict, part: int, whole: int, max_fraction: float) -> bool:
  """Adds `fraction` (part of whole), `max_fraction` and `holds` (the fraction at most
  max_fraction) to a check's figures; returns whether it holds."""
  check.update(fraction=_fraction(part, whole), max_fraction=max_fraction)
  check["holds"] = check["fraction"] <= max_fraction
  return check["holds"]


def build_report(counters: dict[str, int],
                 max_failure_fraction: float = DEFAULT_MAX_FAILURE_FRACTION,
                 mode: str = CURATE, allow_empty_input: bool = False) -> dict:
  """report.json's content from the run's statistics (RunStatistics' record), for `mode`."""
  if mode == ANNOTATE:
    return build_annotate_report(counters, max_failure_fraction, allow_empty_input)
  return build_curate_report(counters, max_failure_fraction, allow_empty_input)


def input_check(counters: dict[str, int], documents_read: int, allow_empty_input: bool,
                valid: int | None = None) -> dict:
  """The `empty_input` check of both modes: a run with no valid document to curate (its pattern
  matched no file, its files hold no record, or every record read was dead-lettered as invalid,
  as with a wrong --text_field) fails unless `allow_empty_input`; an empty corpus is otherwise
  what a wrong path, a missing partition or a wrong field name looks like."""
  valid = documents_read if valid is None else valid
  check = {"files_matched": int(counters.get(f"{STAGE_READ}.files_matched", 0)),
           "documents_read": documents_read, "documents_valid": valid,
           "allow_empty_input": allow_empty_input}
  check["holds"] = valid > 0 or allow_empty_input
  return check


def build_curate_report(counters: dict[str, int],
                        max_failure_fraction: float = DEFAULT_MAX_FAILURE_FRACTION,
                        allow_empty_input: bool = False) -> dict:
  """A curate run's report.json.

  Checks: something was read (`empty_input`, unless `allow_empty_input`); nothing lost
  (documents read = raw + tagged + dead letters before routing; per generation branch,
  requests = outputs + dead letters), and nothing broken: no generation branch loses more than
  `max_failure_fraction` of its requests to backend failures (FAILURE_REASONS) or to its safety
  gate's failed inference, scoring loses no more than that fraction of the documents it was
  given to failed inference (`score_failures`), and the read stage dead-letters no more than
  that fraction of the records read. Rejections of a text for its content (the safety gate, an
  unusable reply) are reported, never a failure.
  """
  get = lambda name: int(counters.get(name, 0))
  dead_letters = dead_letters_by_stage(counters)
  dead_in = lambda stage: sum(dead_letters.get(stage, {}).values())
  valid, documents_read = read_counts(counters, dead_letters)
  given_input = input_check(counters, documents_read, allow_empty_input, valid)
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
  failed = [] if given_input["holds"] else ["empty_input"]
  if not originals["holds"]:
    failed.append("originals")
  generation = {}
  for branch, stage in GENERATION_STAGES.items():
    gate_failures = dead_letters.get(gate_stage(branch), {}).get(INFERENCE_ERROR, 0)
    failures = gate_failures + sum(n for reason, n in dead_letters.get(stage, {}).items()
                                   if reason in FAILURE_REASONS)
    entry = {
        "requests": get(f"{stage}.requests"),
        "outputs": per_branch[branch],
        "dead_letters": dead_in(stage) + dead_in(gate_stage(branch)),
        "failures": failures,
        "gate_failures": gate_failures,
        "rejected_by_gate": dead_in(gate_stage(branch)) - gate_failures,
    }
    entry["failure_fraction"] = _fraction(failures, entry["requests"])
    entry["balanced"] = entry["requests"] == entry["outputs"] + entry["dead_letters"]
    entry["holds"] = entry["balanced"] and entry["failure_fraction"] <= max_failure_fraction
    if not entry["balanced"]:
      failed.append(branch)
    if entry["failure_fraction"] > max_failure_fraction:
      failed.append(f"{branch}_failures")
    generation[branch] = entry
  read_dead = dead_in(STAGE_READ)
  reading = {
      "documents_read": documents_read,
      "dead_lettered": read_dead,
  }
  if not _within(reading, read_dead, documents_read, max_failure_fraction):
    failed.append("read_failures")
  score_failures = dead_letters.get(STAGE_SCORE, {}).get(INFERENCE_ERROR, 0)
  # Every document given to scoring is scored or dead-lettered by it.
  given = get(f"{_PROGRESS_PREFIX}documents_scored") + dead_in(STAGE_SCORE)
  scoring = {
      "documents": given,
      "failures": score_failures,
  }
  if not _within(scoring, score_failures, given, max_failure_fraction):
    failed.append("score_failures")
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
      "tags_stripped": {where: {"tags": get(f"strip.{where}.tags"),
                                "documents": get(f"strip.{where}.documents")}
                        for where in ("input", *GENERATION_STAGES)},
      "quality": quality_report(counters),
      "score_distribution": _score_distribution(counters),
      "tags": _tag_figures(get),
      "max_failure_fraction": max_failure_fraction,
      "checks": {"input": given_input, "originals": originals, "generation": generation,
                 "read": reading, "scoring": scoring},
      "failed_checks": failed,
      "checks_hold": not failed,
  }


def build_annotate_report(counters: dict[str, int],
                          max_failure_fraction: float = DEFAULT_MAX_FAILURE_FRACTION,
                          allow_empty_input: bool = False) -> dict:
  """report.json of an annotate run: labels per score, dead letters, and the checks that
  something was read (`empty_input`) and every document read is labelled or dead-lettered."""
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
  given_input = input_check(counters, documents_read, allow_empty_input, valid)
  failed = ([] if given_input["holds"] else ["empty_input"]) + (
      [] if check["holds"] else ["annotate"])
  return {
      "mode": ANNOTATE,
      "documents_read": documents_read,
      "documents_valid": valid,
      "requests": get(f"{STAGE_ANNOTATE}.requests"),
      "labelled": labelled,
      "per_score": {str(score): get(f"{STAGE_ANNOTATE}.score_{score}") for score in range(6)},
      "retries": get(f"{STAGE_ANNOTATE}.retries"),
      "dead_letters": dead_letters,
      "dead_letters_total": dead_total,
      "dead_letters_written": get("write.dead_letter"),
      "checks": {"input": given_input, "annotate": check},
      "failed_checks": failed,
      "checks_hold": not failed,
  }


def quality_report(counters: dict) -> dict:
  """{branch: {style: figures}} from the review tallies: requests, attempts, reviewed
  attempts, texts that passed (after retries) and at the first attempt, and per check the
  failures and the pass rate over reviewed attempts; cuts per kind."""
  report: dict = {}
  for name, value in sorted(counters.items()):
    if not name.startswith("quality."):
      continue
    _, branch, style, figure = name.split(".", 3)
    entry = report.setdefault(branch, {}).setdefault(style, {
        "requests": 0, "attempts": 0, "reviewed": 0, "passed": 0, "passed_first_attempt": 0,
        "checks": {}, "cuts": {}})
    if figure.startswith("failed."):
      entry["checks"].setdefault(figure[len("failed."):], {})["failed"] = int(value)
    elif figure.startswith("cut."):
      entry["cuts"][figure[len("cut."):]] = int(value)
    else:
      entry[figure] = int(value)
  for branch, styles in report.items():
    for entry in styles.values():
      reviewed = entry["reviewed"]
      for check in KIND_CHECKS[BRANCH_KINDS[branch]]:
        figures = entry["checks"].setdefault(check, {})
        figures.setdefault("failed", 0)
        figures["pass_rate"] = round(1 - figures["failed"] / reviewed, 4) if reviewed else None
      entry["pass_rate"] = round(entry["passed"] / entry["requests"], 4) if entry["requests"] else None
  return report


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


def write_report_files(report: dict, output_dir: str) -> typing.List[str]:
  """report.json, then (a curate run's) report.html beside it; their paths. CommitOutput's."""
  paths = []
  if has_report_card(report):
    # Source beside output, passing and rejected, per branch: the samples the graph wrote.
    report = dict(report, quality_samples=report_card.read_samples(
        output_dir, GENERATED_BRANCHES, QUALITY_SAMPLES_PREFIX))
    paths.append(report_card.write_report_card(report, output_dir))
  # Last: a folder with report.json holds a complete run.
  paths.insert(0, write_report(report, output_dir))
  return paths


def has_report_card(report: dict) -> bool:
  """True for the report of a curate run, which report.html shows beside report.json."""
  return "per_branch" in report


def read_report(output_dir: str) -> dict:
  with FileSystems.open(FileSystems.join(output_dir, "report.json")) as f:
    return json.loads(f.read().decode("utf-8"))


def write_report(report: dict, output_dir: str) -> str:
  path = FileSystems.join(output_dir, "report.json")
  with FileSystems.create(path) as f:
    f.write((json.dumps(report, indent=2, sort_keys=True) + "\n").encode("utf-8"))
  return path


def summary(report: dict) -> str:
  """A short human summary of the report (of either mode)."""
  if report.get("mode") == ANNOTATE:
    return annotate_summary(report)
  return curate_summary(report)


def curate_summary(report: dict) -> str:
  """A short human summary of a curate run's report."""
  lines = [f"documents read: {report['documents_read']} ({report['documents_valid']} valid)"]
  lines.append("per score: " + ", ".join(f"{k}: {v}" for k, v in report["per_score"].items()))
  lines.append("per branch: " + ", ".join(f"{k}: {v}" for k, v in report["per_branch"].items()))
  lines.append(f"tags inserted: {report['tags_inserted']}")
  stripped = report.get("tags_stripped", {})
  if any(entry["tags"] for entry in stripped.values()):
    lines.append("tags stripped before tagging: " + ", ".join(
        f"{where}: {entry['tags']} in {entry['documents']} documents"
        for where, entry in stripped.items() if entry["tags"]))
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
  limit = report.get("max_failure_fraction", DEFAULT_MAX_FAILURE_FRACTION)
  for branch, entry in report["checks"]["generation"].items():
    lines.append(
        f"check {branch}: requests {entry['requests']} = outputs {entry['outputs']} + dead "
        f"letters {entry['dead_letters']}: {'holds' if entry['balanced'] else 'FAILS'}; "
        f"failures {entry['failures']} ({100 * entry['failure_fraction']:.1f}%, at most "
        f"{100 * limit:.0f}%): {'holds' if entry['failure_fraction'] <= limit else 'FAILS'}; "
        f"rejected by the safety gate: {entry['rejected_by_gate']}")
  for branch, styles in report.get("quality", {}).items():
    for style, entry in styles.items():
      failing = ", ".join(f"{check} {100 * figures['pass_rate']:.0f}%"
                          for check, figures in entry["checks"].items()
                          if figures.get("pass_rate") is not None and figures["failed"])
      lines.append(
          f"quality {branch}/{style}: {entry['passed']} of {entry['requests']} passed every "
          f"check ({entry['passed_first_attempt']} at the first attempt)"
          + (f"; pass rates per attempt: {failing}" if failing else ""))
  reading = report["checks"]["read"]
  lines.append(
      f"check read_failures: {reading['dead_lettered']} of {reading['documents_read']} records "
      f"dead-lettered when read ({100 * reading['fraction']:.1f}%, at most {100 * limit:.0f}%): "
      f"{'holds' if reading['holds'] else 'FAILS'}")
  scoring = report["checks"].get("scoring")
  if scoring:
    lines.append(
        f"check score_failures: inference failed for {scoring['failures']} of "
        f"{scoring['documents']} documents given to scoring ({100 * scoring['fraction']:.1f}%, "
        f"at most {100 * limit:.0f}%): {'holds' if scoring['holds'] else 'FAILS'}")
  lines.extend(_input_lines(report))
  for name in report.get("failed_checks", []):
    lines.append(f"FAILED check {name}: {failed_check_reason(report, name)}")
  return "\n".join(lines)


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
  lines.extend(_input_lines(report))
  for name in report.get("failed_checks", []):
    lines.append(f"FAILED check {name}: {failed_check_reason(report, name)}")
  return "\n".join(lines)


def _input_lines(report: dict) -> typing.List[str]:
  given = report["checks"].get("input")
  if not given:
    return []
  return [f"check empty_input: {given.get('documents_valid', given['documents_read'])} valid "
          f"of {given['documents_read']} records read, {given['files_matched']} files matched"
          + (" (--allow_empty_input)" if given["allow_empty_input"] else "")
          + f": {'holds' if given['holds'] else 'FAILS'}"]


def failed_check_reason(report: dict, name: str) -> str:
  """One sentence on why the check `name` of report["failed_checks"] failed."""
  checks = report["checks"]
  limit = report.get("max_failure_fraction", DEFAULT_MAX_FAILURE_FRACTION)
  if name == "originals":
    return "documents read != raw + tagged + dead letters before routing (records were lost)"
  if name == "annotate":
    return "documents read != labelled + dead letters (records were lost)"
  if name == "empty_input":
    given = checks["input"]
    if given["documents_read"]:
      return (f"none of the {given['documents_read']} records read is a valid document (each "
              f"is a dead letter of the read or validate stage: a wrong --text_field or "
              f"--id_field, or not the input meant); pass --allow_empty_input where that is "
              f"expected")
    found = ("the input pattern (--input) matched no file" if not given["files_matched"] else
             f"the {given['files_matched']} files the input pattern (--input) matched hold no "
             f"record")
    return (f"no record was read: {found}; pass --allow_empty_input where an empty input is "
            f"expected")
  if name == "score_failures":
    scoring = checks["scoring"]
    return (f"inference failed for {scoring['failures']} of {scoring['documents']} documents "
            f"given to the safety classifier (dead letters inference_error, stage score: a "
            f"broken model or worker), more than --max_failure_fraction={limit}")
  if name == "read_failures":
    reading = checks["read"]
    return (f"the read stage dead-lettered {reading['dead_lettered']} of "
            f"{reading['documents_read']} records, more than --max_failure_fraction={limit}")
  branch = name[:-len("_failures")] if name.endswith("_failures") else name
  entry = checks["generation"][branch]
  if name.endswith("_failures"):
    gate = entry.get("gate_failures", 0)
    return (f"{entry['failures']} of {entry['requests']} {branch} generation requests failed "
            f"(timeouts, HTTP or connection errors, malformed responses, failed batches"
            + (f"; {gate} of them in the safety gate's scoring, inference_error" if gate else "")
            + f"), more than --max_failure_fraction={limit}")
  return f"{branch}: requests != outputs + dead letters (records were lost)"
