"""The `vllm` generation backend: Beam's own vLLM chat ModelHandler, adapted to this pipeline.

`apache_beam.ml.inference.vllm_inference.VLLMChatModelHandler` starts a vLLM OpenAI server on each
worker (on its GPU) and sends every prompt of a batch to it concurrently. This adapter turns the
pipeline's chat prompts into Beam's `OpenAIChatMessage`s, asks vLLM to continue a prompt's final
assistant message (its `continue_final_message` field), and reports failures per prompt as
`Generation`s so `backend.RetryingGenerator` can retry them. Beam's module imports `vllm` when it
is imported, so this module is only imported when `--generator=vllm` is chosen.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping, Sequence

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.generators.backend import (
    CONNECTION_ERROR, ChatBackend, Generation, Prompt, attempt_temperature, chat_messages,
    reply_opening, split_attempt)
from models.generators.openai_endpoint import CONTINUE_FINAL_MESSAGE, completion_generation


def parse_server_args(pairs: Sequence[str]) -> dict[str, str | None]:
  """`["max-model-len=4096", "enforce-eager"]` -> vLLM server kwargs (a bare name is a flag)."""
  kwargs: dict[str, str | None] = {}
  for pair in pairs:
    name, sep, value = pair.partition("=")
    name = name.strip().lstrip("-")
    if not name:
      raise ValueError(f"Empty vLLM server argument in {pairs!r}")
    kwargs[name] = value if sep else None
  return kwargs


class VllmGeneratorHandler(ChatBackend):
  """Chat generation on a vLLM server that Beam starts on the worker."""

  def __init__(
      self,
      model_name: str,
      max_new_tokens: int = 256,
      temperature: float = 0.0,
      top_p: float = 0.9,
      retry_temperature: float = 0.7,
      seed: int = 0,
      server_kwargs: Mapping[str, str | None] | None = None,
      chat_template_path: str | None = None,
      batch_size: int = 64):
    super().__init__()
    from apache_beam.ml.inference.vllm_inference import VLLMChatModelHandler
    if not model_name:
      raise ValueError("The vllm generator needs a model (--vllm_model).")
    self._inner = VLLMChatModelHandler(
        model_name, chat_template_path=chat_template_path,
        vllm_server_kwargs=dict(server_kwargs or {}), max_batch_size=batch_size)
    self._max_new_tokens = max_new_tokens
    self._temperature = temperature
    self._top_p = top_p
    self._retry_temperature = retry_temperature
    self._seed = seed
    self.max_batch_size = batch_size

  @property
  def inner(self) -> ModelHandler:
    """Beam's VLLMChatModelHandler."""
    return self._inner

  def load_model(self):
    return self._inner.load_model()

  def request_args(self, attempt: int, continues: bool) -> dict[str, typing.Any]:
    """The chat-completions fields of one attempt (the same for every prompt of a batch; vLLM
    seeds each request on its own, so a seeded sample depends only on its prompt)."""
    temperature = attempt_temperature(self._temperature, self._retry_temperature, attempt)
    args: dict[str, typing.Any] = {"max_tokens": self._max_new_tokens, "temperature": temperature}
    if temperature > 0:
      args.update(top_p=self._top_p, seed=self._seed + attempt - 1)
    if continues:
      args["extra_body"] = dict(CONTINUE_FINAL_MESSAGE)
    return args

  def run_inference(
      self,
      batch: Sequence[Prompt],
      model: typing.Any,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    from apache_beam.ml.inference.vllm_inference import OpenAIChatMessage

    attempt, args = split_attempt(inference_args)
    messages = [chat_messages(prompt) for prompt in batch]
    openings = [reply_opening(m) for m in messages]
    outcomes: list[Generation] = [Generation("")] * len(batch)
    for continues in (False, True):
      indices = [i for i, opening in enumerate(openings) if bool(opening) == continues]
      if not indices:
        continue
      requests = [[OpenAIChatMessage(m["role"], m["content"]) for m in messages[i]]
                  for i in indices]
      try:
        results = list(self._inner.run_inference(
            requests, model, {**self.request_args(attempt, continues), **args}))
      except Exception as error:  # pylint: disable=broad-except
        # Beam's handler fails the whole batch on any request's error; report it per prompt.
        for i in indices:
          outcomes[i] = Generation("", CONNECTION_ERROR, f"{type(error).__name__}: {error}"[:300])
        continue
      for i, result in zip(indices, results):
        outcomes[i] = completion_generation(result.inference, openings[i])
    return [PredictionResult(prompt, outcome) for prompt, outcome in zip(batch, outcomes)]

  def get_metrics_namespace(self) -> str:
    return self._inner.get_metrics_namespace()

  def share_model_across_processes(self) -> bool:
    return self._inner.share_model_across_processes()
