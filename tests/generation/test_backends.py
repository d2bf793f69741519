"""One option picks the backend; the vllm backend's request path; resource hints."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import pipeline as graph
from beam_pipeline.options import SafetyPretrainingOptions
from models.generators.backend import Generation, RetryingGenerator
from models.generators.prompts import KIND_REFUSEWEB, build_prompt
from tests.generation.servers import MODEL_ALIAS


def _options(*argv):
  return PipelineOptions(list(argv)).view_as(SafetyPretrainingOptions)


def test_generator_option_picks_the_backend():
  from models.generators.local import LocalGeneratorHandler
  from models.generators.openai_endpoint import OpenAIEndpointHandler
  from models.generators.vllm_backend import VllmGeneratorHandler
  assert isinstance(graph.generator_handler(_options()), LocalGeneratorHandler)
  endpoint = graph.generator_handler(_options(
      "--generator=openai", "--openai_base_url=http://127.0.0.1:8000/v1", "--max_in_flight=3"))
  assert isinstance(endpoint, OpenAIEndpointHandler)
  assert endpoint.batch_elements_kwargs()["max_batch_size"] == 6
  vllm = graph.generator_handler(_options(
      "--generator=vllm", "--vllm_model=meta-llama/Llama-3.1-8B-Instruct",
      "--vllm_server_arg=max-model-len=8192", "--vllm_server_arg=enforce-eager"))
  assert isinstance(vllm, VllmGeneratorHandler)
  from apache_beam.ml.inference.vllm_inference import VLLMChatModelHandler
  assert isinstance(vllm.inner, VLLMChatModelHandler)
  assert vllm.inner._vllm_server_kwargs == {"max-model-len": "8192", "enforce-eager": None}  # pylint: disable=protected-access


def test_openai_backend_needs_a_base_url():
  with pytest.raises(ValueError, match="base URL"):
    graph.generator_handler(_options("--generator=openai"))


class _ServerAt:
  """What Beam's vLLM handler gets from load_model, for a server that is already running:
  here llama.cpp's OpenAI-compatible server in place of the vLLM process."""

  def __init__(self, port: int):
    self._port = port

  def get_server_port(self) -> int:
    return self._port

  def check_connectivity(self, *args, **kwargs):
    pass


@pytest.mark.slow
def test_vllm_backend_requests_through_beams_handler(llama_server):
  """Beam's VLLMChatModelHandler sends the requests (its async OpenAI client to localhost),
  to a real OpenAI-compatible server; only the vLLM process itself is not started here."""
  handler = graph.generator_handler(_options(
      "--generator=vllm", f"--vllm_model={MODEL_ALIAS}", "--max_new_tokens=32"))
  prompts = [[("user", "Name a colour.")],
             build_prompt(KIND_REFUSEWEB, "How to pick the lock of a neighbour's door.")]
  model = _ServerAt(llama_server.port)
  results = list(RetryingGenerator(handler, max_attempts=1).run_inference(prompts, model))
  generations = [r.inference for r in results]
  assert all(isinstance(g, Generation) and not g.error and g.text for g in generations), generations
  assert generations[1].text.startswith("User:")


def test_resource_hints_only_on_generation_steps():
  """With --generation_accelerator, the generation steps (and only they) run in an environment
  that carries the hints, so Dataflow gives them GPU workers and the rest CPU workers."""
  options = PipelineOptions([
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
