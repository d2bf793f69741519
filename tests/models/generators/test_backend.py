"""RetryingGenerator's two budgets, without a server or real waits: a clock that only counts
stands in for time, and a scripted endpoint fails by that clock. The same behaviour against a
real HTTP server is in tests/e2e/generation/test_endpoint_overload.py."""

from __future__ import annotations

import pickle
import random

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.testing.util import assert_that

from models.generators import backend
from models.generators.backend import (
    CONNECTION_ERROR, EMPTY_GENERATION, HTTP_ERROR, Generation, RetryingGenerator)

BASE, CAP = 1.0, 30.0


def test_backoff_draws_decorrelated_jitter_from_a_seeded_rng():
  def waits(seed, count=25):
    rng, previous, drawn = random.Random(seed), 0.0, []
    for _ in range(count):
      previous = backend.backoff_seconds(previous, BASE, CAP, rng)
      drawn.append(previous)
    return drawn

  first = waits(7)
  assert first == waits(7)  # the same seed, the same waits
  assert first != waits(8)  # another worker, other waits
  previous = BASE
  for wait in first:
    assert BASE <= wait <= CAP
    assert wait <= 3 * previous  # at most three times the previous wait
    previous = wait
  assert CAP in first  # it grows up to the cap, and stays bounded by it
  # The first wait is spread over [base, 3 base], not the same on every worker.
  starts = [backend.backoff_seconds(0.0, BASE, CAP, random.Random(seed)) for seed in range(200)]
  assert min(starts) < 1.2 * BASE and max(starts) > 2.8 * BASE
  assert len(set(starts)) == len(starts)
  # Never below the floor, even when asked for no wait at all.
  assert backend.backoff_seconds(0.0, 0.0, 0.0, random.Random(1)) == backend.MIN_BACKOFF_S


class CountingClock:
  """Time that moves only when something sleeps (or a request takes `request_s`)."""

  def __init__(self):
    self.now = 0.0
    self.waits: list[float] = []

  def time(self) -> float:
    return self.now

  def sleep(self, seconds: float) -> None:
    self.waits.append(seconds)
    self.now += seconds


class ScriptedEndpoint(ModelHandler):
  """Answers HTTP 503 while its clock is inside an outage (or always for a prompt named in
  `always_fails`), else `reply`; records (prompt, attempt, time) of every request."""

  def __init__(self, clock: CountingClock, outages=((0.0, 60.0),), reply="a reply",
               always_fails=(), request_s=0.0):
    super().__init__()
    self.clock = clock
    self.outages = list(outages)
    self.reply = reply
    self.always_fails = set(always_fails)
    self.request_s = request_s
    self.requests: list[tuple[str, int, float]] = []

  def load_model(self):
    return None

  def down(self) -> bool:
    return any(start <= self.clock.now < end for start, end in self.outages)

  def run_inference(self, batch, model, inference_args=None):
    attempt = (inference_args or {}).get("attempt", 1)
    down = self.down()
    results = []
    for prompt in batch:
      self.requests.append((prompt, attempt, self.clock.now))
      if down or prompt in self.always_fails:
        generation = Generation("", HTTP_ERROR, "HTTP 503: restarting", status=503)
      else:
        generation = Generation(self.reply)
      results.append(PredictionResult(prompt, generation))
    self.clock.now += self.request_s
    return results

  def tries(self, prompt) -> int:
    return sum(1 for sent, _, _ in self.requests if sent == prompt)


def _retrying(endpoint: ScriptedEndpoint, **settings) -> RetryingGenerator:
  settings.setdefault("backoff_s", BASE)
  settings.setdefault("max_backoff_s", CAP)
  return RetryingGenerator(endpoint, clock=endpoint.clock, **settings)


def test_a_minute_long_restart_is_ridden_out_whatever_the_jitter_draws():
  """An endpoint down for 60 s from the first request: with the default budget (90 s) and cap
  (30 s) every prompt gets its reply, each resent as the same attempt (nothing was wrong with
  the request), every wait within [base, cap]. Fifty runs, fifty different draws."""
  for _ in range(50):
    clock = CountingClock()
    endpoint = ScriptedEndpoint(clock, outages=[(0.0, 60.0)])
    results = _retrying(endpoint).run_inference(["a", "b", "c"], None)
    generations = [r.inference for r in results]
    assert all(g.error == "" and g.text == "a reply" for g in generations), generations
    assert all(g.attempts == endpoint.tries(p) > 1 for p, g in zip("abc", generations))
    assert {attempt for _, attempt, _ in endpoint.requests} == {1}
    assert 60.0 <= sum(clock.waits) <= backend.DEFAULT_RETRY_BUDGET_S
    assert all(BASE <= wait <= CAP for wait in clock.waits), clock.waits


def test_a_slow_failure_is_retried_from_the_time_it_failed():
  """A request that fails after its timeout (120 s, longer than the budget) is still sent
  again: the budget counts from the failure, not from the request."""
  clock = CountingClock()
  endpoint = ScriptedEndpoint(clock, outages=[(0.0, 120.0)], request_s=120.0)
  [result] = _retrying(endpoint).run_inference(["slow"], None)
  assert result.inference.error == "" and result.inference.attempts == 2


def test_rejected_replies_are_asked_for_again_at_once_up_to_max_attempts():
  clock = CountingClock()
  endpoint = ScriptedEndpoint(clock, outages=[], reply="")
  [result] = _retrying(endpoint, check=lambda text: None if text else EMPTY_GENERATION,
                       max_attempts=3).run_inference(["p"], None)
  assert result.inference.error == EMPTY_GENERATION and result.inference.attempts == 3
  assert [attempt for _, attempt, _ in endpoint.requests] == [1, 2, 3]  # the next reply each
  assert clock.waits == []  # quality retries never wait


def test_an_endpoint_failure_then_a_rejected_reply_asks_for_the_next_attempt():
  clock = CountingClock()
  endpoint = ScriptedEndpoint(clock, outages=[(0.0, 5.0)], reply="")
  retrying = _retrying(endpoint, check=lambda text: None if text else EMPTY_GENERATION,
                       max_attempts=2)
  [result] = retrying.run_inference(["p"], None)
  attempts = [attempt for _, attempt, _ in endpoint.requests]
  assert attempts[-2:] == [1, 2] and set(attempts[:-2]) <= {1}, attempts
  assert result.inference.error == EMPTY_GENERATION
  assert result.inference.attempts == len(attempts)  # every request sent, counted


def test_a_prompt_the_endpoint_always_fails_ends_within_its_budget():
  """One prompt the endpoint fails (an HTTP 500 for that prompt only) while it answers the
  others: the others are answered at once; the failing one is retried for the budget, then
  reported with its reason and the requests sent, never lost and never retried forever."""
  clock = CountingClock()
  endpoint = ScriptedEndpoint(clock, outages=[], always_fails={"poison"})
  results = _retrying(endpoint, retry_budget_s=20.0).run_inference(
      ["ok", "poison", "fine"], None)
  outcome = {r.example: r.inference for r in results}
  assert outcome["ok"].attempts == outcome["fine"].attempts == 1
  assert outcome["poison"].error == HTTP_ERROR and outcome["poison"].status == 503
  assert outcome["poison"].attempts == endpoint.tries("poison") > 1
  last_try = max(at for prompt, _, at in endpoint.requests if prompt == "poison")
  assert last_try <= 20.0 and sum(clock.waits) <= 20.0


def test_an_outage_longer_than_the_budget_fails_fast_until_the_endpoint_answers():
  """The endpoint is down for 1000 s: the first batch is retried for the budget and then
  reported; the batches after it are sent once each (one budget per worker thread, not one per
  batch); once the endpoint answers, a new outage is ridden out again."""
  clock = CountingClock()
  endpoint = ScriptedEndpoint(clock, outages=[(0.0, 1000.0), (2000.0, 2030.0)])
  retrying = _retrying(endpoint)
  first = retrying.run_inference(["a1", "a2"], None)
  assert all(r.inference.error == HTTP_ERROR and r.inference.attempts > 1 for r in first)
  assert sum(clock.waits) <= backend.DEFAULT_RETRY_BUDGET_S
  clock.now, waited = 95.0, len(clock.waits)  # later in the outage, past the budget
  second = retrying.run_inference(["b1", "b2"], None)
  assert [r.inference.attempts for r in second] == [1, 1]
  assert len(clock.waits) == waited  # no more waits while the outage lasts
  clock.now = 1500.0  # the endpoint is back
  assert [r.inference.error for r in retrying.run_inference(["c"], None)] == [""]
  clock.now = 2000.0  # down again, for 30 s: ridden out again
  [late] = retrying.run_inference(["d"], None)
  assert late.inference.error == "" and late.inference.attempts > 1


def test_no_budget_no_endpoint_retries():
  clock = CountingClock()
  endpoint = ScriptedEndpoint(clock, outages=[(0.0, 60.0)])
  [result] = _retrying(endpoint, retry_budget_s=0).run_inference(["p"], None)
  assert result.inference.error == HTTP_ERROR and result.inference.attempts == 1
  assert clock.waits == []


def test_each_worker_draws_its_own_waits():
  """A pickled RetryingGenerator carries no random state: two workers unpickling the same
  handler do not wait in lockstep after a shared outage."""
  clock = CountingClock()
  handler = _retrying(ScriptedEndpoint(clock, outages=[(0.0, 60.0)]))
  handler.run_inference(["warm"], None)  # the launcher's copy has drawn already
  draws = []
  for _ in range(2):
    worker = pickle.loads(pickle.dumps(handler))
    worker.backend.clock.now, worker.backend.clock.waits = 0.0, []
    worker.backend.outages = [(0.0, 60.0)]
    worker.run_inference(["p"], None)
    draws.append(worker.backend.clock.waits)
  assert draws[0] != draws[1], draws


def _pipeline_counter(result, name: str) -> int:
  counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
  return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)


def test_waits_on_the_endpoint_reach_the_runner_as_throttled_time():
  """Through RunInference on the DirectRunner: the waits of a 60 s outage (on the counting
  clock, which travels with the handler) are reported as Beam's throttling counter
  `cumulativeThrottlingSeconds`, counted in the bundle's thread, in whole seconds."""
  clock = CountingClock()
  handler = _retrying(ScriptedEndpoint(clock, outages=[(0.0, 60.0)]))
  pipeline = beam.Pipeline("DirectRunner")
  results = (pipeline | beam.Create(["x", "y"]) | RunInference(handler)
             | beam.Map(lambda r: (r.example, r.inference.error)))

  def all_answered(pairs):
    assert sorted(pairs) == [("x", ""), ("y", "")], pairs

  assert_that(results, all_answered)
  result = pipeline.run()
  result.wait_until_finish()
  throttled = _pipeline_counter(result, "cumulativeThrottlingSeconds")
  # One outage per copy of the handler (each bundle thread has its own): one or two batches.
  assert 60 <= throttled <= 2 * backend.DEFAULT_RETRY_BUDGET_S, throttled


def test_a_connection_error_is_an_endpoint_failure_too():
  class Refused(ScriptedEndpoint):
    def run_inference(self, batch, model, inference_args=None):
      return [PredictionResult(p, Generation("", CONNECTION_ERROR, "refused")
                               if self.down() else Generation("up")) for p in batch]

  clock = CountingClock()
  [result] = _retrying(Refused(clock, outages=[(0.0, 10.0)])).run_inference(["p"], None)
  assert result.inference.text == "up" and result.inference.attempts > 1
