"""The graph commits itself: built with `beam_pipeline.pipeline.build` and run on DirectRunner
with no help from run.py (Prism and Flink: tests/engines/test_commit_engines.py), the job leaves the committed shards, report.json and
report.html in --output and nothing in staging. CommitOutput is idempotent: run again on the
same staged files (as a runner's retry would), it finishes a partial commit."""

from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import pytest

from beam_pipeline import launch
from beam_pipeline import pipeline as graph
from beam_pipeline.options import SafetyPretrainingOptions
from beam_pipeline import output_folder

pytestmark = pytest.mark.slow
FOLDERS = ("raw", "safeweb", "refuseweb", "moral_education", "tagged", "dead_letter")


def _build_and_run(output: str, *runner_args: str) -> None:
  options = launch.prepare([*runner_args, f"--output={output}", "--generation=off",
                            "--num_shards=3"])
  pipeline = beam.Pipeline(options=options)
  graph.build(pipeline, options.view_as(SafetyPretrainingOptions))
  pipeline.run().wait_until_finish()


def _check_committed(output: str) -> dict:
  assert not os.path.exists(os.path.join(output, output_folder.STAGING_DIR))
  for folder in FOLDERS:
    assert len(glob.glob(os.path.join(output, folder, "part-*-of-00003.*.gz"))) == 3, folder
  with open(os.path.join(output, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert report["checks_hold"], report["checks"]
  assert report["documents_read"] == 17
  assert report["per_branch"]["raw"] + report["per_branch"]["tagged"] == 16
  assert os.path.isfile(os.path.join(output, "report.html"))
  return report


def test_graph_commits_itself_on_direct_runner(tmp_path):
  output = str(tmp_path / "out")
  _build_and_run(output, "--runner=DirectRunner")
  _check_committed(output)


def test_a_retried_commit_finishes_a_partial_one(tmp_path):
  output = tmp_path / "out"
  staging = output_folder.staging_path(str(output), "run-a")
  names = ["raw/part-00000-of-00002.tfrecord.gz", "raw/part-00001-of-00002.tfrecord.gz"]
  for name in names:
    os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
    with open(os.path.join(staging, name), "wb") as f:
      f.write(name.encode())
  # The first attempt moved one file, then died.
  os.makedirs(output / "raw", exist_ok=True)
  with open(os.path.join(staging, output_folder.COMMIT_MARKER), "w", encoding="utf-8") as f:
    f.write("[]")
  os.rename(os.path.join(staging, names[0]), output / names[0])
  # The retry is not refused by the first attempt's file, and completes the move.
  finals = output_folder.commit_staged(str(output), staging, names, overwrite=False)
  output_folder.remove_staging(str(output), staging)
  assert finals == [str(output / name) for name in names]
  assert [open(output / name, "rb").read() for name in names] == [n.encode() for n in names]
  assert not os.path.exists(output / output_folder.STAGING_DIR)
