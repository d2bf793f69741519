"""What a refused request's dead letter says: `HTTP <status>: <the server's own message>`, taken
from the error body the server sent, in each server family's shape, through the real openai
client over real HTTP (a server on 127.0.0.1 that answers every request with one error). Never
the client's exception text, which openai < 3 fills with the body's Python repr and openai 3
leaves without the message of a body that has no `message` field."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from models.generators.backend import HTTP_ERROR, REQUEST_REJECTED
from models.generators.openai_endpoint import OpenAIEndpointHandler

# (status, body as sent, the dead letter's error)
ERROR_BODIES = {
    "openai": (400, {"error": {"message": "This model's maximum context length is 2048 tokens",
                               "type": "invalid_request_error", "param": "messages",
                               "code": "context_length_exceeded"}},
               "HTTP 400: This model's maximum context length is 2048 tokens"),
    "vllm": (400, {"object": "error", "message": "max_tokens must be at most 1024",
                   "type": "BadRequestError", "param": None, "code": 400},
             "HTTP 400: max_tokens must be at most 1024"),
    "tgi": (422, {"error": "Input validation error: `inputs` must have less than 4096 tokens",
                  "error_type": "validation"},
            "HTTP 422: Input validation error: `inputs` must have less than 4096 tokens"),
    "fastapi": (404, {"detail": "Model smollm3 not found"}, "HTTP 404: Model smollm3 not found"),
    "fastapi-validation": (422, {"detail": [{"loc": ["body", "messages"], "msg": "required"}]},
                           'HTTP 422: {"detail": [{"loc": ["body", "messages"], "msg": '
                           '"required"}]}'),
    "text": (503, "upstream unavailable", "HTTP 503: upstream unavailable"),
    "empty": (502, "", "HTTP 502: Bad Gateway"),
}


class _ErrorServer:
  """Answers every chat-completions request with the error of the kind named in its prompt."""

  def __init__(self):
    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):  # quiet
        pass

      def do_POST(self):
        request = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        kind = json.loads(request)["messages"][-1]["content"]
        status, body, _ = ERROR_BODIES[kind]
        payload = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def close(self):
    self._server.shutdown()
    self._server.server_close()


@pytest.fixture(scope="module")
def endpoint():
  server = _ErrorServer()
  handler = OpenAIEndpointHandler(
      base_url=server.base_url, model="any", api_key_env="none", timeout_s=10,
      max_new_tokens=8, max_in_flight=2, prefill="none")
  yield handler, handler.load_model()
  server.close()


@pytest.mark.parametrize("kind", sorted(ERROR_BODIES))
def test_the_detail_is_the_servers_message(endpoint, kind):
  handler, model = endpoint
  status, _, expected = ERROR_BODIES[kind]
  [result] = handler.run_inference([[("user", kind)]], model)
  generation = result.inference
  assert generation.status == status
  assert generation.error == (REQUEST_REJECTED if status < 500 else HTTP_ERROR)
  assert generation.detail == expected
  assert "Error code" not in generation.detail and "{'" not in generation.detail
