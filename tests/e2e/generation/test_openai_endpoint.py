"""The `openai` backend against a real OpenAI-compatible server: llama.cpp's, on 127.0.0.1,
serving the same SmolLM2 GGUF as the local backend."""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import pickle

import pytest

from beam_pipeline import run as entry
from beam_pipeline.options import SAMPLE_INPUT
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from models.generators.backend import REQUEST_REJECTED, Generation, RetryingGenerator
from models.generators.openai_endpoint import (
    CONTINUE_FINAL_MESSAGE, MissingApiKeyError, OpenAIEndpointHandler)
from models.generators.prompts import KIND_REFUSEWEB, KIND_REPHRASE, build_prompt
from tests.e2e.generation import servers
from tests.e2e.generation.servers import MODEL_ALIAS
from corpus.records import Document
from transforms.generation import Rephrase

pytestmark = pytest.mark.slow
GENERATED = ("safeweb", "refuseweb", "moral_education")


def _handler(base_url, **settings):
  settings.setdefault("max_new_tokens", 40)
  settings.setdefault("api_key_env", "none")  # llama_server has no authentication
  return OpenAIEndpointHandler(base_url=base_url, model=MODEL_ALIAS, **settings)


def test_endpoint_handler_generates_and_keeps_fresh_answers_whole(llama_server):
  handler = _handler(llama_server.base_url, max_in_flight=3)
  endpoint = handler.load_model()
  prompts = [
      build_prompt(KIND_REPHRASE, "People argue loudly about football after a few beers.",
                   "podcast"),
      build_prompt(KIND_REFUSEWEB, "A forum post on how to break into a neighbour's car."),
      [{"role": "user", "content": "Name three fruits."}],
  ]
  results = list(handler.run_inference(prompts, endpoint))
  assert [r.example for r in results] == prompts
  generations = [r.inference for r in results]
  assert all(isinstance(g, Generation) and not g.error and g.text.strip() for g in generations)
  # llama.cpp ignores the prefill fields and answers afresh: the answers are kept as written,
  # never glued onto the opening ("...talking aboutHost 2:")
  for prompt, generation in zip(prompts[:2], generations):
    opening = prompt[-1]["content"]
    if generation.text.startswith(opening):
      rest = generation.text[len(opening):]
      assert not rest or not (rest[0].isalnum() or rest[0] in "#*"), generation.text
  assert all(g.attempts == 1 for g in generations)


def test_wrong_api_key_is_rejected_once_not_retried(keyed_llama_server, monkeypatch):
  """401 is the server refusing the request as it is: final after one attempt, with its
  status, not retried with backoff as if transient."""
  monkeypatch.setenv("SP_WRONG_KEY", "sk-not-the-key")
  handler = _handler(keyed_llama_server.base_url, api_key_env="SP_WRONG_KEY")
  [result] = RetryingGenerator(handler, max_attempts=3, backoff_s=5.0).run_inference(
      [[("user", "hello")]], handler.load_model())
  assert result.inference.error == REQUEST_REJECTED
  assert result.inference.status == 401 and "401" in result.inference.detail
  assert result.inference.attempts == 1


def test_missing_key_variable_fails_at_load_with_one_clear_error(
    keyed_llama_server, monkeypatch):
  """The variable named by --openai_api_key_env is not set where the model loads: load_model
  fails, naming the variable and the keyless option, before any request (before: the key
  silently became "unused" and every request got 401). In a pipeline the run fails with it."""
  monkeypatch.delenv("SP_ABSENT_KEY", raising=False)
  handler = _handler(keyed_llama_server.base_url, api_key_env="SP_ABSENT_KEY")
  with pytest.raises(MissingApiKeyError, match=r"SP_ABSENT_KEY .*--openai_api_key_env=none"):
    handler.load_model()
  pipeline = beam.Pipeline("DirectRunner")
  _ = (pipeline | beam.Create([Document(id="d", text="A quarrel.", safety_score=2)])
       | Rephrase(handler, max_attempts=1))
  with pytest.raises(Exception, match="SP_ABSENT_KEY") as raised:
    pipeline.run().wait_until_finish()
  assert "--openai_api_key_env=none" in str(raised.value)


def test_a_server_that_ignores_the_prefill_fields_gets_them_and_its_answers_stay_whole(
    llama_server):
  """llama.cpp's server takes vLLM's prefill fields and ignores them: it answers afresh.
  `auto` keeps sending them with the opening (the opening in the prompt still steers the answer:
  dropping it took llama.cpp's rephrasings passing every check from 33% to 18% in
  benchmarks/generation_quality.py), and each fresh answer is kept as written, never glued onto
  the opening ("...talking aboutHost 2:")."""
  fields = tuple(CONTINUE_FINAL_MESSAGE)
  with servers.FaultProxy(llama_server.base_url) as proxy:
    handler = _handler(proxy.base_url, max_in_flight=1, max_new_tokens=16)
    model = handler.load_model()
    prompts = [build_prompt(KIND_REPHRASE, f"Fans argue about match {i} after a few beers.",
                            "podcast") for i in range(4)]
    results = list(handler.run_inference(prompts, model))
    assert all(not r.inference.error and r.inference.text for r in results)
    assert not any("aboutHost" in r.inference.text for r in results)
    carried = [any(f in body for f in fields) for body in proxy.all_bodies]
    assert carried == [True] * 4, carried
    assert all(body["messages"][-1]["role"] == "assistant" for body in proxy.all_bodies)
    assert model.prefill.mode == "continue"
    opening = prompts[0][-1]["content"]
    for result in results:  # each reply is the model's fresh answer, whole
      text = result.inference.text
      assert not text.startswith(opening) or not text[len(opening):][:1].isalnum(), text


def _refusal_prompts(n: int):
  return [build_prompt(KIND_REFUSEWEB, f"Forum post {i}: how to break into a car.")
          for i in range(n)]


def test_prefill_auto_falls_back_once_per_worker(llama_server, caplog):
  """A hosted API that rejects vLLM's prefill fields (HTTP 400 on unknown fields): with `auto`
  the first request that carried them is sent again without them, and that worker sends them
  no more; every prompt gets a reply that starts with its opening. A newly loaded model
  (another worker) probes once again. `continue` against the same server is refused, once."""
  fields = tuple(CONTINUE_FINAL_MESSAGE)
  with servers.FaultProxy(llama_server.base_url, reject_fields=fields) as proxy:
    handler = _handler(proxy.base_url, max_in_flight=1, max_new_tokens=24)
    caplog.set_level(logging.WARNING)
    model = handler.load_model()
    first = list(handler.run_inference(_refusal_prompts(3), model))
    second = list(handler.run_inference(_refusal_prompts(2), model))
    for result in first + second:
      assert not result.inference.error, result.inference
      assert result.inference.text.strip()
    assert proxy.rejected_fields == 1
    carried = [any(f in body for f in fields) for body in proxy.all_bodies]
    assert carried == [True] + [False] * 5, carried  # the probe, its resend, then 4 plain
    assert sum("rejects the prefill fields" in r.message for r in caplog.records) == 1

    handler.run_inference(_refusal_prompts(1), handler.load_model())
    assert proxy.rejected_fields == 2

    strict = _handler(proxy.base_url, prefill="continue", max_new_tokens=8)
    [refused] = RetryingGenerator(strict, max_attempts=3).run_inference(
        _refusal_prompts(1), strict.load_model())
    assert refused.inference.error == REQUEST_REJECTED and refused.inference.status == 400
    assert refused.inference.attempts == 1 and proxy.rejected_fields == 3


def test_generated_tokens_count_what_the_server_reported(llama_server):
  """`generated_tokens` in the run's metrics is the sum of the completion tokens the server
  reported (before: always 0, since the counter was incremented in the request threads, which
  have no Beam metrics container)."""
  documents = [Document(id=f"t{i}", text=f"Fans argue loudly about match {i} after a few beers.",
                        safety_score=2) for i in range(3)]
  with servers.FaultProxy(llama_server.base_url) as proxy:
    handler = _handler(proxy.base_url, max_in_flight=3, max_new_tokens=16)
    pipeline = beam.Pipeline("DirectRunner")
    _ = pipeline | beam.Create(documents) | Rephrase(handler, max_attempts=1)
    result = pipeline.run()
    result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_name("generated_tokens"))["counters"]
  tokens = sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)
  assert proxy.forwarded == len(documents)
  assert tokens == proxy.completion_tokens > 0, (tokens, proxy.completion_tokens)


def test_handler_pickles_without_the_key(monkeypatch, api_key):
  monkeypatch.setenv("SP_KEY", api_key)
  handler = _handler("http://127.0.0.1:9/v1", api_key_env="SP_KEY")
  assert api_key.encode() not in pickle.dumps(handler)


def _files_text(folder) -> bytes:
  data = b""
  for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        raw = f.read()
      data += gzip.decompress(raw) if path.endswith(".gz") else raw
  return data


def test_pipeline_generation_branches_through_the_endpoint(
    keyed_llama_server, api_key, monkeypatch, tmp_path, caplog):
  """The whole pipeline with --generator=openai against the keyed server; the key comes from
  the environment variable named by --openai_api_key_env and appears in no log or output."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from corpus.dataset import make_dataset  # pylint: disable=import-outside-toplevel

  monkeypatch.setenv("SP_ENDPOINT_KEY", api_key)
  output = str(tmp_path / "out")
  caplog.set_level(logging.DEBUG)
  report = entry.run([
      "--runner=DirectRunner", f"--input={SAMPLE_INPUT}", f"--output={output}",
      "--num_shards=2", "--generator=openai", f"--openai_base_url={keyed_llama_server.base_url}",
      f"--openai_model={MODEL_ALIAS}", "--openai_api_key_env=SP_ENDPOINT_KEY",
      "--max_new_tokens=48", "--max_in_flight=4"])
  assert report["checks_hold"], json.dumps(report["checks"], indent=2)
  assert report["per_branch"]["safeweb"] > 0
  assert report["checks"]["generation"]["refuseweb"]["requests"] > 0
  # No request failed at the transport level: the key was sent and accepted.
  for stage in ("rephrase", "refuseweb", "moral_education"):
    reasons = report["dead_letters"].get(stage, {})
    assert not {r for r in reasons if r.startswith("generation_")}, reasons
  for branch in GENERATED:
    files = sorted(glob.glob(os.path.join(output, branch, "part-*.tfrecord.gz")))
    examples = list(make_dataset(files)) if files else []
    assert len(examples) == report["per_branch"][branch]
    for example in examples:
      assert example["stage"].numpy().decode() == branch
      assert example["parent_id"].numpy() and example["text"].numpy().strip()
  for example in make_dataset(sorted(glob.glob(os.path.join(output, "refuseweb", "part-*")))):
    user, assistant = example["style"].numpy().decode().split("/")
    text = example["text"].numpy().decode()
    assert text.startswith(f"{user}: ") and f"\n\n{assistant}: " in text
  assert tf is not None
  assert api_key not in caplog.text
  assert api_key.encode() not in _files_text(output)
