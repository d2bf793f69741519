"""One option picks the backend; resource hints."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import pipeline as graph
from beam_pipeline.options import SafetyPretrainingOptions


def _options(*argv):
  return PipelineOptions(list(argv)).view_as(SafetyPretrainingOptions)


def test_generator_option_picks_the_backend():
  from models.generators.local import LocalGeneratorHandler
  from models.generators.openai_endpoint import OpenAIEndpointHandler
  from models.generators.vllm_backend import BeamVllmServer, VllmGeneratorHandler
  assert isinstance(graph.generator_handler(_options()), LocalGeneratorHandler)
  endpoint = graph.generator_handler(_options(
      "--generator=openai", "--openai_base_url=http://127.0.0.1:8000/v1", "--max_in_flight=3"))
  assert isinstance(endpoint, OpenAIEndpointHandler)
  assert endpoint.batch_elements_kwargs()["max_batch_size"] == 6
  vllm = graph.generator_handler(_options(
      "--generator=vllm", "--vllm_model=meta-llama/Llama-3.1-8B-Instruct",
      "--vllm_server_arg=max-model-len=8192", "--vllm_server_arg=enforce-eager",
      "--generation_batch_size=64"))
  assert isinstance(vllm, VllmGeneratorHandler)
  # Beam's helper starts the server; the requests are this package's, 64 in flight per process.
  assert isinstance(vllm.start_server, BeamVllmServer)
  assert vllm.start_server.server_kwargs == {"max-model-len": "8192", "enforce-eager": None}
  assert vllm.batch_elements_kwargs()["max_batch_size"] == 64
  assert not vllm.share_model_across_processes()  # the client; the server is shared by its tag


def test_openai_backend_needs_a_base_url():
  with pytest.raises(ValueError, match="base URL"):
    graph.generator_handler(_options("--generator=openai"))


def test_resource_hints_only_on_generation_steps():
  """With --generation_accelerator, the generation steps (and only they) run in an environment
  that carries the hints, so Dataflow gives them GPU workers and the rest CPU workers."""
  options = PipelineOptions([
      "--generator=vllm", "--vllm_model=meta-llama/Llama-3.1-8B-Instruct",
      "--generation_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
      "--generation_min_ram=16GB", "--output=/tmp/unused"])
  pipeline = beam.Pipeline(options=options)
  graph.build(pipeline, options.view_as(SafetyPretrainingOptions))
  proto = pipeline.to_runner_api()
  hints_of = {env_id: dict(env.resource_hints)
              for env_id, env in proto.components.environments.items()}
  hinted, plain = set(), set()
  for transform in proto.components.transforms.values():
    if transform.environment_id:
      step = transform.unique_name.split("/")[0]
      (hinted if hints_of[transform.environment_id] else plain).add(step)
  assert hinted == {"Rephrase", "RefuseWeb", "MoralEducation"}, hinted
  assert {"Read", "Score", "Tag", "GateRephrase"} <= plain
  [hints] = [h for h in hints_of.values() if h]
  assert hints["beam:resources:accelerator:v1"] == b"type:nvidia-l4;count:1;install-nvidia-driver"
  assert int(hints["beam:resources:min_ram_bytes:v1"]) == 16 * 10**9


def test_no_hints_by_default():
  options = PipelineOptions(["--output=/tmp/unused"])
  pipeline = beam.Pipeline(options=options)
  graph.build(pipeline, options.view_as(SafetyPretrainingOptions))
  proto = pipeline.to_runner_api()
  assert not any(env.resource_hints for env in proto.components.environments.values())
