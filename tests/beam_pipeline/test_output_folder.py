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


# A retry of the commit, and a commit that reads the checks. Each staged run here is two raw
# shards, a dead letter shard and a sample file, committed with the real report writer.
STAGED = ("raw/part-00000-of-00002.tfrecord.gz", "raw/part-00001-of-00002.tfrecord.gz",
          "dead_letter/part-00000-of-00001.jsonl.gz", "samples/raw.json")


def _stage(output: str, run_id: str) -> tuple[str, list]:
  """A staged run `run_id` in `output`: (its staging folder, the written paths)."""
  staging = output_folder.staging_path(output, run_id)
  for name in STAGED:
    path = os.path.join(staging, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(b"[]" if name.endswith(".json") else f"{run_id}:{name}".encode())
  return staging, [os.path.join(staging, name) for name in STAGED]


def _report(holds: bool = True) -> dict:
  """A real report: two documents read and written (or, failing, none read at all)."""
  from beam_pipeline import report as run_report
  counters = {"read.documents.valid": 2, "write.raw": 2, "read.files_matched": 1}
  report = run_report.build_report(counters if holds else {})
  assert report["checks_hold"] == holds
  return report


def _recording_writer(log: str, report: dict, output: str) -> list:
  """The report writer of the pipeline, logging each call (a retry must make none)."""
  from beam_pipeline import report as run_report
  with open(log, "a", encoding="utf-8") as f:
    f.write(output + "\n")
  return run_report.write_report_files(report, output)


def _tree(output) -> dict:
  files = {}
  for root, _, names in os.walk(output):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, output)] = f.read()
  return files


def _report_state(output: str):
  """report.json's bytes and modification time: a rewrite changes the time."""
  path = os.path.join(output, "report.json")
  with open(path, "rb") as f:
    return f.read(), os.stat(path).st_mtime_ns


def _commit_in_a_pipeline(output: str, staging: str, written: list, report: dict,
                          overwrite: bool, log: str) -> None:
  """CommitOutput as the graph applies it, in a DirectRunner pipeline of its own."""
  import functools
  with beam.Pipeline("DirectRunner") as pipeline:
    files = pipeline | "Written" >> beam.Create(written)
    _ = (pipeline | "Report" >> beam.Create([report])
         | "CommitOutput" >> output_folder.CommitOutput(
             output, staging, files, overwrite, functools.partial(_recording_writer, log)))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_retried_commitoutput_after_a_complete_commit_does_nothing(tmp_path, overwrite):
  """Dataflow retries a bundle that it lost track of: the second CommitOutput of the same run
  finds the folder committed by that run (.committed_run) and neither refuses nor rewrites."""
  output, log = str(tmp_path / "out"), str(tmp_path / "writes.log")
  if overwrite:  # an earlier run's output, replaced by this one
    old_staging, old_written = _stage(output, "run-old")
    _commit_in_a_pipeline(output, old_staging, old_written, _report(), False,
                          str(tmp_path / "old.log"))
  staging, written = _stage(output, "run-a")
  _commit_in_a_pipeline(output, staging, written, _report(), overwrite, log)
  committed, state = _tree(output), _report_state(output)
  assert committed["raw/part-00000-of-00002.tfrecord.gz"] == (
      b"run-a:raw/part-00000-of-00002.tfrecord.gz")

  _commit_in_a_pipeline(output, staging, written, _report(), overwrite, log)  # the retry
  assert _report_state(output) == state  # not deleted and written again
  assert _tree(output) == committed
  with open(log, encoding="utf-8") as f:
    assert f.read().splitlines() == [output]  # the report was written once
  assert sorted(committed) == sorted([".committed_run", "report.html", "report.json", *STAGED])
  assert json.loads(committed[".committed_run"]) == {"run_id": "run-a"}


def test_a_second_commit_run_never_touches_report_json(tmp_path, monkeypatch):
  """commit_run twice, with --overwrite, and staging leftovers (the first attempt died before it
  removed them): the second deletes nothing of the output and removes the leftovers."""
  from apache_beam.io.filesystems import FileSystems
  from beam_pipeline import report as run_report
  output = str(tmp_path / "out")
  staging, written = _stage(output, "run-a")
  relative = [os.path.relpath(path, staging) for path in written]
  output_folder.commit_run(output, staging, relative, _report(), run_report.write_report_files,
                           overwrite=True)
  committed, state = _tree(output), _report_state(output)
  os.makedirs(staging)
  with open(os.path.join(staging, "leftover.tmp"), "wb") as f:
    f.write(b"temp")
  deleted = []
  delete = FileSystems.delete
  monkeypatch.setattr(FileSystems, "delete", lambda paths: (deleted.extend(paths), delete(paths)))
  output_folder.commit_run(output, staging, relative, _report(), run_report.write_report_files,
                           overwrite=True)
  assert [path for path in deleted if not path.startswith(staging)] == []
  assert _report_state(output) == state and _tree(output) == committed


def test_a_commit_that_cannot_finish_leaves_the_old_output(tmp_path):
  """A staged file gone missing (neither staged nor committed) fails the commit before any file
  of the earlier run is deleted."""
  from beam_pipeline import report as run_report
  output = str(tmp_path / "out")
  staging, written = _stage(output, "run-old")
  _commit_in_a_pipeline(output, staging, written, _report(), False, str(tmp_path / "old.log"))
  old = _tree(output)
  staging, written = _stage(output, "run-new")
  written.append(os.path.join(staging, "tagged", "part-00000-of-00001.tfrecord.gz"))  # lost
  with pytest.raises(FileNotFoundError, match="neither staged nor committed"):
    output_folder.commit_staged(output, staging, [os.path.relpath(p, staging) for p in written],
                                overwrite=True)
  assert {name: data for name, data in _tree(output).items()
          if not name.startswith(".staging/")} == old


def test_a_run_whose_checks_fail_replaces_nothing_and_fails_the_job(tmp_path):
  """A good run's output, then a run whose checks fail, committed with --overwrite through
  CommitOutput: the job fails with ChecksFailedError, the good output is byte for byte as it
  was, the failed run's report, report card, dead letters and samples are under
  .failed/<run id>/, its shards are gone; a retry of the commit fails the same way, harmlessly."""
  output, log = str(tmp_path / "out"), str(tmp_path / "writes.log")
  staging, written = _stage(output, "run-good")
  _commit_in_a_pipeline(output, staging, written, _report(), False, str(tmp_path / "good.log"))
  good = _tree(output)
  staging, written = _stage(output, "run-bad")
  failing = _report(holds=False)
  for attempt in range(2):  # the retry finds the failed report and changes nothing
    with pytest.raises(Exception, match="the run's checks failed \\(empty_input\\)"):
      _commit_in_a_pipeline(output, staging, written, failing, True, log)
    tree = _tree(output)
    assert {name: data for name, data in tree.items()
            if not name.startswith(".failed/")} == good, attempt
    assert sorted(name for name in tree if name.startswith(".failed/")) == sorted(
        f".failed/run-bad/{name}" for name in (
            "report.json", "report.html", "dead_letter/part-00000-of-00001.jsonl.gz",
            "samples/raw.json"))
    assert not os.path.exists(os.path.join(output, output_folder.STAGING_DIR))
  assert json.loads(tree[".failed/run-bad/report.json"]) == dict(failing, quality_samples={})
  assert b"a check FAILS" in tree[".failed/run-bad/report.html"]
  assert tree[".failed/run-bad/dead_letter/part-00000-of-00001.jsonl.gz"] == (
      b"run-bad:dead_letter/part-00000-of-00001.jsonl.gz")
  with open(log, encoding="utf-8") as f:
    assert f.read().splitlines() == [os.path.join(output, ".failed", "run-bad")]
  # A failed run's report is no run's output: the folder is not refused for it.
  assert output_folder.output_files(output) == sorted(good)
