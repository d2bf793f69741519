"""The graph commits itself on Prism and on Flink: built with
`beam_pipeline.pipeline.build` and run with no run.py around it (tests/engines/build_only.py),
the job leaves committed shards, report.json and report.html, and nothing in staging; the shards
are DirectRunner's, byte for byte."""

from __future__ import annotations

import json
import os

import pytest

from engine_runs import assert_same_bytes, run_engine

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
