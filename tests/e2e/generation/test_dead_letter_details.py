"""What a person reads in dead_letter/: every line's `detail` is a JSON object, JSON all the way
down, with the server's own words for a refused request.

One run of the pipeline's command line (DirectRunner, the openai backend) on broken and
well-formed records, with the real llama.cpp server behind two fault injectors: the project's
FaultProxy (prose where a dialogue belongs) and, in front of it, a proxy that refuses
the requests of marked documents with the error bodies of four server families (OpenAI's and
llama.cpp's, vLLM's, TGI's, FastAPI's). Every dead-letter line of the written folder is read
back with `json.loads`."""

from __future__ import annotations

import glob
import gzip
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.e2e.generation import servers

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 2
# marker in a document's text -> (status, error body as sent, the dead letter's error)
REFUSALS = {
    "REFUSE-OPENAI": (400, {"error": {"message": "This model's maximum context length is 4096",
                                      "type": "invalid_request_error", "param": None,
                                      "code": None}},
                      "HTTP 400: This model's maximum context length is 4096"),
    "REFUSE-VLLM": (400, {"object": "error", "message": "max_tokens is too large",
                          "type": "BadRequestError", "param": None, "code": 400},
                    "HTTP 400: max_tokens is too large"),
    "REFUSE-TGI": (422, {"error": "Input validation error: inputs too long",
                         "error_type": "validation"},
                   "HTTP 422: Input validation error: inputs too long"),
    "REFUSE-FASTAPI": (404, {"detail": "Not Found"}, "HTTP 404: Not Found"),
}
CLEAN_TEXTS = (
    "After the match some fans had too many beers and shouted insults at each other.",
    "Neighbours argued over a fence and called each other names in the street.",
    "A driver cursed loudly at a cyclist at the traffic lights and drove off.",
    "A forum thread about picking a lock when you are locked out of your own house.",
)
# Strings that are a Python repr of a container ({'a': 1}, ['x'], ('x',), b'..') or carry one.
PYTHON_REPR = re.compile(r"[\[{(]'|'\s*:\s*['\[{(\d-]|\bb'|Error code: \d")


class _RefusingProxy:
  """Answers a chat request whose text carries a REFUSALS marker with that error; forwards
  every other request to `upstream`."""

  def __init__(self, upstream: str):
    upstream = upstream.rstrip("/")

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def _reply(self, status: int, payload: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        for marker, (status, error, _) in REFUSALS.items():
          if marker in body.decode("utf-8", "replace"):
            return self._reply(status, json.dumps(error).encode())
        request = urllib.request.Request(
            upstream + self.path[len("/v1"):], data=body, method="POST",
            headers={"Content-Type": "application/json"})
        try:
          with urllib.request.urlopen(request, timeout=600) as response:
            return self._reply(response.status, response.read())
        except urllib.error.HTTPError as error:
          return self._reply(error.code, error.read())

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

  def __enter__(self):
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()


def _input(path: str) -> None:
  lines = [json.dumps({"id": f"clean-{i}", "text": text}) for i, text in enumerate(CLEAN_TEXTS)]
  for marker in REFUSALS:
    lines.append(json.dumps({"id": marker.lower(), "text": (
        f"{marker} A short web text about a quarrel between two neighbours. {marker}")}))
  marker = servers.NOT_DIALOGUE
  lines.append(json.dumps({"id": marker.lower(), "text": (
      f"{marker} A short web text about a quarrel at a bus stop. {marker}")}))
  lines += [
      '{"id": "cut", "text": "cut off in the mid',
      '["an", "array"]',
      json.dumps({"id": "no-text", "body": "no text field", "lang": "en"}),
      json.dumps({"id": "empty", "text": ""}),
      json.dumps({"id": "number", "text": 42}),
      json.dumps({"id": "clean-0", "text": "the same id again, another text"}),
  ]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _dead_letters(output: str) -> list[dict]:
  lines = []
  for path in sorted(glob.glob(os.path.join(output, "dead_letter", "*.jsonl.gz"))):
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines += [json.loads(line) for line in f if line.strip()]
  return lines


def _json_values(value, where: str):
  """(where, string) for every string in a detail; fails on anything that is no JSON value."""
  if isinstance(value, dict):
    for key, item in value.items():
      assert isinstance(key, str), (where, key)
      yield from _json_values(item, f"{where}.{key}")
  elif isinstance(value, list):
    for index, item in enumerate(value):
      yield from _json_values(item, f"{where}[{index}]")
  elif isinstance(value, str):
    yield where, value
  else:
    assert value is None or isinstance(value, (bool, int, float)), (where, value)


def _is_json_text_of_a_container(text: str) -> bool:
  try:
    return isinstance(json.loads(text), (dict, list))
  except ValueError:
    return False


def test_every_dead_letter_detail_is_a_json_object(llama_server, tmp_path):
  source = str(tmp_path / "input.jsonl")
  output = str(tmp_path / "out")
  _input(source)
  with servers.FaultProxy(llama_server.base_url) as faults, _RefusingProxy(
      faults.base_url) as proxy:
    done = subprocess.run(
        [sys.executable, "-m", "beam_pipeline.run", "--runner=DirectRunner",
         f"--input={source}", f"--output={output}", "--num_shards=1",
         "--generator=openai", f"--openai_base_url={proxy.base_url}",
         f"--openai_model={servers.MODEL_ALIAS}", "--openai_api_key_env=none",
         "--openai_prefill=none", f"--max_attempts={MAX_ATTEMPTS}", "--retry_backoff_s=0.01",
         "--max_backoff_s=0.02", "--request_timeout_s=120", "--max_new_tokens=32",
         # every document goes to both generation branches, whatever its score
         "--rephrase_min_score=0", "--rephrase_max_score=5", "--refuse_min_score=0",
         "--refuse_max_score=5", "--max_failure_fraction=0.9"],
        cwd=servers.REPO, env=dict(os.environ, PYTHONPATH=str(servers.REPO)),
        capture_output=True, text=True, timeout=1200, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  letters = _dead_letters(output)
  assert letters, os.listdir(output)

  for letter in letters:
    detail = letter["detail"]
    assert isinstance(detail, dict), letter
    for where, text in _json_values(detail, "detail"):
      if where == "detail.reply":  # the model's reply, as it wrote it
        continue
      assert not PYTHON_REPR.search(text), (letter["id"], where, text)
      assert not _is_json_text_of_a_container(text), (letter["id"], where, text)

  by_key = {(letter["id"], letter["stage"]): letter for letter in letters}
  for marker, (status, _, error) in REFUSALS.items():
    for stage in ("rephrase", "refuseweb"):
      letter = by_key[(marker.lower(), stage)]
      assert letter["reason"] == "generation_request_rejected", letter
      assert letter["detail"]["status"] == status and letter["detail"]["attempts"] == 1, letter
      assert letter["detail"]["error"] == error, letter
  # A reply rejected on every attempt carries each attempt's review, as objects.
  monologue = by_key[(servers.NOT_DIALOGUE.lower(), "refuseweb")]
  assert monologue["reason"] == "not_a_dialogue", monologue
  reviews = monologue["detail"]["reviews"]
  assert len(reviews) == MAX_ATTEMPTS and all(isinstance(r, dict) for r in reviews), monologue
  # The records the reader and the validation stopped.
  reasons = {(letter["stage"], letter["reason"]) for letter in letters}
  assert {("read", "invalid_json"), ("read", "not_an_object"), ("validate", "missing_text"),
          ("validate", "empty_text"), ("validate", "text_not_string"),
          ("deduplicate", "duplicate_id")} <= reasons, reasons
  assert by_key[("no-text", "validate")]["detail"]["fields"] == ["body", "id", "lang"]
