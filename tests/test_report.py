"""The run's statistics as data: RunStatistics' one record, its bounded sources, and the checks
that build_report draws from it (nothing lost, nothing broken)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from transforms import report as run_report
from transforms.report import OTHER_SOURCES, RunStatistics, tally


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
