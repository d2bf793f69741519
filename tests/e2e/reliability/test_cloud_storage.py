"""gs:// input, output and model paths against a real Cloud Storage emulator on 127.0.0.1.

The emulator (the PyPI package gcp-storage-emulator, a server that speaks Cloud Storage's JSON
API, batch requests included) and the pipeline run inside a private network namespace
(`unshare -n`), so nothing but the namespace's own loopback is reachable. `gcs_driver.py` does
the runs and reports what it found; this test checks it: the gs:// run reads its input and the
classifier's model folder from the bucket through Beam's FileSystems (downloaded safely by
several processes at once), writes the same bytes as a local run,
refuses a second run into its output without --overwrite, and leaves no staging objects.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipeline.options import SAMPLE_INPUT

from .conftest import REPO, require_root_namespaces, subprocess_env


def _write_input(folder) -> None:
  folder.mkdir()
  shutil.copy(SAMPLE_INPUT, folder / "sample.jsonl")
  with gzip.open(folder / "more.jsonl.gz", "wb") as f:
    f.write(b'{"id": "gz-1", "text": "A compressed file on Cloud Storage about gardening."}\n')
    f.write(b'{"id": "gz-2", "text": "   "}\n')
    f.write(b'{"id": "gz-3", "text": "broken\n')
  pq.write_table(pa.Table.from_pylist([
      {"id": "pq-1", "text": "A Parquet row about the history of trains."},
      {"id": "pq-2", "text": "Another row, about rivers and bridges."}]), folder / "rows.parquet")


def test_gs_paths_through_beam_filesystems_and_google_cloud_storage(tmp_path):
  require_root_namespaces()
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    message = "gcp-storage-emulator is needed: `make setup` installs the dev extras"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  _write_input(tmp_path / "in")
  (tmp_path / "tmp").mkdir()  # the worker's copy of the gs:// classifier lands here, and only here
  driver_command = f'exec "{sys.executable}" -m tests.e2e.reliability.gcs_driver "{tmp_path}"'
  driver = subprocess.run(
      ["unshare", "-n", "sh", "-c", f"ip link set lo up && {driver_command}"], cwd=REPO, env=subprocess_env(TMPDIR=str(tmp_path / "tmp")), capture_output=True,
      text=True, timeout=600, check=False)
  assert driver.returncode == 0, driver.stderr[-4000:]
  found = json.loads(driver.stdout.strip().splitlines()[-1])

  report = found["gs_report"]
  assert report["checks_hold"], report["checks"]
  assert report["documents_read"] == 17 + 3 + 2
  assert report["dead_letters"] == {"read": {"invalid_json": 1},
                                    "validate": {"empty_text": 2}}
  # The classifier's model folder was read from the bucket (copied once into the worker's
  # temporary folder).
  assert len(found["model_copies"]) == 1
  # Processes of one machine that download it at once each write a temporary file of their own
  # and rename it into place: all get the whole model, and no temporary file is left.
  concurrent = found["concurrent"]
  assert concurrent["exit_codes"] == [0, 0, 0], concurrent
  assert all(got["sha256"] == found["model_sha256"] for got in concurrent["got"]), concurrent
  assert len({got["onnx"] for got in concurrent["got"]}) == 1
  folder = os.path.basename(os.path.dirname(concurrent["got"][0]["onnx"]))
  assert concurrent["files"] == [f"{folder}/model.int8.onnx", f"{folder}/tokenizer.json"]
  # Output on gs:// is byte for byte the output of the same run on local files.
  assert found["gs_names"] == found["local_names"]
  assert "report.json" in found["gs_names"] and "report.html" in found["gs_names"]
  assert found["different"] == []
  assert set(found["gs_committed_run"]) == {"run_id"}  # the run the overwriting commit names
  assert found["local_report"] == report == found["overwrite_report"]
  # The first run committed its files and left no staging objects behind.
  assert [name for name in found["objects_after_first"] if "/.staging/" in name] == []
  assert sorted(name[len("out/"):] for name in found["objects_after_first"]) == found["gs_names"]
  assert found["refused"].startswith("output folder gs://")
  assert "--overwrite" in found["refused"]
