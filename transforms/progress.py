"""Progress of a long run: documents scored and documents/s, in the log and as Beam metrics.

`LogProgress` passes its records through unchanged. Each worker counts what it saw and, at most
once per interval, logs a line with its total and its rate over the interval and since it began.
The same figures are Beam metrics (a counter `<stage>.documents_scored` and the gauge
`<stage>.documents_per_second`, in the pipeline's metrics namespace), so Flink's and Dataflow's
UIs show them while the job runs. The counter is incremented in batches, at each log line and at
the end of a bundle, to stay cheap per element.
"""

from __future__ import annotations

import logging
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from corpus.records import METRICS_NAMESPACE

LOGGER_NAME = "safety_pretraining.progress"
STAGE_PROGRESS = "progress"
_LOGGER = logging.getLogger(LOGGER_NAME)


class _ProgressFn(beam.DoFn):
  """Counts the elements that pass; logs and publishes the figures every `interval_s`."""

  def __init__(self, what: str, interval_s: float, clock=time.monotonic):
    super().__init__()
    self._what = what
    self._interval_s = interval_s
    self._clock = clock
    self._counter = Metrics.counter(METRICS_NAMESPACE, f"{STAGE_PROGRESS}.documents_{what}")
    self._rate = Metrics.gauge(METRICS_NAMESPACE, f"{STAGE_PROGRESS}.documents_per_second")
    self._total = 0
    self._uncounted = 0
    self._started = 0.0
    self._last_time = 0.0
    self._last_total = 0

  def setup(self):
    self._started = self._last_time = self._clock()

  def process(self, element):
    self._total += 1
    self._uncounted += 1
    if self._interval_s > 0:
      now = self._clock()
      if now - self._last_time >= self._interval_s:
        self._report(now)
    yield element

  def finish_bundle(self):
    self._flush()

  def _flush(self):
    if self._uncounted:
      self._counter.inc(self._uncounted)
      self._uncounted = 0

  def _report(self, now: float) -> None:
    self._flush()
    interval_rate = (self._total - self._last_total) / max(now - self._last_time, 1e-9)
    overall_rate = self._total / max(now - self._started, 1e-9)
    self._rate.set(int(round(interval_rate)))
    _LOGGER.info(
        "progress: %d documents %s by this worker, %.1f documents/s over the last %.0f s, "
        "%.1f documents/s since it began", self._total, self._what, interval_rate,
        now - self._last_time, overall_rate)
    self._last_time = now
    self._last_total = self._total


class LogProgress(beam.PTransform):
  """Passes records through; logs `documents <what>` and documents/s every `interval_s` seconds.

  Args:
    what: the verb in the log line and counter name (`progress.documents_<what>`).
    interval_s: seconds between log lines per worker; 0 logs none (the counter still counts).
  """

  def __init__(self, what: str = "scored", interval_s: float = 60.0):
    super().__init__()
    self._what = what
    self._interval_s = interval_s

  def expand(self, records):
    return records | "CountProgress" >> beam.ParDo(
        _ProgressFn(self._what, self._interval_s)).with_output_types(records.element_type)
