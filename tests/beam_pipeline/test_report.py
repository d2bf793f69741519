"""The run's statistics as data: RunStatistics' one record, its bounded sources, and the checks
that build_report draws from it (nothing lost, nothing broken)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline import report as run_report
from beam_pipeline.report import OTHER_SOURCES, RunStatistics, tally


def test_run_statistics_keep_the_largest_sources_and_sum_the_rest_as_other():
  # source-k has k documents scored 2 in raw; only the 3 largest keep their name.
  tallies = [tally("card.score.raw.2", source=f"source-{k:02d}")
             for k in range(1, 26) for _ in range(k)]
  tallies += [tally("write.raw", 5), tally("write.raw", 7)]
  with beam.Pipeline("DirectRunner") as pipeline:
    record = pipeline | beam.Create(tallies) | RunStatistics(top_sources=3)
    expected = {
        "card.score.raw.2.source-25": 25, "card.score.raw.2.source-24": 24,
        "card.score.raw.2.source-23": 23,
        f"card.score.raw.2.{OTHER_SOURCES}": sum(range(1, 23)),
        "write.raw": 12}
    assert_that(record, equal_to([expected]))


def test_empty_statistics_give_one_report_that_fails_empty_input_unless_allowed():
  """A run that read nothing gives one report too; its empty_input check fails, and holds only
  where an empty input was allowed (--allow_empty_input)."""
  with beam.Pipeline("DirectRunner") as pipeline:
    statistics = (pipeline | beam.Create([]).with_output_types(run_report.Tally)
                  | RunStatistics())
    verdicts = [
        statistics | f"Report{allow}{mode}" >> beam.Map(
            run_report.build_report, 0.5, mode, allow)
        | f"Verdict{allow}{mode}" >> beam.Map(
            lambda r: (r.get("mode", "curate"), r["documents_read"], r["checks_hold"],
                       r["failed_checks"]))
        for allow in (False, True) for mode in ("curate", "annotate")]
    assert_that(verdicts | beam.Flatten(), equal_to([
        ("curate", 0, False, ["empty_input"]), ("annotate", 0, False, ["empty_input"]),
        ("curate", 0, True, []), ("annotate", 0, True, [])]))


def test_the_empty_input_reason_says_whether_any_file_matched():
  report = run_report.build_report({})
  assert "matched no file" in run_report.failed_check_reason(report, "empty_input")
  assert "--allow_empty_input" in run_report.failed_check_reason(report, "empty_input")
  report = run_report.build_report({"read.files_matched": 2})
  assert report["checks"]["input"] == {"files_matched": 2, "documents_read": 0,
                                       "documents_valid": 0, "allow_empty_input": False,
                                       "holds": False}
  assert "the 2 files the input pattern (--input) matched hold no record" in (
      run_report.failed_check_reason(report, "empty_input"))
  assert "FAILED check empty_input" in run_report.summary(report)
  annotate = run_report.build_report({}, mode="annotate")
  assert "FAILED check empty_input" in run_report.summary(annotate)


def test_scoring_that_loses_most_documents_to_failed_inference_fails():
  counts = {"read.documents.valid": 10, "progress.documents_scored": 4, "write.raw": 4,
            "score.dead_letter.inference_error": 6}
  report = run_report.build_report(counts)
  assert report["checks"]["originals"]["holds"]  # nothing lost: every failure is a dead letter
  assert report["failed_checks"] == ["score_failures"]
  assert report["checks"]["scoring"] == {"documents": 10, "failures": 6, "fraction": 0.6,
                                         "max_fraction": 0.5, "holds": False}
  assert "inference failed for 6 of 10 documents" in run_report.failed_check_reason(
      report, "score_failures")
  assert "FAILED check score_failures" in run_report.summary(report)
  assert run_report.build_report(counts, max_failure_fraction=0.6)["checks_hold"]


def test_the_safety_gates_failed_inference_counts_as_its_branchs_failures():
  counts = _counts(requests=10, failed=0, unsafe=2)
  counts["write.safeweb"] = 2
  counts["gate_safeweb.dead_letter.inference_error"] = 6
  report = run_report.build_report(counts)
  entry = report["checks"]["generation"]["safeweb"]
  assert entry["balanced"], entry
  assert (entry["failures"], entry["gate_failures"], entry["rejected_by_gate"]) == (6, 6, 2)
  assert report["failed_checks"] == ["safeweb_failures"]
  assert "6 of them in the safety gate's scoring" in run_report.failed_check_reason(
      report, "safeweb_failures")


def _counts(requests: int, failed: int, unsafe: int, read: int = 10, unreadable: int = 0):
  counts = {"read.documents.valid": read, "write.raw": read, "rephrase.requests": requests,
            "write.safeweb": requests - failed - unsafe}
  if failed:
    counts["rephrase.dead_letter.generation_connection_error"] = failed
  if unsafe:
    counts["gate_safeweb.dead_letter.still_unsafe"] = unsafe
  if unreadable:
    counts["read.dead_letter.invalid_json"] = unreadable
  return counts


def test_a_branch_that_loses_most_requests_to_failures_fails_its_check():
  report = run_report.build_report(_counts(requests=10, failed=6, unsafe=0))
  assert not report["checks_hold"]
  assert report["failed_checks"] == ["safeweb_failures"]
  entry = report["checks"]["generation"]["safeweb"]
  assert entry["balanced"] and entry["failures"] == 6 and entry["failure_fraction"] == 0.6
  assert "6 of 10 safeweb generation requests failed" in run_report.failed_check_reason(
      report, "safeweb_failures")
  assert "FAILED check safeweb_failures" in run_report.summary(report)
  # At the limit it holds; a stricter limit fails a smaller loss.
  assert run_report.build_report(_counts(10, 5, 0))["checks_hold"]
  assert not run_report.build_report(_counts(10, 2, 0), max_failure_fraction=0.1)["checks_hold"]


def test_texts_rejected_for_their_content_are_no_failure():
  report = run_report.build_report(_counts(requests=10, failed=0, unsafe=10))
  assert report["checks_hold"], report["failed_checks"]
  assert report["checks"]["generation"]["safeweb"]["rejected_by_gate"] == 10


def test_a_read_stage_that_dead_letters_most_records_fails():
  report = run_report.build_report(_counts(requests=0, failed=0, unsafe=0, read=4, unreadable=6))
  assert report["failed_checks"] == ["read_failures"]
  assert "dead-lettered 6 of 10 records" in run_report.failed_check_reason(report, "read_failures")


def test_quality_reviews_become_pass_rates_per_branch_and_style():
  import json
  from beam_pipeline.report import review_tallies
  from transforms.quality_samples import QualityReview
  from beam_pipeline.report_card import render
  reviews = [
      # failed the preamble check, then passed after a cut: passed, not at the first attempt
      QualityReview("safeweb", "textbook", "a", "src", "out", "",
                    json.dumps([{"failed": ["preamble"], "cuts": []},
                                {"failed": [], "cuts": ["preamble"]}])),
      QualityReview("safeweb", "textbook", "b", "src", "out", "",
                    json.dumps([{"failed": [], "cuts": []}])),
      # never passed: truncated twice; and a transport failure that was never reviewed
      QualityReview("safeweb", "podcast", "c", "src", "out", "quality_truncation",
                    json.dumps([{"failed": ["truncation", "repetition"], "cuts": []}] * 2)),
      QualityReview("refuseweb", "", "d", "src", "", "generation_timeout",
                    json.dumps([{"error": "generation_timeout"}])),
  ]
  counters = {}
  for review in reviews:
    for name, _, n in review_tallies(review):
      counters[name] = counters.get(name, 0) + n
  report = run_report.build_report(counters)
  textbook = report["quality"]["safeweb"]["textbook"]
  assert (textbook["requests"], textbook["passed"], textbook["passed_first_attempt"]) == (2, 2, 1)
  assert textbook["reviewed"] == 3 and textbook["cuts"] == {"preamble": 1}
  assert textbook["checks"]["preamble"] == {"failed": 1, "pass_rate": round(2 / 3, 4)}
  assert textbook["checks"]["off_topic"]["pass_rate"] == 1.0
  podcast = report["quality"]["safeweb"]["podcast"]
  assert podcast["pass_rate"] == 0.0 and podcast["checks"]["truncation"]["pass_rate"] == 0.0
  refuse = report["quality"]["refuseweb"]["all"]
  assert refuse["reviewed"] == 0 and refuse["checks"]["refuseweb_structure"]["pass_rate"] is None
  assert "quality safeweb/podcast: 0 of 1 passed every check" in run_report.summary(report)
  page = render(dict(report, quality_samples={"safeweb": {
      "passed": [{"id": "a", "style": "textbook", "reason": "", "source": "<src>",
                  "output": "out"}],
      "rejected": [{"id": "c", "style": "podcast", "reason": "quality_truncation",
                    "source": "src", "output": "cut off"}]}}))
  assert 'data-figure="quality/safeweb/textbook/checks/preamble/pass_rate"' in page
  assert 'data-verdict="rejected"' in page and "quality_truncation" in page
  assert "&lt;src&gt;" in page
