"""Safe outputs: no partial shards under final names, no silent overwrite, a killed run recovers.

The pipeline writes into `{output}/.staging/<run id>/` and moves the files into place when it has
succeeded (beam_pipeline/output_folder.py). Here a real run is killed with SIGKILL while it writes its
shards, and a second run with --overwrite must give byte for byte what one clean run gives.
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import time

import pytest

from beam_pipeline import run as entry
from beam_pipeline import output_folder
from beam_pipeline.output_folder import OutputExistsError, StagedOutput

from tests.e2e.generation.servers import free_port

from .conftest import REPO, output_tree, pipeline_command, run_pipeline, subprocess_env

WORDS = ("the a river forest bread recipe garden music lesson history city train market school "
         "library ocean mountain weather festival museum bicycle").split()


def _write_input(folder, documents: int) -> str:
  rng = random.Random(documents)
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
    for i in range(documents):
      text = " ".join(rng.choice(WORDS) for _ in range(120)).capitalize() + "."
      f.write(json.dumps({"id": f"doc-{i:05d}", "text": text}) + "\n")
  return str(folder / "docs.jsonl")


def _args(input_path: str, output: str, *extra: str) -> list:
  return [f"--input={input_path}", f"--output={output}", "--generation=off", "--num_shards=4",
          *extra]


def test_commit_moves_staged_files_into_place_and_replaces_old_output(tmp_path):
  output = tmp_path / "out"
  (output / "raw").mkdir(parents=True)
  (output / "raw" / "old-shard").write_bytes(b"old")
  (output / ".staging" / "dead-run" / "raw").mkdir(parents=True)
  (output / ".staging" / "dead-run" / "raw" / "part-00000").write_bytes(b"half")
  week_ago = time.time() - 8 * 24 * 3600
  os.utime(output / ".staging" / "dead-run" / "raw" / "part-00000", (week_ago, week_ago))
  (output / ".staging" / "running-run").mkdir()
  (output / ".staging" / "running-run" / "part-00000").write_bytes(b"being written")
  with pytest.raises(OutputExistsError, match="--overwrite"):
    StagedOutput(str(output))
  staged = StagedOutput(str(output), overwrite=True, run_id="new-run")
  os.makedirs(os.path.join(staged.path, "raw"))
  with open(os.path.join(staged.path, "raw", "part-00000"), "wb") as f:
    f.write(b"new")
  # Until the commit, the old output is whole.
  assert output_folder.output_files(str(output)) == ["raw/old-shard"]
  staged.commit()
  # The stale staging folder is gone; one changed lately may belong to a running run: kept.
  assert output_tree(str(output)) == {
      os.path.join("raw", "part-00000"): b"new",
      os.path.join(".staging", "running-run", "part-00000"): b"being written"}


def test_staging_leftovers_alone_do_not_count_as_output(tmp_path):
  output = tmp_path / "out"
  (output / ".staging" / "killed-run" / "tagged").mkdir(parents=True)
  (output / ".staging" / "killed-run" / "tagged" / "part-00001").write_bytes(b"partial")
  staged = StagedOutput(str(output))  # not refused: no run's output is there
  staged.abort()
  assert output_folder.output_files(str(output)) == []


def test_a_second_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path):
  input_path = _write_input(tmp_path / "in", 20)
  output = str(tmp_path / "out")
  entry.run(_args(input_path, output))
  first = output_tree(output)
  assert "report.json" in first and "report.html" in first

  refused = run_pipeline(*_args(input_path, output))
  assert refused.returncode == 2, refused.stderr[-2000:]
  assert f"error: output folder {output} is not empty: it holds a complete run" in refused.stderr
  assert "--overwrite" in refused.stderr
  assert output_tree(output) == first  # untouched

  with open(os.path.join(output, "stray.txt"), "w") as f:
    f.write("left by hand")
  report = entry.run(_args(input_path, output, "--overwrite"))
  assert report["checks_hold"]
  # The stray file is gone: the folder is this run's alone, the record names the new run.
  second = output_tree(output)
  assert second.pop(output_folder.COMMITTED_RUN) != first.pop(output_folder.COMMITTED_RUN)
  assert second == first


def test_a_run_killed_midway_then_overwritten_equals_one_clean_run(tmp_path):
  input_path = _write_input(tmp_path / "in", 300)
  output = str(tmp_path / "out")
  process = subprocess.Popen(
      pipeline_command(*_args(input_path, output)), cwd=REPO, env=subprocess_env(),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  staged_shards = os.path.join(output, ".staging", "*", "*", "part-*")
  deadline = time.monotonic() + 300
  try:
    while not glob.glob(staged_shards):
      assert process.poll() is None, "the run ended before it was killed"
      assert time.monotonic() < deadline, "no shard written in 300 s"
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # midway through writing its shards
  finally:
    process.kill()
    process.wait()
  assert process.returncode == -signal.SIGKILL

  # The killed run left shards only in its hidden staging folder, none under a final name.
  assert glob.glob(staged_shards)
  assert output_folder.output_files(output) == []
  assert not glob.glob(os.path.join(output, "*", "part-*"))

  rerun = run_pipeline(*_args(input_path, output, "--overwrite"))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  clean = str(tmp_path / "clean")
  clean_run = run_pipeline(*_args(input_path, clean))
  assert clean_run.returncode == 0, clean_run.stderr[-3000:]

  # The killed run's staging folder is recent, so as far as the rerun can tell it may still be
  # running: it is kept, and stays out of the output.
  assert glob.glob(staged_shards)
  # Byte for byte what a clean run gives, but for the record of the run id it belongs to.
  recovered = {name: data for name, data in output_tree(output).items()
               if not name.startswith(".staging" + os.sep) and name != ".committed_run"}
  expected = output_tree(clean)
  del expected[".committed_run"]
  assert sorted(recovered) == sorted(expected)
  assert [name for name in expected if recovered[name] != expected[name]] == []
  assert len([name for name in expected if "part-" in name]) == 6 * 4  # 5 branches, dead letters


@pytest.mark.slow
def test_a_failing_run_with_overwrite_leaves_the_good_output_and_reports_under_failed(tmp_path):
  """The schedule's day with the endpoint down: a good run, then a run with --overwrite whose
  every generation request fails (a real connection error: nothing listens on the endpoint's
  port on 127.0.0.1). The failed run replaces nothing: the good run's files stay byte for byte,
  its report goes to .failed/<run id>/ with its report card and dead letters, and the command
  prints the summary and the failed checks and exits 1, with no traceback."""
  output = str(tmp_path / "out")
  good = run_pipeline(f"--output={output}", "--generation=off", "--num_shards=1")
  assert good.returncode == 0, good.stderr[-3000:]
  first = output_tree(output)
  assert json.loads(first["report.json"])["checks_hold"]

  failing = run_pipeline(
      f"--output={output}", "--overwrite", "--num_shards=1", "--generator=openai",
      f"--openai_base_url=http://127.0.0.1:{free_port()}/v1", "--openai_api_key_env=none",
      "--max_attempts=1", "--request_timeout_s=5")
  assert failing.returncode == 1, failing.stderr[-3000:]
  assert "error: check safeweb_failures failed" in failing.stderr, failing.stderr[-3000:]
  assert "Traceback" not in failing.stderr, failing.stderr[-3000:]
  assert "FAILED check safeweb_failures" in failing.stdout
  after = output_tree(output)
  failed = {name: data for name, data in after.items() if name.startswith(".failed" + os.sep)}
  assert {name: data for name, data in after.items() if name not in failed} == first
  (run_id,) = {name.split(os.sep)[1] for name in failed}
  folder = os.path.join(".failed", run_id)
  assert f"report: {os.path.join(output, folder, 'report.json')}" in failing.stdout
  report = json.loads(failed[os.path.join(folder, "report.json")])
  assert not report["checks_hold"] and "safeweb_failures" in report["failed_checks"]
  assert b"a check FAILS" in failed[os.path.join(folder, "report.html")]
  # The dead letters say why: every failed request is one, kept beside the report.
  dead_letters = [name for name in failed if name.startswith(os.path.join(folder, "dead_letter"))]
  assert dead_letters and report["dead_letters"]["rephrase"] == {
      "generation_connection_error": report["checks"]["generation"]["safeweb"]["requests"]}
  assert not [name for name in failed if "part-" in name and "dead_letter" not in name]
  assert not os.path.exists(os.path.join(output, output_folder.STAGING_DIR))
