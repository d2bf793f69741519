"""The pipeline on a real standalone Flink cluster gives DirectRunner's files, byte for byte.

The harness (engine_harness.run_flink) starts, in a private network namespace: a Flink JobManager
and a TaskManager as separate JVMs from Flink's Maven Central jars, Beam's Flink job server
(FlinkJobServerDriver from Beam's Flink runner on Maven Central) and an SDK worker pool for the
EXTERNAL environment; then submits the pipeline with PortableRunner, generation included, on
the same input and options as the DirectRunner reference. Versions: engines/versions.env;
`make engines` fetches them.
"""

from __future__ import annotations

import json
import os

import pytest

import engine_harness as harness
from engine_runs import assert_same_bytes, run_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flink_run(tmp_path_factory, engine_args):
  return run_engine("flink", str(tmp_path_factory.mktemp("flink") / "out"), *engine_args)


def test_flink_cluster_ran_the_job(flink_run):
  """The job ran on the standalone cluster (its REST API lists it as finished)."""
  with open(os.path.join(flink_run.output + ".logs", "flink-jobs.json"), encoding="utf-8") as f:
    jobs = json.load(f)
  assert jobs and all(job["state"] == "FINISHED" for job in jobs), jobs
  with open(os.path.join(flink_run.output, "report.json"), encoding="utf-8") as f:
    assert json.load(f)["checks_hold"]


def test_flink_output_equals_direct_runner(flink_run, direct_reference):
  assert_same_bytes(direct_reference.output, flink_run.output)


def test_flink_versions_are_a_pair_beam_supports():
  """The cluster's Flink minor is the job server's, and one Beam's Python SDK knows."""
  from apache_beam.options.pipeline_options import FlinkRunnerOptions
  versions = harness.versions()
  assert versions["FLINK_VERSION"].startswith(versions["FLINK_MINOR"] + ".")
  assert versions["FLINK_MINOR"] in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
  assert os.path.isfile(harness.flink_job_server_jar())
