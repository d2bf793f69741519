"""Fixtures of the engine tests: the input, its options and the DirectRunner reference run."""

from __future__ import annotations

import json
import os

import pytest

from engine_runs import BROKEN_LINES, GENERATED, RUN_OPTIONS, EngineRun, run_engine


@pytest.fixture(scope="session")
def engine_input(tmp_path_factory) -> str:
  """The bundled sample plus a file of broken records, as a glob."""
  from beam_pipeline.options import SAMPLE_INPUT
  folder = tmp_path_factory.mktemp("engine_input")
  with open(SAMPLE_INPUT, "rb") as src, open(folder / "sample.jsonl", "wb") as dst:
    dst.write(src.read())
  with open(folder / "broken.jsonl", "wb") as f:
    f.writelines(BROKEN_LINES)
  return str(folder / "*.jsonl")


@pytest.fixture(scope="session")
def engine_args(engine_input) -> list[str]:
  return [f"--input={engine_input}", *RUN_OPTIONS]


@pytest.fixture(scope="session")
def direct_reference(tmp_path_factory, engine_args) -> EngineRun:
  """The pipeline on DirectRunner with the same input and options: what every engine must give."""
  run = run_engine("direct", str(tmp_path_factory.mktemp("direct") / "out"), *engine_args)
  with open(os.path.join(run.output, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  # The comparison is only worth something if every branch, generation included, has records.
  for branch in (*GENERATED, "raw", "tagged"):
    assert report["per_branch"][branch] > 0, (branch, report["per_branch"])
  assert report["dead_letters_total"] >= len(BROKEN_LINES)
  return run
