"""The `vllm` generation backend: a vLLM server on the worker, one request per prompt.

Beam's `apache_beam.ml.inference.vllm_inference` starts vLLM's OpenAI-compatible server on the
worker (`VLLMChatModelHandler.load_model`: the chat template staged, `python -m
vllm.entrypoints.openai.api_server`, a wait until it lists its model) and this backend uses that
part of it. It does not use Beam's request path: `VLLMChatModelHandler.run_inference` sends a
batch through `asyncio.gather` without `return_exceptions`, so one request's error (a long page
over `max-model-len`) fails every prompt of the batch, with the client's 600 s timeout and two
hidden retries, and no way to pass per-prompt seeds. Here every request goes through
`OpenAIEndpointHandler`'s path, the one `--generator=openai` uses: the request timeout
(`--request_timeout_s`), no client retries, a seed per prompt and attempt, a reason per failed
request (a 4xx other than 408/409/429 final, with its status), vLLM's `repetition_penalty` and
`continue_final_message`; one failing request costs only itself.

The server is started once per worker machine and shared by its SDK processes (Beam's
`MultiProcessShared`, as Beam does for its own handler: one server per GPU, not one per
process); each process has its own client and `batch_size` requests in flight, which vLLM batches
on the GPU. A request that cannot connect makes the process ask the server to check itself
(Beam's helper restarts a server process that died) and reconnect at its possibly new port.

`server_url` (or `use_running_server`) replaces the start step with an OpenAI-compatible server
that is already running: a vLLM sidecar container, or the llama.cpp server of the tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import threading
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence

from apache_beam.ml.inference.base import PredictionResult

from models.generators.backend import CONNECTION_ERROR, Prompt, as_generation, sampling_options
from models.generators.openai_endpoint import (
    NO_API_KEY, PREFILL_CONTINUE, Endpoint, OpenAIEndpointHandler)

_LOG = logging.getLogger(__name__)
# Beam's helper serves on localhost; its server has no API key.
SERVER_URL = "http://localhost:{port}/v1"


_SERVER_ARG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def split_server_args(value: str) -> list[str]:
  """One --vllm_server_arg value as its arguments: separated by spaces or commas, quoted
  shell-style where a value holds either (a Flex Template parameter is given once, so several
  arguments must fit in one value). `"max-model-len=4096,enforce-eager"` -> two arguments."""
  lexer = shlex.shlex(value, posix=True)
  lexer.whitespace += ","
  lexer.whitespace_split = True
  lexer.commenters = ""
  try:
    return list(lexer)
  except ValueError as error:
    raise ValueError(f"--vllm_server_arg {value!r}: {error}") from None


def parse_server_args(values: Sequence[str]) -> dict[str, str | None]:
  """`["max-model-len=4096,enforce-eager"]` (or one argument per value, the flag repeated) ->
  vLLM server kwargs, as Beam's helper appends them (`--NAME VALUE`; a bare name is a flag).
  A piece that is no NAME=VALUE or NAME (`8192` of "max-model-len 8192") is an error here, at
  launch, not a server that fails to start on every worker."""
  kwargs: dict[str, str | None] = {}
  for value in values:
    for argument in split_server_args(value):
      name, sep, text = argument.partition("=")
      name = name.strip().lstrip("-")
      if not _SERVER_ARG_NAME.fullmatch(name):
        raise ValueError(
            f"--vllm_server_arg {value!r}: {argument!r} is no vLLM server argument (NAME=VALUE "
            "or a bare flag NAME; write a value after '=', not after a space)")
      kwargs[name] = text if sep else None
  return kwargs


class BeamVllmServer:
  """Starts vLLM's OpenAI-compatible server with Beam's helper: `VLLMChatModelHandler.load_model`
  returns Beam's `_VLLMModelServer` (get_server_port, check_connectivity). Picklable; Beam's
  module is imported only when a server is started, since it imports `vllm`."""

  def __init__(self, model_name: str, server_kwargs: Mapping[str, str | None] | None = None,
               chat_template_path: str | None = None):
    self.model_name = model_name
    self.server_kwargs = dict(server_kwargs or {})
    self.chat_template_path = chat_template_path

  def __call__(self):
    from apache_beam.ml.inference.vllm_inference import VLLMChatModelHandler
    return VLLMChatModelHandler(
        self.model_name, chat_template_path=self.chat_template_path,
        vllm_server_kwargs=dict(self.server_kwargs)).load_model()

  def tag(self) -> str:
    """The name under which a worker's processes share one server of this model and settings."""
    spec = json.dumps([self.model_name, self.server_kwargs, self.chat_template_path],
                      sort_keys=True)
    return "safety_pretraining_vllm_" + hashlib.sha256(spec.encode()).hexdigest()[:16]


class VllmEndpoint(Endpoint):
  """An Endpoint of the worker's vLLM server, with the server's shared handle (None for a server
  that was already running) so a process can reconnect after the server restarted."""

  def __init__(self, endpoint: Endpoint, server: typing.Any = None, port: int | None = None):
    super().__init__(endpoint.client, endpoint.pool, endpoint.prefill)
    self.server = server
    self.port = port
    self.lock = threading.Lock()


class VllmGeneratorHandler(OpenAIEndpointHandler):
  """Chat generation on the worker's vLLM server, each prompt its own request.

  Args:
    model_name: what vLLM serves (a Hugging Face id or a local path), also the request's model.
    timeout_s: seconds per request (`--request_timeout_s`).
    repetition_penalty: sent as vLLM's `repetition_penalty` field with every request.
    server_kwargs / chat_template_path: vLLM server arguments and chat template, for Beam's
      helper.
    batch_size: prompts per RunInference batch, all in flight at once (vLLM batches them).
    server_url: an OpenAI-compatible server already running; then none is started.
    start_server: a picklable callable that starts the server and returns an object with
      `get_server_port()` and `check_connectivity()` (default: `BeamVllmServer`).
    sampling: max_new_tokens, temperature, top_p, retry_temperature, as OpenAIEndpointHandler
      takes them.
  """

  def __init__(
      self,
      model_name: str,
      repetition_penalty: float = 1.0,
      timeout_s: float = 120.0,
      server_kwargs: Mapping[str, str | None] | None = None,
      chat_template_path: str | None = None,
      batch_size: int = 64,
      server_url: str | None = None,
      start_server: Callable[[], typing.Any] | None = None,
      **sampling: typing.Any):
    if not model_name:
      raise ValueError("The vllm generator needs a model (--vllm_model).")
    super().__init__(
        base_url=server_url or SERVER_URL, model=model_name, api_key_env=NO_API_KEY,
        max_in_flight=batch_size, timeout_s=timeout_s, prefill=PREFILL_CONTINUE,
        extra_body={"repetition_penalty": repetition_penalty}, batch_size=batch_size,
        **sampling)
    self._server_url = server_url
    self._start_server = start_server or BeamVllmServer(
        model_name, server_kwargs, chat_template_path)

  @classmethod
  def from_options(cls, options) -> "VllmGeneratorHandler":
    return cls(
        options.vllm_model, repetition_penalty=options.repetition_penalty,
        timeout_s=options.request_timeout_s,
        server_kwargs=parse_server_args(options.vllm_server_arg),
        chat_template_path=options.vllm_chat_template, batch_size=options.generation_batch_size,
        **sampling_options(options))

  @property
  def judge_name(self) -> str:
    return f"vllm:{self._model}"

  @property
  def start_server(self) -> Callable[[], typing.Any]:
    return self._start_server

  def use_running_server(self, server_url: str) -> "VllmGeneratorHandler":
    """Sends the requests to an OpenAI-compatible server already running at `server_url`
    instead of starting one on the worker; returns self."""
    self._server_url = server_url
    self._base_url = server_url
    return self

  def load_model(self) -> VllmEndpoint:
    if self._server_url:
      return VllmEndpoint(self.connect(self._server_url))
    from apache_beam.utils.multi_process_shared import MultiProcessShared
    tag = self._start_server.tag() if hasattr(self._start_server, "tag") else (
        "safety_pretraining_vllm_" + hashlib.sha256(self._model.encode()).hexdigest()[:16])
    server = MultiProcessShared(self._start_server, tag=tag, always_proxy=True).acquire()
    port = server.get_server_port()
    return VllmEndpoint(self.connect(SERVER_URL.format(port=port)), server, port)

  def run_inference(
      self,
      batch: Sequence[Prompt],
      model: VllmEndpoint,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    results = list(super().run_inference(batch, model, inference_args))
    if model.server is not None and any(
        as_generation(r.inference).error == CONNECTION_ERROR for r in results):
      self._reconnect(model)
    return results

  def _reconnect(self, model: VllmEndpoint) -> None:
    """After a connection error: Beam's helper checks the server (restarting a dead one), and
    the client follows it if it now listens on another port. The failed requests are retried
    by RetryingGenerator."""
    with model.lock:
      try:
        model.server.check_connectivity()
        port = model.server.get_server_port()
      except Exception as error:  # pylint: disable=broad-except
        _LOG.warning("The vLLM server did not come back: %s", error)
        return
      if port != model.port:
        _LOG.warning("The vLLM server now listens on port %s (was %s)", port, model.port)
        model.client = self.make_client(SERVER_URL.format(port=port))
        model.port = port
