"""What the engine tests share: running an engine, the input, the byte comparison.

Every engine run happens in a child process in a private network namespace (see
engine_harness.py), so the servers that Beam, Flink and Prism start are reachable on 127.0.0.1
only and nothing leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import typing

import pytest

import engine_harness as harness

# Every output folder the pipeline writes shards into.
OUTPUT_FOLDERS = ("raw", "safeweb", "refuseweb", "moral_education", "tagged", "dead_letter")
GENERATED = ("safeweb", "refuseweb", "moral_education")
# Small and short, so an engine run stays within a few minutes on 2 cores, with generation on.
# --quality=off: the gate still reviews and reports every text, but the embedded 135M model at
# 32 new tokens writes no RefuseWeb dialogue that passes it, and these runs compare runners, so
# every branch must hold records (the gate's own tests are tests/transforms/test_quality.py).
RUN_OPTIONS = ("--num_shards=2", "--max_chars=5000", "--max_new_tokens=32", "--quality=off")
# Broken records, so dead_letter/ has read and validate entries on every engine.
BROKEN_LINES = (
    b'{"id": "b1", "text": "cut off in the mid\n',
    b'{"id": "b2", "text": "bad bytes \xff\xfe here"}\n',
    b'["an", "array"]\n',
    b'{"id": "b4", "body": "no text field"}\n',
    b'{"id": "b5", "text": ""}\n',
)
ENGINE_TIMEOUT_S = 900


class EngineRun(typing.NamedTuple):
  output: str
  seconds: float


def run_engine(engine: str, output: str, *args: str, timeout: float = ENGINE_TIMEOUT_S,
               env: dict[str, str] | None = None) -> EngineRun:
  """`engine_harness.py ENGINE OUTPUT ARGS...` in a private network namespace; fails the test
  with the harness's output when it exits non-zero."""
  command = harness.private_network_command(
      [sys.executable, os.path.join(os.path.dirname(__file__), "engine_harness.py"), engine,
       output, *args])
  started = time.monotonic()
  done = subprocess.run(command, cwd=harness.REPO, capture_output=True, text=True,
                        timeout=timeout, env={**harness.child_environment(), **(env or {})},
                        check=False)
  seconds = time.monotonic() - started
  if done.returncode != 0:
    pytest.fail(f"{engine} run exited with {done.returncode}:\n"
                f"{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
  print(f"{engine}: {seconds:.1f}s")
  return EngineRun(output, seconds)


def output_files(output: str) -> dict[str, bytes]:
  """Every shard of every output folder, by path relative to `output`."""
  files = {}
  for folder in OUTPUT_FOLDERS:
    directory = os.path.join(output, folder)
    assert os.path.isdir(directory), f"{directory} is missing"
    for name in sorted(os.listdir(directory)):
      if name.startswith("part-"):
        with open(os.path.join(directory, name), "rb") as f:
          files[f"{folder}/{name}"] = f.read()
  return files


def assert_same_bytes(reference: str, output: str) -> None:
  """Every shard of `output` equals the reference's, byte for byte, and none is missing."""
  expected, actual = output_files(reference), output_files(output)
  assert sorted(actual) == sorted(expected)
  different = [name for name in expected if actual[name] != expected[name]]
  assert not different, (
      f"shards that differ from DirectRunner's: {different}; compare the records with "
      f"corpus.dataset.make_dataset on {reference} and {output}")


def run_engine_failing(engine: str, output: str, *args: str,
                       timeout: float = ENGINE_TIMEOUT_S) -> str:
  """`run_engine` for a run that must fail: fails the test when it exits zero; returns its
  output (stdout and stderr)."""
  command = harness.private_network_command(
      [sys.executable, os.path.join(os.path.dirname(__file__), "engine_harness.py"), engine,
       output, *args])
  done = subprocess.run(command, cwd=harness.REPO, capture_output=True, text=True,
                        timeout=timeout, env=harness.child_environment(), check=False)
  if done.returncode == 0:
    pytest.fail(f"{engine} run succeeded, but it must fail:\n{done.stdout[-4000:]}")
  return done.stdout + done.stderr
