"""Total failure is loud: a run whose every generation request fails (here a real connection
error: the endpoint's port on 127.0.0.1 has nothing listening) exits non-zero, its report's
checks do not hold, and the summary names the failed checks. It commits no output: its report
goes to <output>/.failed/<run id>/. Nothing is lost meanwhile: every failed request is a dead
letter."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.e2e.generation.servers import REPO, free_port

pytestmark = pytest.mark.slow


def test_a_run_whose_every_generation_request_fails_exits_non_zero(tmp_path):
  output = str(tmp_path / "out")
  dead_endpoint = f"http://127.0.0.1:{free_port()}/v1"
  done = subprocess.run(
      [sys.executable, "-m", "beam_pipeline.run", "--runner=DirectRunner", f"--output={output}",
       "--generator=openai", f"--openai_base_url={dead_endpoint}", "--openai_api_key_env=none", "--max_attempts=2",
       "--retry_backoff_s=0.01", "--max_backoff_s=0.02", "--retry_budget_s=0.5",
       "--request_timeout_s=5",
       "--num_shards=1"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
      timeout=600, check=False)
  assert done.returncode == 1, done.stderr[-3000:]
  assert "error: check safeweb_failures failed" in done.stderr, done.stderr[-3000:]
  assert "error: check refuseweb_failures failed" in done.stderr, done.stderr[-3000:]
  assert "FAILED check safeweb_failures" in done.stdout
  assert not os.path.exists(os.path.join(output, "report.json"))
  (failed,) = glob.glob(os.path.join(output, ".failed", "*", "report.json"))
  with open(failed, encoding="utf-8") as f:
    report = json.load(f)
  assert not report["checks_hold"]
  assert set(report["failed_checks"]) == {"safeweb_failures", "refuseweb_failures"}
  for branch in ("safeweb", "refuseweb"):
    entry = report["checks"]["generation"][branch]
    assert entry["requests"] > 0 and entry["outputs"] == 0
    assert entry["failures"] == entry["requests"] == entry["dead_letters"], entry
    assert entry["balanced"] and entry["failure_fraction"] == 1.0
  # No refusal came through, so Moral Education got no request: nothing to fail there.
  assert report["checks"]["generation"]["moral_education"]["requests"] == 0
  assert report["dead_letters"]["rephrase"] == {
      "generation_connection_error": report["checks"]["generation"]["safeweb"]["requests"]}
