"""The vllm backend's request path against a real OpenAI-compatible server.

vLLM itself needs a GPU and is not installed here, so the server start step is replaced by the
llama.cpp server the other generation tests use (`use_running_server`, or an injected
`start_server` that Beam's MultiProcessShared hands to the worker's processes). Everything after
the start is the code `--generator=vllm` runs on a GPU worker: the handler built from the
pipeline's options, one request per prompt with `--request_timeout_s`, per-prompt seeds on
retries, `repetition_penalty`, reasons per request, partial success.
"""

from __future__ import annotations

import json
import re
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that

from beam_pipeline import pipeline as graph
from beam_pipeline.options import SafetyPretrainingOptions
from models.generators.backend import (
    REQUEST_REJECTED, TIMEOUT, Generation, RetryingGenerator, prompt_seed)
from models.generators.openai_endpoint import continues
from models.generators.prompts import KIND_REFUSEWEB, build_prompt
from models.generators.vllm_backend import VllmGeneratorHandler
from tests.e2e.generation import servers
from corpus.records import DEAD_LETTER, DOCUMENTS, Document
from transforms.generation import REPLY_REJECTIONS, Rephrase

pytestmark = pytest.mark.slow

# 6,000 CJK characters fit the prompt's character budget but not llama.cpp's 4,096-token context
# (SmolLM2's tokenizer spends a token or more per character): the long-CJK-page failure.
CJK_PAGE = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(5990))


def _vllm_handler(*argv: str) -> VllmGeneratorHandler:
  options = PipelineOptions([
      "--generator=vllm", f"--vllm_model={servers.MODEL_ALIAS}", *argv,
  ]).view_as(SafetyPretrainingOptions)
  handler = graph.generator_handler(options)
  assert isinstance(handler, VllmGeneratorHandler)
  return handler


def _detail(dead_letter) -> dict:
  return json.loads(dead_letter.detail)


def test_one_poisoned_request_costs_only_itself(llama_server):
  """A batch of four through Rephrase with the vllm backend: the one request the server refuses
  (HTTP 400, the CJK page over its context) is dead-lettered alone, with its reason and status,
  after one attempt; the other three are generated from the same batch."""
  texts = {
      "calm": "After the match some fans had too many beers and shouted at each other.",
      "garden": "Neighbours argued over a fence and called each other names.",
      "drive": "A driver cursed loudly at a cyclist at the traffic lights.",
      "cjk": f"{servers.TRACED} {CJK_PAGE}",
  }
  documents = [Document(id=key, text=text, source="poison", safety_score=2,
                        safety_probs=[0.0] * 6, chunk_scores=[2]) for key, text in texts.items()]
  with servers.FaultProxy(llama_server.base_url) as proxy:
    handler = _vllm_handler(
        "--max_new_tokens=24", "--generation_batch_size=4", "--repetition_penalty=1.3",
        "--request_timeout_s=120").use_running_server(proxy.base_url)
    pipeline = beam.Pipeline("DirectRunner")
    out = (pipeline | beam.Create(documents)
           | Rephrase(handler, max_attempts=3, backoff_s=0.05, max_backoff_s=0.1))

    def check_dead(dead_letters):
      transport = [(d.id, d.reason) for d in dead_letters if d.reason not in REPLY_REJECTIONS]
      assert transport == [("cjk", REQUEST_REJECTED)], transport
      [cjk] = [d for d in dead_letters if d.id == "cjk"]
      detail = _detail(cjk)
      assert detail["status"] == 400 and detail["attempts"] == 1, detail
      assert "context" in detail["error"], detail
      assert cjk.payload == texts["cjk"]  # the source document, to be run again

    def check_out(generated):
      parents = sorted(d.parent_id for d in generated)
      assert "cjk" not in parents and len(parents) >= 2, parents

    assert_that(out[DEAD_LETTER], check_dead, label="DeadLetters")
    assert_that(out[DOCUMENTS], check_out, label="Outputs")
    pipeline.run().wait_until_finish()
  # The 400 was final: the proxy saw the poisoned request once, with max_attempts=3.
  assert proxy.requests[servers.TRACED] == 1, proxy.requests
  for body in proxy.all_bodies:
    assert body["model"] == servers.MODEL_ALIAS
    assert body["repetition_penalty"] == 1.3 and body["max_tokens"] == 24


def test_stalled_request_times_out_after_request_timeout_s(llama_server):
  """A request the server never answers ends as generation_timeout after --request_timeout_s
  (not Beam's 600 s), and the request beside it in the batch is answered."""
  with servers.FaultProxy(llama_server.base_url, stall_s=60) as proxy:
    handler = _vllm_handler("--max_new_tokens=8", "--request_timeout_s=2").use_running_server(
        proxy.base_url)
    model = handler.load_model()
    retrying = RetryingGenerator(handler, max_attempts=1, retry_budget_s=0)  # one try
    start = time.monotonic()
    [stalled] = retrying.run_inference([[("user", f"Say hi. {servers.STALL}")]], model)
    elapsed = time.monotonic() - start
    assert stalled.inference.error == TIMEOUT, stalled.inference
    assert "2 s" in stalled.inference.detail
    assert 2.0 <= elapsed < 8.0, elapsed
    both = retrying.run_inference(
        [[("user", f"Say hi. {servers.STALL}")], [("user", "Name a colour.")]], model)
    assert [r.inference.error for r in both] == [TIMEOUT, ""], [r.inference for r in both]
    assert both[1].inference.text.strip()


def test_429_resends_the_same_request_and_a_rejected_reply_gets_a_seed_per_prompt(llama_server):
  """A rate-limited request (429) is sent again as it was: greedy, no seed (the endpoint was
  busy, nothing was wrong with the request, and an outage must not change the output). A reply
  that is rejected (here empty) is asked for again by sampling with a seed fixed by its own
  prompt and the attempt, so two prompts retried together get different seeds (Beam's handler
  gave every prompt of a batch the same one)."""
  busy = [[("user", f"Name a fruit. {servers.FLAKY_429}")],
          [("user", f"Name a tree. {servers.FLAKY_429}")]]
  empty = [[("user", f"Name a bird. {servers.EMPTY}")],
           [("user", f"Name a fish. {servers.EMPTY}")]]
  with servers.FaultProxy(llama_server.base_url) as proxy:
    handler = _vllm_handler("--max_new_tokens=8", "--retry_temperature=0.7").use_running_server(
        proxy.base_url)
    results = RetryingGenerator(
        handler, lambda text: None if text.strip() else "empty_generation", max_attempts=2,
        backoff_s=0.05).run_inference(busy + empty, handler.load_model())
  outcomes = [r.inference for r in results]
  assert all(not g.error and g.attempts == 2 for g in outcomes[:2]), outcomes
  assert all(g.error == "empty_generation" and g.attempts == 2 for g in outcomes[2:]), outcomes
  for prompt in busy:
    first, second = [b for b in proxy.bodies[servers.FLAKY_429]
                     if b["messages"][-1]["content"] == prompt[0][1]]
    assert first == second and first["temperature"] == 0 and "seed" not in first
  retries = [b for b in proxy.bodies[servers.EMPTY] if b.get("seed") is not None]
  by_prompt = {b["messages"][-1]["content"]: b["seed"] for b in retries}
  assert len(by_prompt) == 2 and all(b["temperature"] == 0.7 for b in retries)
  for prompt in empty:
    assert by_prompt[prompt[0][1]] == prompt_seed(prompt, attempt=2, bits=31)


class ServerAt:
  """An OpenAI-compatible server that is already up, in the shape of Beam's _VLLMModelServer
  (get_server_port, check_connectivity)."""

  def __init__(self, port: int):
    self.port = port

  def get_server_port(self) -> int:
    return self.port

  def check_connectivity(self, *args, **kwargs) -> None:
    pass


class StartServerAt:
  """A start step for tests, in place of BeamVllmServer: "starts" the server at `port`."""

  def __init__(self, port: int):
    self.port = port

  def __call__(self) -> ServerAt:
    return ServerAt(self.port)

  def tag(self) -> str:
    return f"safety_pretraining_test_server_{self.port}"


def test_injected_server_start_is_shared_across_processes(llama_server):
  """The start step is replaceable: an injected starter runs behind Beam's MultiProcessShared
  (one server per worker machine), the client connects at the port it reports, and prompts
  with a reply opening carry vLLM's continue_final_message. llama.cpp, standing in for vLLM
  here, ignores it and answers afresh: the answer is kept whole, never glued onto the opening."""
  handler = VllmGeneratorHandler(
      servers.MODEL_ALIAS, max_new_tokens=32, timeout_s=120,
      start_server=StartServerAt(llama_server.port))
  model = handler.load_model()
  assert model.port == llama_server.port and model.server is not None
  prompts = [[("user", "Name a colour.")],
             build_prompt(KIND_REFUSEWEB, "How to pick the lock of a neighbour's door.")]
  results = list(RetryingGenerator(handler, max_attempts=1).run_inference(prompts, model))
  generations = [r.inference for r in results]
  assert all(isinstance(g, Generation) and not g.error and g.text for g in generations), generations
  text = generations[1].text
  assert not continues("User:", text)  # kept as the model wrote it
  assert not re.match(r"User:\S", text), text
