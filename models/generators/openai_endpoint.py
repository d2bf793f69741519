"""A RunInference ModelHandler for any OpenAI-compatible chat endpoint.

A shared vLLM, TGI or llama.cpp server, or a hosted API: the handler sends each prompt of a batch
as one `/v1/chat/completions` request, at most `max_in_flight` at a time per worker, through the
`openai` client with a timeout and no retries of its own (`backend.RetryingGenerator` retries,
counting attempts). A request that times out, gets an HTTP error or a response that is not a
completion is reported in its `Generation`, so the rest of the batch is unaffected.

The API key is read on the worker from the environment variable named by `api_key_env`: the
handler holds only the variable's name, so the key is in no pickled pipeline, log or output.

A prompt ending with an assistant message asks the server to continue that message (`prefill`):
`continue` sends vLLM's `continue_final_message` request fields; servers that ignore them answer
afresh, and a reply that does not already start with the opening gets it prepended, so every
backend returns the reply starting with its opening, as the local backend does.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import typing
from collections.abc import Iterable, Mapping, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from models.generators.backend import (
    CONNECTION_ERROR, HTTP_ERROR, MALFORMED_RESPONSE, TIMEOUT, ChatBackend, Generation, Prompt,
    attempt_temperature, chat_messages, prompt_seed, reply_opening, split_attempt)

METRICS_NAMESPACE = "BeamML_OpenAIEndpoint"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
PREFILL_MODES = ("continue", "none")
# vLLM's chat-completions fields that make the server continue the final assistant message.
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}


def join_reply(opening: str, reply: str) -> str:
  """The reply starting with its opening, whether the server continued the opening or answered
  afresh (a fresh answer that already starts with the opening, spacing aside, is kept as is)."""
  squash = lambda text: re.sub(r"\s+", "", text)
  if opening and not squash(reply).startswith(squash(opening)):
    reply = opening + reply
  return reply.strip()


def completion_generation(response: typing.Any, opening: str) -> Generation:
  """The Generation of a chat-completions response: its first choice's text, starting with
  the opening, or `malformed_response` when it is no chat completion with text."""
  try:
    text = response.choices[0].message.content
  except (AttributeError, IndexError, TypeError) as error:
    return Generation("", MALFORMED_RESPONSE, f"not a chat completion: {error}")
  if not isinstance(text, str):
    return Generation("", MALFORMED_RESPONSE, "the completion has no text content")
  finish = getattr(response.choices[0], "finish_reason", "")
  return Generation(join_reply(opening, text), finish_reason=finish if isinstance(finish, str) else "")


class Endpoint:
  """An `openai.OpenAI` client and the thread pool that bounds requests in flight."""

  def __init__(self, client: typing.Any, pool: concurrent.futures.ThreadPoolExecutor):
    self.client = client
    self.pool = pool


class OpenAIEndpointHandler(ChatBackend):
  """Chat completions from an OpenAI-compatible endpoint, one request per prompt."""

  def __init__(
      self,
      base_url: str,
      model: str,
      api_key_env: str = DEFAULT_API_KEY_ENV,
      max_in_flight: int = 8,
      timeout_s: float = 120.0,
      max_new_tokens: int = 256,
      temperature: float = 0.0,
      top_p: float = 0.9,
      retry_temperature: float = 0.7,
      prefill: str = "continue",
      extra_body: Mapping[str, typing.Any] | None = None,
      batch_size: int | None = None):
    super().__init__()
    if not base_url:
      raise ValueError("The openai generator needs a base URL (--openai_base_url).")
    if prefill not in PREFILL_MODES:
      raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}")
    self._base_url = base_url
    self._model = model
    self._api_key_env = api_key_env
    self._max_in_flight = max(1, max_in_flight)
    self._timeout_s = timeout_s
    self._max_new_tokens = max_new_tokens
    self._temperature = temperature
    self._top_p = top_p
    self._retry_temperature = retry_temperature
    self._prefill = prefill
    self._extra_body = dict(extra_body or {})
    self.max_batch_size = batch_size or 2 * self._max_in_flight
    self._generated_tokens = Metrics.counter(METRICS_NAMESPACE, "generated_tokens")

  def load_model(self) -> Endpoint:
    from openai import OpenAI
    # Servers without authentication (vLLM, llama.cpp by default) accept any key.
    api_key = os.environ.get(self._api_key_env) or "unused"
    client = OpenAI(
        base_url=self._base_url, api_key=api_key, timeout=self._timeout_s, max_retries=0)
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=self._max_in_flight, thread_name_prefix="openai-endpoint")
    return Endpoint(client, pool)

  def run_inference(
      self,
      batch: Sequence[Prompt],
      model: Endpoint,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    attempt, args = split_attempt(inference_args)
    futures = [
        model.pool.submit(self._request, model.client, prompt, attempt, args) for prompt in batch
    ]
    return [PredictionResult(prompt, future.result()) for prompt, future in zip(batch, futures)]

  def _request(
      self, client: typing.Any, prompt: Prompt, attempt: int,
      args: dict[str, typing.Any]) -> Generation:
    import openai

    messages = chat_messages(prompt)
    opening = reply_opening(messages)
    body = dict(self._extra_body)
    if opening and self._prefill == "continue":
      body.update(CONTINUE_FINAL_MESSAGE)
    elif opening:
      messages = messages[:-1]
    temperature = attempt_temperature(self._temperature, self._retry_temperature, attempt)
    settings: dict[str, typing.Any] = dict(
        model=self._model, messages=messages, max_tokens=self._max_new_tokens,
        temperature=temperature)
    if temperature > 0:
      settings.update(top_p=self._top_p, seed=prompt_seed(prompt, attempt, bits=31))
    if body:
      settings["extra_body"] = body
    settings.update(args)
    try:
      response = client.chat.completions.create(**settings)
    except openai.APITimeoutError:
      return Generation("", TIMEOUT, f"no reply within {self._timeout_s:g} s")
    except openai.APIStatusError as error:
      return Generation("", HTTP_ERROR, f"HTTP {error.status_code}: {str(error)[:200]}")
    except openai.APIConnectionError as error:
      return Generation("", CONNECTION_ERROR, f"{type(error).__name__}: {str(error)[:200]}")
    except Exception as error:  # pylint: disable=broad-except
      # An unparseable body (e.g. not JSON) fails inside the client: the response is malformed.
      return Generation("", MALFORMED_RESPONSE, f"{type(error).__name__}: {str(error)[:200]}")
    usage = getattr(response, "usage", None)
    tokens = getattr(usage, "completion_tokens", None)
    if isinstance(tokens, int):
      self._generated_tokens.inc(tokens)
    return completion_generation(response, opening)

  def get_metrics_namespace(self) -> str:
    return METRICS_NAMESPACE
