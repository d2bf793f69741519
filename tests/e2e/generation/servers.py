"""Real servers for the generation tests, on 127.0.0.1 only.

- `LlamaServer`: llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-python[server]`, installed
  by `make llama-server` into `.venv-llama`) serving the SmolLM2 GGUF that the local backend uses.
- `FaultProxy`: an HTTP proxy in front of it that injects failures into the requests whose prompt
  holds a marker: it stalls, answers 500, answers garbage, or answers an empty or a non-dialogue
  completion, for the first N attempts or for all of them, and forwards everything else. It can
  also act as a hosted API that rejects request fields it does not define (HTTP 400), and it
  keeps every request body it saw and sums the completion tokens of the answers it forwarded.
- `ChatServer`: a plain chat-completions server (no model) that answers each request with a
  short dialogue, can be down (HTTP 503 and 429) for its first seconds, and can require a key.
- `FakeSecretManager`: Secret Manager's REST API for `access_secret_version`, which the real
  `google-cloud-secret-manager` client reads through.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LLAMA_PYTHON_ENV = "LLAMA_SERVER_PYTHON"
DEFAULT_LLAMA_PYTHON = REPO / ".venv-llama" / "bin" / "python"
MODEL_ALIAS = "smollm2"


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def llama_python() -> str | None:
  path = os.environ.get(LLAMA_PYTHON_ENV) or str(DEFAULT_LLAMA_PYTHON)
  return path if os.access(path, os.X_OK) else None


class LlamaServer:
  """`python -m llama_cpp.server` on 127.0.0.1 with the given GGUF; a context manager."""

  def __init__(self, gguf: str, log_path: str, api_key: str | None = None, threads: int = 2):
    self.port = free_port()
    self.base_url = f"http://127.0.0.1:{self.port}/v1"
    self._command = [
        llama_python(), "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
        "--port", str(self.port), "--n_ctx", "4096", "--n_threads", str(threads),
        "--model_alias", MODEL_ALIAS, "--verbose", "False"]
    if api_key:
      self._command += ["--api_key", api_key]
    self._api_key = api_key
    self._log_path = log_path
    self._process = None

  def __enter__(self) -> "LlamaServer":
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with open(self._log_path, "wb") as log:
      self._process = subprocess.Popen(
          self._command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 180
    request = urllib.request.Request(f"{self.base_url}/models")
    if self._api_key:
      request.add_header("Authorization", f"Bearer {self._api_key}")
    while time.time() < deadline:
      if self._process.poll() is not None:
        raise RuntimeError(f"llama.cpp server exited: {Path(self._log_path).read_text()[-2000:]}")
      try:
        with urllib.request.urlopen(request, timeout=2) as response:
          if response.status == 200:
            return self
      except (urllib.error.URLError, ConnectionError, TimeoutError):
        time.sleep(0.5)
    self.__exit__(None, None, None)
    raise RuntimeError("llama.cpp server did not start within 180 s")

  def __exit__(self, *exc):
    if self._process and self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=20)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()


# Fault kinds, by the marker a document's text carries.
STALL = "FAULT-STALL"  # no answer until the client times out
HTTP_500 = "FAULT-500"  # HTTP 500
GARBAGE = "FAULT-GARBAGE"  # HTTP 200 whose body is not JSON
EMPTY = "FAULT-EMPTY"  # a valid completion with empty content
NOT_DIALOGUE = "FAULT-MONOLOGUE"  # a valid completion that is prose, not a dialogue
FLAKY_500 = "FAULT-FLAKY"  # HTTP 500 on the first attempt only, then forwarded
FLAKY_429 = "FAULT-429"  # HTTP 429 (rate limited) on the first attempt only, then forwarded
FAULTS = (STALL, HTTP_500, GARBAGE, EMPTY, NOT_DIALOGUE, FLAKY_500, FLAKY_429)
# Markers that are only counted: the request goes to the real server as it is.
TRACED = "TRACE-ME"
COUNTED = FAULTS + (TRACED,)


def _completion(content: str) -> bytes:
  return json.dumps({
      "id": "chatcmpl-fault", "object": "chat.completion", "created": 0, "model": MODEL_ALIAS,
      "choices": [{"index": 0, "finish_reason": "stop",
                   "message": {"role": "assistant", "content": content}}],
      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
  }).encode()


def _completion_tokens(payload: bytes) -> int:
  """The `usage.completion_tokens` a chat-completions answer reports (0 when it has none)."""
  try:
    tokens = json.loads(payload).get("usage", {}).get("completion_tokens", 0)
  except (ValueError, AttributeError):
    return 0
  return tokens if isinstance(tokens, int) else 0


class FaultProxy:
  """A threading HTTP proxy on 127.0.0.1 that injects the fault named by a marker in a prompt.

  `requests[marker]` counts the requests that carried each marker (attempts, retries included);
  `stall_s` is how long a stalled request hangs (longer than the client's timeout).
  """

  def __init__(self, upstream: str, stall_s: float = 5.0,
               reject_fields: tuple[str, ...] = ()):
    self.upstream = upstream.rstrip("/")
    self.stall_s = stall_s
    # A request carrying any of these top-level fields gets HTTP 400, worded as OpenAI's API
    # words it, as a hosted API that knows only its own fields does.
    self.reject_fields = tuple(reject_fields)
    self.requests: dict[str, int] = {}
    self.bodies: dict[str, list[dict]] = {}  # marker -> the JSON bodies of its requests
    self.all_bodies: list[dict] = []  # every chat-completions body, in arrival order
    self.rejected_fields = 0  # requests answered 400 for a rejected field
    self.forwarded = 0
    self.completion_tokens = 0  # the usage.completion_tokens of the answers it forwarded
    self._attempts: dict[tuple[str, str], int] = {}
    self._lock = threading.Lock()
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
    self._server.daemon_threads = True
    self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def __enter__(self) -> "FaultProxy":
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()

  def _fault_of(self, body: bytes) -> tuple[str | None, int]:
    text = body.decode("utf-8", "replace")
    with self._lock:
      self.all_bodies.append(json.loads(body))
    for marker in COUNTED:
      if marker in text:
        messages = json.dumps(json.loads(body).get("messages"), sort_keys=True)
        with self._lock:
          self.requests[marker] = self.requests.get(marker, 0) + 1
          self.bodies.setdefault(marker, []).append(json.loads(body))
          # The attempt of this prompt: its requests so far (retries keep the messages).
          self._attempts[(marker, messages)] = self._attempts.get((marker, messages), 0) + 1
          return marker, self._attempts[(marker, messages)]
    return None, 0

  def _handler_class(self):
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def _reply(self, status: int, body: bytes, content_type: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        marker, attempt = proxy._fault_of(body)
        unknown = [field for field in proxy.reject_fields if field in json.loads(body)]
        if unknown:
          with proxy._lock:
            proxy.rejected_fields += 1
          return self._reply(400, json.dumps({"error": {
              "message": f"Unrecognized request argument supplied: {unknown[0]}",
              "type": "invalid_request_error", "param": None, "code": None}}).encode())
        if marker == STALL:
          time.sleep(proxy.stall_s)
          self.close_connection = True
          return
        if marker == HTTP_500 or (marker == FLAKY_500 and attempt == 1):
          return self._reply(500, b'{"error": {"message": "injected failure", "code": 500}}')
        if marker == FLAKY_429 and attempt == 1:
          return self._reply(429, b'{"error": {"message": "rate limited", "code": 429}}')
        if marker == GARBAGE:
          return self._reply(200, b"<html>upstream returned garbage</html>", "text/html")
        if marker == EMPTY:
          return self._reply(200, _completion(""))
        if marker == NOT_DIALOGUE:
          return self._reply(200, _completion("I would rather write an essay about locks."))
        self._forward(body)

      def _forward(self, body: bytes):
        request = urllib.request.Request(
            proxy.upstream + self.path[len("/v1"):], data=body, method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": self.headers.get("Authorization", "")})
        try:
          with urllib.request.urlopen(request, timeout=600) as response:
            payload, status = response.read(), response.status
        except urllib.error.HTTPError as error:
          payload, status = error.read(), error.code
        with proxy._lock:
          proxy.forwarded += 1
          if status == 200:
            proxy.completion_tokens += _completion_tokens(payload)
        self._reply(status, payload)

    return Handler


class _Server:
  """A threading HTTP server on 127.0.0.1 with the handler class of `handler_class()`; a
  context manager."""

  def __init__(self):
    self._lock = threading.Lock()
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
    self._server.daemon_threads = True
    self.port = self._server.server_address[1]
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def handler_class(self):
    raise NotImplementedError

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()


class _JsonHandler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # quiet
    pass

  def reply(self, status: int, body: dict):
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)


# What ChatServer answers: a dialogue (so RefuseWeb's check takes it) of a few words of the
# prompt, so the replies and their token counts differ from request to request.
CHAT_REPLY = ("User: Can you tell me how to {words}?\n"
              "Assistant: I can't help with that, because it could hurt someone. I can tell "
              "you how to stay safe instead.")


class ChatServer(_Server):
  """A plain OpenAI-compatible chat-completions server (no model) on 127.0.0.1.

  It answers each request with `CHAT_REPLY` and reports its word count as the completion tokens
  (`completion_tokens` sums them). With `outage_s`, it answers HTTP 503 and 429 in turn for
  that long from its first request (an endpoint restarting behind a load balancer), then
  recovers (`outage_answers` counts those answers). With `api_key`, a request whose
  Authorization header is not `Bearer <api_key>` gets 401, as llama.cpp's server answers it
  (`authorizations` keeps every header value it saw).
  """

  def __init__(self, outage_s: float = 0.0, api_key: str | None = None):
    self.outage_s = outage_s
    self.api_key = api_key
    self.first_request: float | None = None
    self.outage_answers = {503: 0, 429: 0}
    self.completions = 0
    self.completion_tokens = 0
    self.unauthorized = 0
    self.authorizations: set[str] = set()
    super().__init__()
    self.base_url = f"http://127.0.0.1:{self.port}/v1"

  def _answer(self, body: dict, authorization: str) -> tuple[int, dict]:
    with self._lock:
      self.authorizations.add(authorization)
      now = time.monotonic()
      if self.first_request is None:
        self.first_request = now
      if self.api_key is not None and authorization != f"Bearer {self.api_key}":
        self.unauthorized += 1
        return 401, {"error": {"message": "Invalid API Key", "code": 401}}
      if now - self.first_request < self.outage_s:
        status = 503 if sum(self.outage_answers.values()) % 2 == 0 else 429
        self.outage_answers[status] += 1
        return status, {"error": {"message": "the endpoint is restarting", "code": status}}
      user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
      words = re.findall(r"[a-z]+", (user[-1] if user else "").lower())
      content = CHAT_REPLY.format(words=" ".join(words[-(2 + len(words) % 5):]) or "wait")
      tokens = len(content.split())
      self.completions += 1
      self.completion_tokens += tokens
    return 200, {
        "id": f"chatcmpl-{self.completions}", "object": "chat.completion", "created": 0,
        "model": body.get("model", MODEL_ALIAS),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": tokens,
                  "total_tokens": tokens + 1}}

  def handler_class(self):
    server = self

    class Handler(_JsonHandler):
      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.reply(*server._answer(body, self.headers.get("Authorization", "")))

    return Handler


class FakeSecretManager(_Server):
  """Secret Manager's REST API on 127.0.0.1, as far as `access_secret_version` goes:
  `GET /v1/<version name>:access` answers the version's payload (base64, with its CRC32C, as
  the service does), 404 for a version it does not hold. `requests` lists the names asked for.
  `client()` is the real `SecretManagerServiceClient`, on its REST transport, pointed here
  with anonymous credentials."""

  def __init__(self, secrets: dict[str, bytes]):
    self.secrets = dict(secrets)
    self.requests: list[str] = []
    super().__init__()
    self.url = f"http://127.0.0.1:{self.port}"

  def client(self):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    # the class itself, not `google.cloud.secretmanager`'s name for it, which a test replaces
    from google.cloud.secretmanager_v1 import SecretManagerServiceClient
    return SecretManagerServiceClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=self.url))

  def handler_class(self):
    server = self

    class Handler(_JsonHandler):
      def do_GET(self):
        import google_crc32c
        path = self.path.split("?", 1)[0]
        name = path[len("/v1/"):-len(":access")] if path.endswith(":access") else ""
        with server._lock:
          server.requests.append(name)
        if name not in server.secrets:
          return self.reply(404, {"error": {
              "code": 404, "status": "NOT_FOUND",
              "message": f"Secret Version [{name}] not found."}})
        data = server.secrets[name]
        return self.reply(200, {"name": name, "payload": {
            "data": base64.b64encode(data).decode(),
            "dataCrc32c": str(google_crc32c.value(data))}})

    return Handler
