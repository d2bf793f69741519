"""The console of `make run` on a machine that has built nothing yet: one line per build step,
the pipeline's summary, and none of the tools' chatter (ONNX Runtime's per-operator and
per-tensor INFO, transformers' load report and weight-loading bars, the GGUF conversion's
bar, PyTorch's export warnings, TensorFlow's CUDA notes).

The commands are the Makefile's (`models` then `run`), each in its own process with a fresh
cache folder, as on a first run; the run is the embedded default with --generation=off (the
generator's load is checked on its own, below, so the test stays a few minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow

# What the tools print when nothing holds them back.
TOOL_CHATTER = re.compile("|".join((
    r"Quantization parameters for tensor", r"get_tensor_type returns", r"\bFused \w+",
    r"Removed \d+ nodes", r"Model saved to", r"Please consider to run pre-processing",
    r"Optimized operators", r"Sort graphs", r"opset version",  # ONNX Runtime
    r"LOAD REPORT", r"UNEXPECTED", r"Loading weights", r"GGUF tensors", r"Writing model shards",
    r"\d+%\|", r"it/s\]",  # transformers and tqdm
    r"TracerWarning", r"DeprecationWarning", r"FutureWarning", r"torch\.onnx\.export",  # torch
    r"CUDA", r"cuda", r"oneDNN", r"absl::InitializeLog", r"cpu_feature_guard",  # TensorFlow
    r"^INFO:", r"^I\d{4} ", r"^W\d{4} ",
)))
BUILD_LINE = r"building {} \(once\) \.\.\. done in \d+ s"
SUMMARY_LINES = ("documents read: ", "per score: ", "per branch: ", "dead letters: ",
                 "check originals: read ", "check read_failures: ", "report: ", "report card: ")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
  done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=1200, check=False)
  assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-5000:])
  return done


def _chatter(done: subprocess.CompletedProcess) -> list[str]:
  lines = (done.stdout + done.stderr).splitlines()
  return [line for line in lines if TOOL_CHATTER.search(line)]


def test_first_run_prints_one_line_per_build_step_and_the_summary(tmp_path):
  env = dict(os.environ, SAFETY_PRETRAINING_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO,
             HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
  export = _run(env, "-m", "models.classifier.export")
  assert not _chatter(export), _chatter(export)[:20]
  assert re.fullmatch(BUILD_LINE.format("the classifier model folder"),
                      export.stderr.strip()), export.stderr[-3000:]

  prepare = _run(env, "-m", "models.generators.local", "--prepare")
  assert not _chatter(prepare), _chatter(prepare)[:20]
  assert re.fullmatch(BUILD_LINE.format(r"the local generator from \S+\.gguf"),
                      prepare.stderr.strip()), prepare.stderr[-3000:]
  assert prepare.stdout.strip().startswith(str(tmp_path / "cache"))  # the path, for scripts

  # Built once: a second time, the steps print nothing on the console's error stream.
  again = _run(env, "-m", "models.classifier.export")
  assert not again.stderr.strip(), again.stderr[-3000:]

  run = _run(env, "-m", "beam_pipeline.run", "--runner=DirectRunner",
             f"--output={tmp_path / 'out'}", "--generation=off", "--num_shards=1")
  assert not _chatter(run), _chatter(run)[:20]
  for start in SUMMARY_LINES:
    assert any(line.startswith(start) for line in run.stdout.splitlines()), (start, run.stdout)
  # What else the run says is the project's own (its progress lines), not a tool's.
  others = [line for line in run.stderr.splitlines() if " progress: " not in line]
  assert not others, others[:20]

  # The local generator's load, as each generation step's worker does it: no weight-loading bar.
  load = _run(env, "-c", "from models.generators.local import LocalGeneratorHandler; "
              "LocalGeneratorHandler().load_model()")
  assert not _chatter(load), _chatter(load)[:20]
