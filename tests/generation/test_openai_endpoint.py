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
from models.generators.backend import HTTP_ERROR, Generation
from models.generators.openai_endpoint import OpenAIEndpointHandler
from models.generators.prompts import KIND_REFUSEWEB, KIND_REPHRASE, build_prompt
from tests.generation.servers import MODEL_ALIAS

pytestmark = pytest.mark.slow
GENERATED = ("safeweb", "refuseweb", "moral_education")


def _handler(base_url, **settings):
  settings.setdefault("max_new_tokens", 40)
  return OpenAIEndpointHandler(base_url=base_url, model=MODEL_ALIAS, **settings)


def test_endpoint_handler_generates_and_continues_openings(llama_server):
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
  # The RefuseWeb prompt ends with the reply's opening: every backend returns it in the reply.
  assert generations[1].text.startswith("User:")
  assert all(g.attempts == 1 for g in generations)


def test_wrong_api_key_is_an_http_error_not_a_crash(keyed_llama_server, monkeypatch):
  monkeypatch.setenv("SP_WRONG_KEY", "sk-not-the-key")
  handler = _handler(keyed_llama_server.base_url, api_key_env="SP_WRONG_KEY")
  [result] = handler.run_inference([[("user", "hello")]], handler.load_model())
  assert result.inference.error == HTTP_ERROR
  assert "401" in result.inference.detail


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
  from transforms.dataset import make_dataset  # pylint: disable=import-outside-toplevel

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
