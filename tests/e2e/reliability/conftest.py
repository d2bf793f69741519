"""Shared parts of the reliability tests: reading a run's output back, running the pipeline in a
subprocess, the tools some tests need, and the bad-input corpus run the report card reuses."""

from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import typing

import pytest

from beam_pipeline import run as entry
from corpus.records import BRANCHES
from corpus.schema import example_bytes_to_document

from .corpus import write_corpus

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
# Lines for the end-of-run summary (pytest_terminal_summary below).
SUMMARY_LINES: typing.List[str] = []


def pytest_terminal_summary(terminalreporter):
  if SUMMARY_LINES:
    terminalreporter.section("reliability")
    for line in SUMMARY_LINES:
      terminalreporter.write_line(line)


def tfrecords(path: str) -> typing.Iterator[bytes]:
  """The records of a gzip TFRecord file (length, CRC, data, CRC framing)."""
  with gzip.open(path, "rb") as f:
    while True:
      header = f.read(12)
      if not header:
        return
      (length,) = struct.unpack("<Q", header[:8])
      yield f.read(length)
      f.read(4)


def read_documents(output: str, branches=BRANCHES) -> list:
  """Every Document written to `output`'s branch folders."""
  documents = []
  for branch in branches:
    for path in sorted(glob.glob(os.path.join(output, branch, "part-*.tfrecord.gz"))):
      documents.extend(example_bytes_to_document(record) for record in tfrecords(path))
  return documents


def read_dead_letters(output: str) -> typing.List[dict]:
  dead = []
  for path in sorted(glob.glob(os.path.join(output, "dead_letter", "part-*.jsonl.gz"))):
    with gzip.open(path, "rt", encoding="utf-8") as f:
      dead.extend(json.loads(line) for line in f)
  return dead


def output_tree(output: str) -> typing.Dict[str, bytes]:
  """{relative path: bytes} of every file under `output`, hidden ones included."""
  files = {}
  for root, _, names in os.walk(output):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, output)] = f.read()
  return files


def subprocess_env(**extra) -> dict:
  env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             PYTHONPATH=REPO)
  env.update(extra)
  return env


def pipeline_command(*args: str) -> typing.List[str]:
  return [sys.executable, "-m", "beam_pipeline.run", "--runner=DirectRunner", *args]


def run_pipeline(*args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
  """`python -m beam_pipeline.run` in a subprocess, as a user runs it."""
  return subprocess.run(pipeline_command(*args), cwd=REPO, env=subprocess_env(**env),
                        capture_output=True, text=True, timeout=timeout, check=False)


def require(tool: str, why: str) -> str:
  """The tool's path; skips the test without it on a developer's machine, fails it in CI."""
  path = shutil.which(tool)
  if path:
    return path
  message = f"{tool} is needed for {why}: `make test` installs it (see the Makefile)"
  if os.environ.get("CI"):
    pytest.fail(message)
  pytest.skip(message)


def require_root_namespaces() -> None:
  """Servers in tests run in a private network namespace: root and unshare(1) are needed."""
  require("unshare", "a private network namespace")
  probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
  if probe.returncode != 0:
    message = f"cannot make a network namespace: {probe.stderr.decode(errors='replace')}"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def bad_input_run(tmp_path_factory):
  """The whole bad-input corpus through the pipeline once: (kinds, output folder, report)."""
  base = tmp_path_factory.mktemp("bad_inputs")
  corpus = base / "in"
  corpus.mkdir()
  kinds = write_corpus(corpus)
  output = str(base / "out")
  report = entry.run([
      "--runner=DirectRunner", f"--input={corpus}/*", f"--output={output}", "--generation=off",
      "--unreadable_files=dead_letter", "--num_shards=2", "--progress_interval_s=1"])
  return kinds, output, report
