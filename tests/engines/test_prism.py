"""Prism, Beam's portable local runner, built from its Go module at Beam's version: the
pipeline gives DirectRunner's files byte for byte, and no run ever downloads Prism.

Beam 2.77's DirectRunner hands a pipeline that Prism supports to the PrismRunner, which without
--prism_location downloads Prism from GitHub at run time (test_plain_beam_would_download shows
it, so the recorder below is known to see it). beam_pipeline.launch points --prism_location at
the binary `make engines` builds, or turns the switch off where there is none.
"""

from __future__ import annotations

import json
import os

import pytest

import engine_harness as harness
from engine_runs import assert_same_bytes, run_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prism_run(tmp_path_factory, engine_args):
  return run_engine("prism", str(tmp_path_factory.mktemp("prism") / "out"), *engine_args)


def test_prism_output_equals_direct_runner(prism_run, direct_reference):
  assert_same_bytes(direct_reference.output, prism_run.output)


def test_prism_is_built_at_the_pinned_beam_version():
  from apache_beam.version import __version__ as beam_version

  from beam_pipeline import launch
  assert harness.versions()["PRISM_VERSION"] == f"v{beam_version}"
  assert launch.prism_binary() == harness.prism_binary()
  assert os.access(harness.prism_binary(), os.X_OK)


def test_default_run_attempted_no_prism_download(direct_reference):
  """The reference run (the pipeline's default DirectRunner) fetched no Prism."""
  with open(os.path.join(direct_reference.output + ".logs", "prism_fetches.json"),
            encoding="utf-8") as f:
    record = json.load(f)
  assert record["downloads"] == [] and record["builds"] == [], record


def _switch(tmp_path, engine, env=None):
  run_engine(engine, str(tmp_path / "out"), timeout=300, env=env)
  with open(tmp_path / "out" / "switch.json", encoding="utf-8") as f:
    return json.load(f)


def test_direct_runner_switches_to_the_local_prism(tmp_path):
  """A pipeline that DirectRunner hands to Prism runs on the local binary, nothing fetched."""
  record = _switch(tmp_path, "direct-switch")
  assert record["result"] == "30"
  assert record["binaries"] == [harness.prism_binary()], record
  assert record["downloads"] == [] and record["builds"] == [], record


def test_without_a_local_prism_direct_runner_does_not_switch(tmp_path):
  """With no built Prism (an empty cache folder), DirectRunner runs it itself, fetching nothing."""
  empty_cache = tmp_path / "cache"
  empty_cache.mkdir()
  record = _switch(tmp_path, "direct-switch",
                   env={"SAFETY_PRETRAINING_CACHE": str(empty_cache)})
  assert record["result"] == "30"
  assert record == {"downloads": [], "builds": [], "binaries": [], "result": "30"}


def test_plain_beam_would_download(tmp_path):
  """The control: Beam's own options, no launch settings: DirectRunner tries the download
  (refused here by the recorder and the private network), then falls back."""
  record = _switch(tmp_path, "direct-switch-plain-beam")
  assert record["result"] == "30"
  assert len(record["downloads"]) == 1 and "prism" in record["downloads"][0], record
