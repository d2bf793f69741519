"""An endpoint that restarts costs no document: a real HTTP server on 127.0.0.1 answers HTTP 503
and 429 in turn for its first seconds, then recovers. With the default retry settings every
request is answered once it is back, the waits reach the runner as throttled time (Beam's
`cumulativeThrottlingSeconds`, which Dataflow's autoscaler reads), and `generated_tokens` is the
sum of the completion tokens the server reported. The waits' jitter is unit-tested with a
seeded generator in tests/models/generators/test_backend.py."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to

from corpus.records import DEAD_LETTER, DOCUMENTS, Document
from models.generators.openai_endpoint import OPENAI_METRICS_NAMESPACE, OpenAIEndpointHandler
from tests.e2e.generation import servers
from transforms.generation import Rephrase

pytestmark = pytest.mark.slow
# Longer than the 1 s and 2 s waits of the three attempts that were all a request had.
OUTAGE_S = 6.0


def _counter(result, name: str, namespace: str | None = None) -> int:
  metrics = MetricsFilter().with_name(name)
  if namespace:
    metrics = metrics.with_namespace(namespace)
  counters = result.metrics().query(metrics)["counters"]
  return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)


def test_an_endpoint_restart_loses_nothing_and_is_reported_as_throttling():
  documents = [
      Document(id=f"doc-{i}", text=f"Page {i}: fans shout insults at each other after match {i}.",
               url=f"https://example.org/{i}", source="overload", safety_score=2,
               safety_probs=[0.0] * 6, chunk_scores=[2])
      for i in range(12)]
  with servers.ChatServer(outage_s=OUTAGE_S) as server:
    handler = OpenAIEndpointHandler(
        base_url=server.base_url, model=servers.MODEL_ALIAS, api_key_env="none",
        max_new_tokens=32, max_in_flight=4, timeout_s=10)
    pipeline = beam.Pipeline("DirectRunner")
    rephrased = pipeline | beam.Create(documents) | Rephrase(handler)  # the default retries
    assert_that(rephrased[DOCUMENTS] | beam.Map(lambda d: d.parent_id),
                equal_to([d.id for d in documents]), label="EveryDocument")
    assert_that(rephrased[DEAD_LETTER] | beam.Map(lambda d: (d.id, d.reason)), equal_to([]),
                label="NoDeadLetter")
    result = pipeline.run()
    result.wait_until_finish()

  assert server.outage_answers[503] > 0 and server.outage_answers[429] > 0, server.outage_answers
  assert server.completions == len(documents)  # each request answered once, after the outage
  assert _counter(result, "cumulativeThrottlingSeconds", OPENAI_METRICS_NAMESPACE) > 0
  tokens = _counter(result, "generated_tokens", OPENAI_METRICS_NAMESPACE)
  assert tokens == server.completion_tokens > 0, (tokens, server.completion_tokens)
