"""The graph commits itself on Prism and on Flink: built with
`beam_pipeline.pipeline.build` and run with no run.py around it (tests/engines/build_only.py),
the job leaves committed shards, report.json and report.html, and nothing in staging; the shards
are DirectRunner's, byte for byte. On Flink, a retried commit of a committed run does nothing,
and a run whose checks fail replaces nothing, commits its report under .failed/<run id>/ and
fails the job."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from engine_runs import assert_same_bytes, run_engine, run_engine_failing

pytestmark = pytest.mark.slow


def _check_committed(output: str) -> None:
  assert not os.path.exists(os.path.join(output, ".staging"))
  with open(os.path.join(output, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert report["checks_hold"], report["checks"]
  assert os.path.isfile(os.path.join(output, "report.html"))


def test_graph_commits_itself_on_prism_without_run_py(tmp_path, engine_args, direct_reference):
  run = run_engine("prism-build-only", str(tmp_path / "out"), *engine_args)
  _check_committed(run.output)
  assert_same_bytes(direct_reference.output, run.output)


def test_graph_commits_itself_on_flink_without_run_py(tmp_path, engine_args, direct_reference):
  """The same on a standalone Flink cluster (Beam's job server, EXTERNAL SDK workers)."""
  run = run_engine("flink-build-only", str(tmp_path / "out"), *engine_args)
  _check_committed(run.output)
  assert_same_bytes(direct_reference.output, run.output)


def _tree(output: str) -> dict:
  """{relative path: (bytes, modification time)} of every file under `output`."""
  files = {}
  for root, _, names in os.walk(output):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, output)] = (f.read(), os.stat(path).st_mtime_ns)
  return files


def test_a_retried_commit_of_a_committed_run_does_nothing_on_flink(tmp_path, engine_input):
  """The job run again with the same run id, as a runner's retry of its last stage would meet
  it: with and without --overwrite, CommitOutput finds the run committed (.committed_run) and
  neither refuses nor deletes and rewrites report.json."""
  output = str(tmp_path / "out")
  args = (f"--input={engine_input}", "--generation=off", "--num_shards=2", "--run_id=nightly-1")
  run_engine("flink-build-only", output, *args)
  committed = _tree(output)
  for retry in ((), ("--overwrite",)):
    run_engine("flink-build-only", output, *args, *retry)
    assert _tree(output) == committed, retry
  assert json.loads(committed[".committed_run"][0]) == {"run_id": "nightly-1"}


def test_a_run_whose_checks_fail_replaces_nothing_on_flink(tmp_path, direct_reference):
  """A good run's output, then a Flink job with --overwrite that reads nothing (its empty_input
  check fails): the job fails, the good output is byte for byte as it was, and the failed run's
  report is under .failed/<run id>/."""
  output = str(tmp_path / "out")
  shutil.copytree(direct_reference.output, output)
  good = {name: data for name, (data, _) in _tree(output).items()}
  log = run_engine_failing("flink-build-only", output, f"--input={tmp_path}/none/*.jsonl",
                           "--generation=off", "--num_shards=2", "--overwrite")
  assert "the run's checks failed (empty_input)" in log, log[-4000:]
  after = {name: data for name, (data, _) in _tree(output).items()}
  assert {name: data for name, data in after.items() if not name.startswith(".failed/")} == good
  (report_path,) = glob.glob(os.path.join(output, ".failed", "*", "report.json"))
  with open(report_path, encoding="utf-8") as f:
    report = json.load(f)
  assert report["failed_checks"] == ["empty_input"] and not report["checks_hold"]
  assert os.path.isfile(os.path.join(os.path.dirname(report_path), "report.html"))
  assert not os.path.exists(os.path.join(output, ".staging"))
