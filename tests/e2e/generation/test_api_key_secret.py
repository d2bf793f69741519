"""--openai_api_key_secret: the key is read on the worker from Secret Manager, by the real
`google-cloud-secret-manager` client (Beam's `GcpSecret`) talking to a fake of the service's
REST API on 127.0.0.1, and sent to a server that checks the Authorization header. It appears in
no option, log, pickled handler, output or dead letter."""

from __future__ import annotations

import base64
import glob
import gzip
import json
import logging
import os
import pickle
import subprocess
import sys
import uuid

import pytest
from google.cloud import secretmanager

from beam_pipeline import run as entry
from beam_pipeline.options import SAMPLE_INPUT
from models.generators.backend import RetryingGenerator
from models.generators import openai_endpoint
from models.generators.openai_endpoint import OpenAIEndpointHandler
from tests.e2e.generation import servers

pytestmark = pytest.mark.slow
VERSION = "projects/safety-test/secrets/endpoint-key/versions/2"


@pytest.fixture
def secret_key() -> str:
  return f"sk-secret-{uuid.uuid4().hex}"


@pytest.fixture
def secret_manager(secret_key, monkeypatch):
  """The fake Secret Manager holding `secret_key` (with the newline `gcloud secrets create
  --data-file` often keeps) at VERSION; Beam's GcpSecret makes its client through it."""
  with servers.FakeSecretManager({VERSION: f"{secret_key}\n".encode()}) as fake:
    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", fake.client)
    yield fake


def _leaks(key: str, text: str | bytes) -> bool:
  data = text.encode() if isinstance(text, str) else text
  return key.encode() in data or base64.b64encode(key.encode()) in data


def _files(folder: str) -> bytes:
  data = b""
  for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        raw = f.read()
      data += gzip.decompress(raw) if path.endswith(".gz") else raw
  return data


def test_a_run_reads_the_key_from_secret_manager_and_nowhere_else(
    secret_manager, secret_key, monkeypatch, tmp_path, caplog):
  """The whole pipeline on the DirectRunner: no OPENAI_API_KEY anywhere, the key read from
  the secret on load, every request carrying it, and the key in no log or output file."""
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  output = str(tmp_path / "out")
  caplog.set_level(logging.DEBUG)
  with servers.ChatServer(api_key=secret_key) as server:
    report = entry.run([
        "--runner=DirectRunner", f"--input={SAMPLE_INPUT}", f"--output={output}",
        "--num_shards=1", "--generator=openai", f"--openai_base_url={server.base_url}",
        f"--openai_model={servers.MODEL_ALIAS}", f"--openai_api_key_secret={VERSION}",
        "--quality=off", "--max_new_tokens=32", "--max_in_flight=4"])
  assert server.completions > 0 and server.unauthorized == 0
  assert server.authorizations == {f"Bearer {secret_key}"}  # stripped of its newline
  assert secret_manager.requests and set(secret_manager.requests) == {VERSION}
  for stage in ("rephrase", "refuseweb", "moral_education"):
    reasons = report["dead_letters"].get(stage, {})
    assert not {r for r in reasons if r.startswith("generation_")}, reasons
  assert report["per_branch"]["safeweb"] > 0 and report["per_branch"]["refuseweb"] > 0
  assert report["checks_hold"], json.dumps(report.get("failed_checks"))
  assert not _leaks(secret_key, caplog.text)
  assert not _leaks(secret_key, _files(output))  # the corpus, report, dead letters
  assert not _leaks(secret_key, json.dumps(report))


def test_the_secret_key_is_what_a_keyed_llama_server_accepts(
    keyed_llama_server, api_key, monkeypatch):
  """A real request to llama.cpp's server started with --api_key: the key from the secret
  gets a reply (a wrong one gets 401, tests/e2e/generation/test_openai_endpoint.py). The
  handler that travels to the workers holds only the version's name."""
  with servers.FakeSecretManager({VERSION: api_key.encode()}) as fake:
    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", fake.client)
    handler = OpenAIEndpointHandler(
        base_url=keyed_llama_server.base_url, model=servers.MODEL_ALIAS, max_new_tokens=8,
        api_key_secret=VERSION)
    assert not _leaks(api_key, pickle.dumps(handler))
    [result] = RetryingGenerator(handler, max_attempts=1).run_inference(
        [[("user", "Name a colour.")]], handler.load_model())
    assert fake.requests == [VERSION]
  assert result.inference.error == "" and result.inference.text.strip(), result.inference
  assert not _leaks(api_key, pickle.dumps(handler))  # loading keeps nothing in the handler


def test_an_unreadable_secret_fails_the_load_with_one_clear_error(secret_manager, secret_key):
  """A version the service does not hold (or may not be read): load_model fails before any
  request, naming the version and the role the worker needs, never the key."""
  missing = VERSION.replace("versions/2", "versions/9")
  handler = OpenAIEndpointHandler("http://127.0.0.1:9/v1", "m", api_key_secret=missing)
  with pytest.raises(openai_endpoint.ApiKeySecretError) as raised:
    handler.load_model()
  message = str(raised.value)
  assert missing in message and "roles/secretmanager.secretAccessor" in message
  assert "not found" in message.lower() and not _leaks(secret_key, message)
  assert secret_manager.requests == [missing]


_DEBUG_READ = """
import logging, sys
logging.basicConfig(level=logging.DEBUG)
from google.cloud import secretmanager
from tests.e2e.generation.servers import FakeSecretManager
from models.generators.openai_endpoint import api_key_from_secret
with FakeSecretManager({sys.argv[1]: sys.argv[2].encode()}) as fake:
  secretmanager.SecretManagerServiceClient = fake.client
  assert api_key_from_secret(sys.argv[1]) == sys.argv[2]
print("read", fake.requests)
"""


def test_the_secret_client_logs_no_key_even_at_debug(secret_key):
  """Secret Manager's client writes a DEBUG record of every response it receives, its payload
  (the secret) included, and GOOGLE_SDK_PYTHON_LOGGING_SCOPE turns those on: reading the key
  keeps them off. (google-cloud-secret-manager 2.32 fails to serialise the payload and logs
  null, so the records themselves are what is checked for: a fixed client would log the key.)"""
  done = subprocess.run(
      [sys.executable, "-c", _DEBUG_READ, VERSION, secret_key], cwd=servers.REPO,
      env=dict(os.environ, PYTHONPATH=str(servers.REPO),
               GOOGLE_SDK_PYTHON_LOGGING_SCOPE="google.cloud.secretmanager_v1"),
      capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f"read ['{VERSION}']" in done.stdout
  assert not _leaks(secret_key, done.stdout + done.stderr)
  assert "Received response for" not in done.stdout + done.stderr
