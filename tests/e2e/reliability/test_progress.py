"""Progress: documents scored and documents/s, logged at a steady interval and kept as metrics."""

from __future__ import annotations

import logging
import re

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from corpus.records import METRICS_NAMESPACE
from transforms.progress import LOGGER_NAME, LogProgress, _ProgressFn


class _Clock:
  """A clock that advances a quarter of a second per reading."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    self.now += 0.25
    return self.now


def test_progress_lines_at_the_interval_and_metrics(caplog):
  caplog.set_level(logging.INFO, logger=LOGGER_NAME)
  pipeline = test_pipeline.TestPipeline()
  passed = (
      pipeline
      | beam.Create(list(range(40)), reshuffle=False)
      | beam.ParDo(_ProgressFn("scored", interval_s=2.0, clock=_Clock())))
  assert_that(passed, equal_to(list(range(40))))
  result = pipeline.run()
  result.wait_until_finish()

  lines = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
  # 40 elements a quarter second apart, a line every 2 s: every 8th element.
  assert len(lines) == 5, lines
  totals = [int(re.search(r"progress: (\d+) documents scored", line).group(1)) for line in lines]
  assert totals == [8, 16, 24, 32, 40]
  assert all("4.0 documents/s over the last 2 s" in line for line in lines), lines

  metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
  gauges = {g.key.metric.name: g.committed.value for g in metrics["gauges"]}
  assert counters["progress.documents_scored"] == 40
  assert gauges["progress.documents_per_second"] == 4


def test_log_progress_passes_everything_through_without_logging_at_interval_zero(caplog):
  caplog.set_level(logging.INFO, logger=LOGGER_NAME)
  with test_pipeline.TestPipeline() as pipeline:
    passed = pipeline | beam.Create(["a", "b", "c"]) | LogProgress("scored", interval_s=0)
    assert_that(passed, equal_to(["a", "b", "c"]))
  assert not [r for r in caplog.records if r.name == LOGGER_NAME]


def test_the_pipeline_counts_every_scored_document(bad_input_run):
  _, _, report = bad_input_run
  assert report["documents_scored"] == report["documents_valid"] - 3  # three duplicate ids
  assert report["documents_scored"] == sum(report["per_score"].values())
