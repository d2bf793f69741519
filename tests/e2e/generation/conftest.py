"""Fixtures of the generation tests: the real llama.cpp server, with and without an API key."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.generation.servers import LlamaServer, llama_python


def _gguf() -> str:
  from models.generators.local import default_model_path
  return default_model_path()


def _require_llama():
  if llama_python() is None:
    pytest.fail("The llama.cpp server is not installed: run `make llama-server` (the README's "
                "test command does), or point LLAMA_SERVER_PYTHON at a Python that has "
                "llama-cpp-python[server].")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
  """llama.cpp's OpenAI-compatible server on 127.0.0.1 with SmolLM2, no authentication."""
  _require_llama()
  log = tmp_path_factory.mktemp("llama") / "server.log"
  with LlamaServer(_gguf(), str(log)) as server:
    yield server


@pytest.fixture(scope="session")
def api_key() -> str:
  return f"sk-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def keyed_llama_server(tmp_path_factory, api_key):
  """The same server, requiring `api_key`."""
  _require_llama()
  log = tmp_path_factory.mktemp("llama_keyed") / "server.log"
  with LlamaServer(_gguf(), str(log), api_key=api_key) as server:
    yield server
