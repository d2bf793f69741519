"""The graph's settings (beam_pipeline/pipeline.py): each backend of the registry builds itself
from the options and names the judge; the quality settings follow the --quality_* flags."""

from __future__ import annotations

import pytest

from beam_pipeline import pipeline as graph
from beam_pipeline.options import QUALITY_HELP, SafetyPretrainingOptions
from transforms.quality_checks import QualitySettings


def _options(*flags):
  return SafetyPretrainingOptions(list(flags)).view_as(SafetyPretrainingOptions)


@pytest.mark.parametrize("flags, backend, judge", [
    ((), "LocalGeneratorHandler", "local:SmolLM2-135M-Instruct"),
    (("--generator_model=/models/other.gguf",), "LocalGeneratorHandler", "local:other.gguf"),
    (("--generator=openai", "--openai_base_url=http://127.0.0.1:1/v1", "--openai_model=m"),
     "OpenAIEndpointHandler", "openai:m"),
    (("--generator=vllm", "--vllm_model=org/model", "--vllm_server_arg=max-model-len=8192"),
     "VllmGeneratorHandler", "vllm:org/model"),
])
def test_every_backend_builds_itself_from_the_options(flags, backend, judge):
  handler = graph.generator_handler(_options(*flags))
  assert type(handler).__name__ == backend
  assert handler.judge_name == judge


def test_sampling_options_reach_the_backend():
  handler = graph.generator_handler(_options(
      "--generator=openai", "--openai_base_url=http://127.0.0.1:1/v1", "--max_new_tokens=64",
      "--temperature=0.5", "--top_p=0.8", "--retry_temperature=0.9"))
  # pylint: disable=protected-access
  assert (handler._max_new_tokens, handler._temperature, handler._top_p,
          handler._retry_temperature) == (64, 0.5, 0.8, 0.9)


def test_quality_settings_follow_the_flags():
  assert graph.quality_settings(_options()) == QualitySettings()
  settings = graph.quality_settings(_options("--quality_min_words=12", "--max_new_tokens=64"))
  assert settings == QualitySettings(min_words=12, max_new_tokens=64)
  assert set(QUALITY_HELP) == set(QualitySettings._fields) - {"max_new_tokens"}


def test_resource_hints_are_refused_for_a_backend_that_leaves_gpus_idle():
  with pytest.raises(ValueError, match="idle"):
    graph.generation_hints(_options("--generation_accelerator=type:nvidia-l4;count:1"))
  assert graph.generation_hints(_options(
      "--generator=vllm", "--vllm_model=m", "--generation_min_ram=16GB")) == {"min_ram": "16GB"}


GPU_HINT = "type:nvidia-l4;count:1;install-nvidia-driver"


def test_gpu_scoring_still_settles_the_onnx_folder_for_the_quality_gates_encoder(tmp_path):
  """--classifier_device=cuda scores in PyTorch; the off_topic check embeds with the ONNX
  graph, settled where the graph is built as for CPU scoring, and recorded in the job."""
  import apache_beam as beam
  from apache_beam.runners.direct.direct_runner import DirectRunner
  from models.classifier import artifacts
  options = _options("--classifier_device=cuda", f"--output={tmp_path / 'out'}")
  pipeline = beam.Pipeline(runner=DirectRunner(), options=options)
  scorer = graph.classifier_handler(options, pipeline)
  assert type(scorer).__name__ == "TorchSafetyModelHandler"
  settled = artifacts.settle_model(None)
  assert settled and options.classifier_model == settled
  assert pipeline.options.view_as(SafetyPretrainingOptions).classifier_model == settled
  encoder = graph.quality_gate("rephrase", options).encoder
  assert encoder.embed("A text about gardens.") is not None


def test_the_classifier_accelerator_goes_with_gpu_scoring_only():
  from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
  assert graph.scoring_hints(_options()) == {}
  assert graph.scoring_hints(_options(
      "--classifier_device=cuda", f"--classifier_accelerator={GPU_HINT}")) == {
          "accelerator": GPU_HINT}
  with pytest.raises(ValueError, match="idle"):
    graph.scoring_hints(_options(f"--classifier_accelerator={GPU_HINT}"))
  # on Dataflow nothing else gives Score and the gates a GPU
  with pytest.raises(ValueError, match="--classifier_accelerator="):
    graph.scoring_hints(_options("--classifier_device=cuda"), DataflowRunner())
  assert graph.scoring_hints(_options(
      "--classifier_device=cuda", f"--dataflow_service_options=worker_accelerator={GPU_HINT}"),
      DataflowRunner()) == {}
  assert graph.scoring_hints(_options("--classifier_device=cuda")) == {}  # local GPUs, Flink
