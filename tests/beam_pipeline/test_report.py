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


def test_empty_statistics_give_one_report_whose_checks_hold():
  with beam.Pipeline("DirectRunner") as pipeline:
    report = (pipeline | beam.Create([]).with_output_types(run_report.Tally)
              | RunStatistics() | beam.Map(run_report.build_report))
    assert_that(report | beam.Map(lambda r: (r["documents_read"], r["checks_hold"])),
                equal_to([(0, True)]))


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
