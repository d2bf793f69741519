"""The vllm backend's server arguments (models/generators/vllm_backend.py): several in one
--vllm_server_arg value, as a Flex Template parameter (given once) must carry them, down to the
command line Beam's vLLM helper starts the server with."""

from __future__ import annotations

import os
import re
import sys

import pytest
from apache_beam.ml.inference.vllm_inference import _append_kwargs

from beam_pipeline import launch
from beam_pipeline.options import SafetyPretrainingOptions
from models.generators.vllm_backend import VllmGeneratorHandler, parse_server_args

TEMPLATES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "templates")


def _server_command(*flags: str) -> list[str]:
  """The arguments Beam's helper appends to `python -m vllm.entrypoints.openai.api_server`,
  for a launch with `flags` as the template launcher passes them."""
  options = SafetyPretrainingOptions(launch.template_flags(
      ["--generator=vllm", "--vllm_model=org/model", *flags]))
  handler = VllmGeneratorHandler.from_options(options)
  command: list[str] = []
  _append_kwargs(command, handler.start_server.server_kwargs)
  return command


def test_one_template_parameter_carries_several_server_arguments():
  assert _server_command("--vllm_server_arg=max-model-len=8192,enforce-eager "
                         "gpu-memory-utilization=0.85") == [
      "--max-model-len", "8192", "--enforce-eager", "--gpu-memory-utilization", "0.85"]
  # a value holding a space or a comma is quoted, shell-style
  assert _server_command(
      "--vllm_server_arg=max-model-len=8192 "
      "'override-generation-config={\"temperature\": 0, \"top_p\": 1}'") == [
      "--max-model-len", "8192", "--override-generation-config",
      '{"temperature": 0, "top_p": 1}']


def test_the_repeated_flag_keeps_working():
  assert _server_command("--vllm_server_arg=max-model-len=8192",
                         "--vllm_server_arg=enforce-eager") == [
      "--max-model-len", "8192", "--enforce-eager"]
  assert parse_server_args([]) == {}


@pytest.mark.parametrize("value, why", [
    ("max-model-len 8192", "'8192' is no vLLM server argument"),
    ("max-model-len='8192", "No closing quotation"),
    ("=8192", "is no vLLM server argument"),
])
def test_an_argument_the_server_cannot_take_fails_at_launch(value, why):
  with pytest.raises(ValueError, match=re.escape(why)):
    _server_command(f"--vllm_server_arg={value}")


def test_the_template_parameter_says_how_to_give_several():
  sys.path.insert(0, TEMPLATES)
  import make_metadata  # pylint: disable=import-outside-toplevel
  (parameter,) = [make_metadata.parameter(action) for action in make_metadata.option_actions()
                  if action.dest == "vllm_server_arg"]
  assert "separated by spaces or commas" in parameter["helpText"]
  assert "one value per launch" not in parameter["helpText"]
  example = "max-model-len=8192,enforce-eager"
  assert example in parameter["helpText"]
  assert any(re.fullmatch(regex, example) for regex in parameter["regexes"])
