"""A RunInference ModelHandler for any OpenAI-compatible chat endpoint.

A shared vLLM, TGI or llama.cpp server, or a hosted API: the handler sends each prompt of a batch
as one `/v1/chat/completions` request, at most `max_in_flight` at a time per SDK process (each
SDK worker process loads its own client), through the `openai` client with a timeout and no
retries of its own (`backend.RetryingGenerator` retries, counting attempts). A request that times
out, gets an HTTP error or a response that is not a completion is reported in its `Generation`,
so the rest of the batch is unaffected. Every message's chat-control tokens (of any template
family, `prompts.CONTROL_TOKEN`) are defused before it is sent: the server's template would turn
them into turns of the conversation. An HTTP 4xx other than 408, 409 and 429 is the server
refusing that request as it is; it is reported as `generation_request_rejected` with its status,
which is not retried.

The API key is read on the worker from the environment variable named by `api_key_env`: the
handler holds only the variable's name, so the key is in no pickled pipeline, log or output.
Nothing copies the submitting shell's variables to Dataflow or Flink workers, so a variable
that is not set where the model loads fails `load_model` with one error that says so, rather
than sending every request with no key and dead-lettering the corpus as 401s. A server without
authentication (vLLM, llama.cpp by default) is named explicitly: `api_key_env="none"`. Or the key
is a Secret Manager secret version (`api_key_secret`), read in `load_model` with Beam's
`GcpSecret` and the worker's credentials, so no image or environment holds it; the handler
holds only the version's name.

The tokens each reply took (the server's `usage.completion_tokens`) are counted in the bundle's
thread after the batch's requests are done: Beam's metrics container is thread-local, and a
counter incremented in a request thread is lost.

A prompt ending with an assistant message asks the server to continue that message (`prefill`):
`continue` sends vLLM's `continue_final_message` request fields; `none` drops the opening and
asks for a fresh reply; `auto` (the default) sends the fields until the server either accepts
them (a reply) or rejects them (an HTTP 4xx that the same request without the fields does not
get), and in the latter case falls back to `none` once, for the rest of the loaded model's life.
A server that ignores the fields answers afresh; a reply that does not already start with the
opening gets it prepended, so every backend returns the reply starting with its opening, as the
local backend does.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
import typing
from collections.abc import Iterable, Mapping, Sequence

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from models.generators.backend import (
    CONNECTION_ERROR, MALFORMED_RESPONSE, REQUEST_REJECTED, TIMEOUT, ChatBackend, Generation,
    Prompt, attempt_temperature, http_error_reason, prompt_seed, sampling_options, split_attempt)
from models.generators.prompts import chat_messages, defuse_control_tokens, reply_opening

OPENAI_METRICS_NAMESPACE = "BeamML_OpenAIEndpoint"  # RunInference's own metrics
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# `api_key_env` of a server that needs no key: said explicitly, never assumed from a missing one.
NO_API_KEY = "none"
# What the client sends as the key to a server without authentication (it needs some string).
KEYLESS_PLACEHOLDER = "EMPTY"
PREFILL_AUTO, PREFILL_CONTINUE, PREFILL_NONE = "auto", "continue", "none"
PREFILL_MODES = (PREFILL_AUTO, PREFILL_CONTINUE, PREFILL_NONE)
# vLLM's chat-completions fields that make the server continue the final assistant message.
CONTINUE_FINAL_MESSAGE = {"continue_final_message": True, "add_generation_prompt": False}

_LOG = logging.getLogger(__name__)


# A Secret Manager secret version, as Beam's GcpSecret takes it.
SECRET_VERSION = re.compile(r"projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+")
# Secret Manager's client logs each response's payload (the secret) in its DEBUG records.
_SECRET_CLIENT_LOGGER = "google.cloud.secretmanager_v1"


class MissingApiKeyError(RuntimeError):
  """The environment variable that should hold the API key is not set where the model loads."""


class ApiKeySecretError(RuntimeError):
  """The Secret Manager secret that should hold the API key cannot be read where the model
  loads, or is empty."""


def api_key_from_env(api_key_env: str) -> str:
  """The API key from the variable named `api_key_env`, the keyless placeholder for "none", or
  MissingApiKeyError naming the variable and the two ways out."""
  if api_key_env.strip().lower() == NO_API_KEY:
    return KEYLESS_PLACEHOLDER
  key = os.environ.get(api_key_env, "")
  if not key.strip():
    raise MissingApiKeyError(
        f"The API key variable {api_key_env} (--openai_api_key_env) is not set on this worker "
        f"(process {os.getpid()}). Workers do not inherit the submitting shell's environment: "
        f"set {api_key_env} in the worker environment (container image, Flink TaskManager "
        "environment, Dataflow worker start-up), or pass --openai_api_key_env=none for a "
        "server that needs no key.")
  return key


def api_key_from_secret(version_name: str) -> str:
  """The API key in the Secret Manager secret version `version_name` (surrounding whitespace
  dropped), read with Beam's `GcpSecret` and the process's Google credentials, or
  ApiKeySecretError naming the version (never the key) and what the worker needs."""
  from apache_beam.utils.secret import GcpSecret

  # Its DEBUG records would carry the key: a level of its own, at least INFO, also keeps
  # GOOGLE_SDK_PYTHON_LOGGING_SCOPE from turning them on when the client is made.
  payload_log = logging.getLogger(_SECRET_CLIENT_LOGGER)
  if payload_log.level < logging.INFO:
    payload_log.setLevel(max(logging.INFO, payload_log.getEffectiveLevel()))
  try:
    key = GcpSecret(version_name).get_str().strip()
  except Exception as error:  # pylint: disable=broad-except
    raise ApiKeySecretError(
        f"Cannot read the API key secret {version_name} (--openai_api_key_secret) on this "
        f"worker (process {os.getpid()}): {error}. The worker needs google-cloud-secret-manager "
        "(the gcp extra) and a service account with roles/secretmanager.secretAccessor on the "
        "secret.") from error
  if not key:
    raise ApiKeySecretError(
        f"The API key secret {version_name} (--openai_api_key_secret) is empty.")
  return key


class _Reply(typing.NamedTuple):
  """A request's Generation and the tokens the server says the reply took (0: unknown)."""
  generation: Generation
  tokens: int = 0


def _squashed(text: str) -> str:
  return re.sub(r"\s+", "", text)


def continues(opening: str, reply: str) -> bool:
  """Whether `reply` reads as the continuation of `opening`, not as a fresh answer.

  A server that continues an opening returns what comes after it: that text starts with a space,
  a line break or punctuation (tokenizers put the space in front of a word), unless the opening
  itself ends with whitespace. A server that ignores the prefill fields (llama.cpp's, several
  hosted APIs) answers afresh: its reply starts with a word or a markup sign, or repeats the
  opening ("User: ..." to the opening "User:"). Gluing such a reply onto the opening makes
  "...talking aboutHost 2:" or a user who refuses.
  """
  if not opening or not reply:
    return False
  if _squashed(reply).startswith(_squashed(opening)):
    return False  # it starts over with the opening: a fresh answer
  return (opening[-1].isspace() or reply[0].isspace()
          or bool(re.match(r"[,.;:!?)\]}'\"’”-]", reply)))


def join_reply(opening: str, reply: str) -> str:
  """The reply as the text the prompt asked for: the opening followed by the reply when the
  reply continues it (see `continues`); a fresh answer as it is, whether or not it already
  starts with the opening."""
  return (opening + reply if continues(opening, reply) else reply).strip()


def completion_generation(response: typing.Any, opening: str) -> Generation:
  """The Generation of a chat-completions response: its first choice's text, after the
  opening when it continues it (`join_reply`), or `malformed_response` when it is no chat
  completion with text."""
  try:
    text = response.choices[0].message.content
  except (AttributeError, IndexError, TypeError) as error:
    return Generation("", MALFORMED_RESPONSE, f"not a chat completion: {error}")
  if not isinstance(text, str):
    return Generation("", MALFORMED_RESPONSE, "the completion has no text content")
  finish = getattr(response.choices[0], "finish_reason", "")
  finish = finish if isinstance(finish, str) else ""
  if not text.strip():  # the opening alone is no reply: an empty generation, retried as one
    return Generation("", finish_reason=finish)
  return Generation(join_reply(opening, text), finish_reason=finish)


def status_error_detail(status: int, body: typing.Any, reason_phrase: str = "") -> str:
  """A failed request's detail: `HTTP <status>: <the server's own message>`.

  The message comes from the error body the server sent (`error.body`, JSON parsed by the
  client): OpenAI's and llama.cpp's `{"error": {"message"}}`, vLLM's `{"message"}`, TGI's
  `{"error": "..."}`, FastAPI's `{"detail"}`; a body with none of these is kept as JSON text.
  Not the client's exception text: openai < 3 writes the whole body there as a Python repr
  (`Error code: 400 - {'error': {...}}`), openai 3 drops a body that has no `message`.
  """
  message = _error_message(body)
  if not message and isinstance(body, (Mapping, list)) and body:
    message = json.dumps(body, sort_keys=True, ensure_ascii=False)
  message = " ".join((message or reason_phrase or "").split())
  return f"HTTP {status}: {message[:300]}" if message else f"HTTP {status}"


def _error_message(body: typing.Any) -> str:
  """The human message of an error body, or "" when it names none."""
  if isinstance(body, str):
    return body.strip()
  if isinstance(body, Mapping):
    for field in ("message", "error", "detail"):
      message = _error_message(body.get(field))
      if message:
        return message
  return ""


class Prefill:
  """How this loaded model asks for a reply opening to be continued; with `auto`, what the
  server has shown so far. Shared by the request threads of one SDK process."""

  def __init__(self, mode: str):
    self._lock = threading.Lock()
    self.mode = mode  # "auto" until the server has answered either way, then continue / none

  @property
  def sends_fields(self) -> bool:
    return self.mode in (PREFILL_AUTO, PREFILL_CONTINUE)

  @property
  def undecided(self) -> bool:
    return self.mode == PREFILL_AUTO

  def settle(self, accepted: bool, detail: str = "") -> None:
    """Records whether the server takes the prefill fields (a reply) or rejects them (a 4xx);
    the first answer wins. A server that takes them and ignores them (llama.cpp's) keeps
    getting them: the opening still steers its fresh answer, and `join_reply` keeps that
    answer whole."""
    with self._lock:
      if self.mode != PREFILL_AUTO:
        return
      self.mode = PREFILL_CONTINUE if accepted else PREFILL_NONE
    if not accepted:
      _LOG.warning(
          "The endpoint rejects the prefill fields %s (%s); this worker now drops reply "
          "openings and asks for fresh replies (--openai_prefill=none).",
          sorted(CONTINUE_FINAL_MESSAGE), detail[:200])


class Endpoint:
  """An `openai.OpenAI` client, the thread pool that bounds requests in flight, and the
  prefill state of this loaded model."""

  def __init__(self, client: typing.Any, pool: concurrent.futures.ThreadPoolExecutor,
               prefill: Prefill | None = None):
    self.client = client
    self.pool = pool
    self.prefill = prefill or Prefill(PREFILL_CONTINUE)


class OpenAIEndpointHandler(ChatBackend):
  """Chat completions from an OpenAI-compatible endpoint, one request per prompt.

  `extra_body` holds request fields the OpenAI API does not define (vLLM's
  `repetition_penalty`, say); they go with every request.
  """

  def __init__(
      self,
      base_url: str,
      model: str,
      api_key_env: str = DEFAULT_API_KEY_ENV,
      api_key_secret: str | None = None,
      max_in_flight: int = 8,
      timeout_s: float = 120.0,
      max_new_tokens: int = 256,
      temperature: float = 0.0,
      top_p: float = 0.9,
      retry_temperature: float = 0.7,
      prefill: str = PREFILL_AUTO,
      extra_body: Mapping[str, typing.Any] | None = None,
      batch_size: int | None = None):
    super().__init__()
    if not base_url:
      raise ValueError("The openai generator needs a base URL (--openai_base_url).")
    if prefill not in PREFILL_MODES:
      raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}")
    if not api_key_env:
      raise ValueError("api_key_env names the API key variable, or is 'none' for no key.")
    if api_key_secret and not SECRET_VERSION.fullmatch(api_key_secret):
      raise ValueError(
          "--openai_api_key_secret names a Secret Manager secret version, "
          f"projects/PROJECT/secrets/SECRET/versions/VERSION; got {api_key_secret!r}")
    if api_key_secret and api_key_env != DEFAULT_API_KEY_ENV:
      raise ValueError(
          f"--openai_api_key_secret and --openai_api_key_env={api_key_env} both say where the "
          "API key is: give one (the secret replaces the variable).")
    self._base_url = base_url
    self._model = model
    self._api_key_env = api_key_env
    self._api_key_secret = api_key_secret or None
    self._max_in_flight = max(1, max_in_flight)
    self._timeout_s = timeout_s
    self._max_new_tokens = max_new_tokens
    self._temperature = temperature
    self._top_p = top_p
    self._retry_temperature = retry_temperature
    self._prefill = prefill
    self._extra_body = dict(extra_body or {})
    self.max_batch_size = batch_size or 2 * self._max_in_flight
    self._generated_tokens = Metrics.counter(OPENAI_METRICS_NAMESPACE, "generated_tokens")

  @classmethod
  def from_options(cls, options) -> "OpenAIEndpointHandler":
    return cls(
        base_url=options.openai_base_url, model=options.openai_model,
        api_key_env=options.openai_api_key_env,
        api_key_secret=options.openai_api_key_secret, max_in_flight=options.max_in_flight,
        timeout_s=options.request_timeout_s, prefill=options.openai_prefill,
        **sampling_options(options))

  @property
  def judge_name(self) -> str:
    return f"openai:{self._model}"

  def load_model(self) -> Endpoint:
    return self.connect(self._base_url)

  def make_client(self, base_url: str) -> typing.Any:
    """An `openai.OpenAI` client of `base_url` with this handler's key and timeout, and no
    retries of its own (RetryingGenerator retries, counting attempts)."""
    from openai import OpenAI
    api_key = (api_key_from_secret(self._api_key_secret) if self._api_key_secret
               else api_key_from_env(self._api_key_env))
    return OpenAI(base_url=base_url, api_key=api_key, timeout=self._timeout_s, max_retries=0)

  def connect(self, base_url: str) -> Endpoint:
    """A client of the server at `base_url`, the request pool and the prefill state."""
    client = self.make_client(base_url)
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=self._max_in_flight, thread_name_prefix="openai-endpoint")
    return Endpoint(client, pool, Prefill(self._prefill))

  def run_inference(
      self,
      batch: Sequence[Prompt],
      model: Endpoint,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    attempt, args = split_attempt(inference_args)
    futures = [model.pool.submit(self._request, model, prompt, attempt, args) for prompt in batch]
    replies = [future.result() for future in futures]
    tokens = sum(reply.tokens for reply in replies)
    if tokens:  # here, in the bundle's thread: the request threads have no metrics container
      self._generated_tokens.inc(tokens)
    return [PredictionResult(prompt, reply.generation) for prompt, reply in zip(batch, replies)]

  def _request(
      self, endpoint: Endpoint, prompt: Prompt, attempt: int,
      args: dict[str, typing.Any]) -> _Reply:
    """One prompt's request; with prefill `auto` still undecided, a 4xx to a request that
    carried the prefill fields is tried once more without them, which settles the question."""
    prefill = endpoint.prefill
    opening = reply_opening(chat_messages(prompt))
    with_fields = bool(opening) and prefill.sends_fields
    reply = self._send(endpoint.client, prompt, attempt, args, with_fields)
    generation = reply.generation
    if not (with_fields and prefill.undecided):
      return reply
    if not generation.error:
      prefill.settle(accepted=True)
    elif generation.error == REQUEST_REJECTED:
      plain = self._send(endpoint.client, prompt, attempt, args, prefill_fields=False)
      if not plain.generation.error:
        prefill.settle(accepted=False, detail=generation.detail)
        return plain
    return reply

  def _send(
      self, client: typing.Any, prompt: Prompt, attempt: int, args: dict[str, typing.Any],
      prefill_fields: bool) -> _Reply:
    import openai

    messages = [dict(m, content=defuse_control_tokens(m["content"]))
                for m in chat_messages(prompt)]
    opening = reply_opening(messages)
    body = dict(self._extra_body)
    if opening and prefill_fields:
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
      return _Reply(Generation("", TIMEOUT, f"no reply within {self._timeout_s:g} s"))
    except openai.APIStatusError as error:
      detail = status_error_detail(error.status_code, error.body,
                                   getattr(error.response, "reason_phrase", ""))
      return _Reply(Generation("", http_error_reason(error.status_code), detail,
                               status=error.status_code))
    except openai.APIConnectionError as error:
      return _Reply(Generation(
          "", CONNECTION_ERROR, f"{type(error).__name__}: {str(error)[:200]}"))
    except Exception as error:  # pylint: disable=broad-except
      # An unparseable body (e.g. not JSON) fails inside the client: the response is malformed.
      return _Reply(Generation(
          "", MALFORMED_RESPONSE, f"{type(error).__name__}: {str(error)[:200]}"))
    tokens = getattr(getattr(response, "usage", None), "completion_tokens", None)
    # without the fields the opening was not sent: the reply is a fresh answer
    return _Reply(completion_generation(response, opening if prefill_fields else ""),
                  tokens if isinstance(tokens, int) and tokens > 0 else 0)

  def get_metrics_namespace(self) -> str:
    return OPENAI_METRICS_NAMESPACE
