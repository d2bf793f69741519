"""A Flex Template launch: `python -m beam_pipeline.run` as the template launcher runs it
(DataflowRunner with --template_location), against the Cloud Storage emulator in a private
network namespace (tests/e2e/reliability/template_driver.py). It must exit 0, say where the output
and report will appear, and write a template whose job graph ends in CommitOutput: the job
commits its own output, since nothing waits for it after the launch. The launch also stages the
default classifier's model folder under the temp location, where the workers download it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from beam_pipeline.options import SAMPLE_INPUT

from .conftest import REPO, require_root_namespaces, subprocess_env


def test_template_launch_exits_0_and_its_graph_commits_itself(tmp_path):
  require_root_namespaces()
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    pytest.fail("gcp-storage-emulator is needed: `make setup` installs the dev extras")
  (tmp_path / "in").mkdir()
  shutil.copy(SAMPLE_INPUT, tmp_path / "in" / "sample.jsonl")
  driver_command = f'exec "{sys.executable}" -m tests.e2e.reliability.template_driver "{tmp_path}"'
  driver = subprocess.run(
      ["unshare", "-n", "sh", "-c", f"ip link set lo up && {driver_command}"], cwd=REPO,
      env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
  assert driver.returncode == 0, driver.stderr[-4000:]
  found = json.loads(driver.stdout.strip().splitlines()[-1])
  assert found["returncode"] == 0, found["stderr"]
  assert "gs://safety-pretraining-test/out/report.json" in found["stdout"], found["stdout"]
  spec = found["template"]
  assert spec is not None, found["objects"]
  assert spec["type"] == "JOB_TYPE_BATCH"
  steps = found["steps"]
  assert {"Read", "Score", "RunStatistics", "BuildReport", "CommitOutput"} <= set(steps), steps
  # Nothing was committed or staged under the output by the launch itself.
  assert not [name for name in found["objects"] if name.startswith("out/")], found["objects"]
  # The launching side built the default classifier and staged its model folder under the
  # job's temp location, named by its content; the job's options send the workers there (they
  # only download it: lean workers have no torch to build it with).
  staged = sorted(name for name in found["objects"]
                  if name.startswith("tmp/safety-pretraining/classifier/"))
  assert [name.rsplit("/", 1)[1] for name in staged] == [
      "model.int8.onnx", "model.json", "tokenizer.json"]
  folder = staged[0].rsplit("/", 1)[0]
  options = spec["environment"]["sdkPipelineOptions"]["options"]
  assert options["classifier_model"] == f"gs://safety-pretraining-test/{folder}", options
