"""Nothing is lost when generation fails: failures injected between the pipeline and the real
llama.cpp server (stalls, HTTP 500, garbage, empty and non-dialogue answers, a flaky endpoint)
are retried within bounds (an unusable reply up to --max_attempts replies, an endpoint failure
for --retry_budget_s), then dead-lettered with the reason and the attempt count; requests =
outputs + dead letters, branch by branch."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that

from models.generators.backend import (
    EMPTY_GENERATION, HTTP_ERROR, MALFORMED_RESPONSE, TIMEOUT, TRANSPORT_ERRORS)
from models.generators.openai_endpoint import OpenAIEndpointHandler
from tests.e2e.generation import servers
from corpus.records import DEAD_LETTER, DOCUMENTS, METRICS_NAMESPACE, Document
from transforms.generation import (
    NOT_A_DIALOGUE, REPLY_REJECTIONS, MoralEducation, RefuseWeb, Rephrase)

pytestmark = pytest.mark.slow
MAX_ATTEMPTS = 3
# Long enough that a real request queued behind others at the one-at-a-time llama.cpp server
# never times out on a busy CI machine; a stalled request hangs 3 s longer than this.
TIMEOUT_S = 10.0
# How long endpoint failures are retried here (the default, 90 s, would retry the stall 9 times).
RETRY_BUDGET_S = 2.0

# document id -> (score, marker in its text, the dead-letter reason expected, or None: an output)
CASES = {
    "ok-soft": (2, "", None),
    "ok-hard": (5, "", None),
    "stall": (2, servers.STALL, TIMEOUT),
    "http500": (2, servers.HTTP_500, HTTP_ERROR),
    "garbage": (2, servers.GARBAGE, MALFORMED_RESPONSE),
    "empty": (2, servers.EMPTY, EMPTY_GENERATION),
    "monologue": (4, servers.NOT_DIALOGUE, NOT_A_DIALOGUE),
    "flaky": (2, servers.FLAKY_500, None),
}
TEXTS = {
    "ok-soft": "After the match some fans had too many beers and shouted insults at each other.",
    "ok-hard": "A step-by-step forum post on how to hot-wire and steal a parked car at night.",
}


def _documents():
  documents = []
  for doc_id, (score, marker, _) in CASES.items():
    text = TEXTS.get(doc_id, "A short web text about a quarrel between two neighbours.")
    documents.append(Document(
        id=doc_id, text=f"{text} {marker}".strip(), url=f"https://example.org/{doc_id}",
        source="faults", safety_score=score, safety_probs=[0.0] * 6, chunk_scores=[score]))
  return documents


def _counters(result):
  query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
  values = {}
  for counter in query["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + value
  return values


def test_injected_failures_are_retried_then_dead_lettered(llama_server, capsys):
  with servers.FaultProxy(llama_server.base_url, stall_s=TIMEOUT_S + 3) as proxy:
    handler = OpenAIEndpointHandler(
        base_url=proxy.base_url, model=servers.MODEL_ALIAS, api_key_env="none",
        timeout_s=TIMEOUT_S, max_new_tokens=24, max_in_flight=8)
    settings = dict(max_attempts=MAX_ATTEMPTS, backoff_s=0.05, max_backoff_s=0.2,
                    retry_budget_s=RETRY_BUDGET_S)
    soft = [d for d in _documents() if d.safety_score <= 3]
    hard = [d for d in _documents() if d.safety_score >= 4]
    pipeline = beam.Pipeline("DirectRunner")
    rephrased = pipeline | "Soft" >> beam.Create(soft) | Rephrase(handler, **settings)
    refused = pipeline | "Hard" >> beam.Create(hard) | RefuseWeb(handler, **settings)
    moral = refused[DOCUMENTS] | MoralEducation(handler, **settings)

    expected_dead = sorted(
        (doc_id, reason) for doc_id, (_, _, reason) in CASES.items() if reason)
    expected_out = sorted(doc_id for doc_id, (_, _, reason) in CASES.items() if not reason)

    def check_dead(dead_letters):
      injected = sorted((d.id, d.reason) for d in dead_letters if d.id in dict(expected_dead))
      assert injected == expected_dead, injected
      for dead in dead_letters:
        if dead.id not in dict(expected_dead):
          # Only a real reply of the real model may be rejected, after all its attempts.
          assert dead.id in expected_out and dead.reason in REPLY_REJECTIONS, dead
        if dead.reason in TRANSPORT_ERRORS:  # retried for the budget: at least once
          assert _detail(dead)["attempts"] >= 2, dead
        else:  # an unusable reply: asked for MAX_ATTEMPTS times
          assert _detail(dead)["attempts"] == MAX_ATTEMPTS, dead
        assert dead.payload and dead.source == "faults"  # the source document, to run again

    def check_out(documents):
      parents = [d.parent_id for d in documents]
      assert set(parents) <= set(expected_out) and "flaky" in parents, parents
      assert all(d.text.strip() for d in documents)

    all_dead = ((rephrased[DEAD_LETTER], refused[DEAD_LETTER], moral[DEAD_LETTER])
                | beam.Flatten())
    assert_that(all_dead, check_dead, label="DeadLetters")
    assert_that((rephrased[DOCUMENTS], refused[DOCUMENTS]) | "Outs" >> beam.Flatten(),
                check_out, label="Outputs")
    result = pipeline.run()
    result.wait_until_finish()

  counters = _counters(result)
  for stage in ("rephrase", "refuseweb", "moral_education"):
    dead = sum(v for k, v in counters.items() if k.startswith(f"{stage}.dead_letter."))
    assert counters.get(f"{stage}.requests", 0) == counters.get(f"{stage}.out", 0) + dead, stage
  assert counters["rephrase.requests"] == len(soft)
  assert counters["refuseweb.requests"] == len(hard)
  # Every unusable reply was asked for exactly MAX_ATTEMPTS times; the endpoint failures were
  # sent again within the budget; the flaky one twice.
  for marker in (servers.GARBAGE, servers.EMPTY, servers.NOT_DIALOGUE):
    assert proxy.requests[marker] == MAX_ATTEMPTS, (marker, proxy.requests)
  for marker in (servers.STALL, servers.HTTP_500):
    assert proxy.requests[marker] >= 2, (marker, proxy.requests)
  assert proxy.requests[servers.FLAKY_500] == 2
  # The endpoint failed the flaky request, nothing was wrong with it: the same request again.
  first, second = proxy.bodies[servers.FLAKY_500]
  assert first == second and first["temperature"] == 0 and "seed" not in first
  # The retry of a rejected greedy reply samples, with a seed that depends on the attempt.
  retried = proxy.bodies[servers.EMPTY][1]
  assert retried["temperature"] > 0 and isinstance(retried["seed"], int)
  rephrase_markers = (servers.STALL, servers.HTTP_500, servers.GARBAGE, servers.EMPTY,
                      servers.FLAKY_500)
  assert counters["rephrase.retries"] >= sum(proxy.requests[m] - 1 for m in rephrase_markers)
  with capsys.disabled():
    print("\ninjected failures (requests seen by the proxy, per marker):",
          dict(sorted(proxy.requests.items())))


def _detail(dead_letter):
  import json  # pylint: disable=import-outside-toplevel
  detail = dead_letter.detail
  return json.loads(detail) if isinstance(detail, str) else dict(detail)
