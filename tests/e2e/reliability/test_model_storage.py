"""Models on Cloud Storage, against the real emulator on 127.0.0.1 (model_storage_driver.py):
the local generator from a gs:// GGUF file or model folder, a gs:// generator cache shared by
the workers, and the launch's --window check reading a gs:// classifier's model.json.

Each "machine" is a local cache folder of its own. A gs:// --generator_cache is converted into
once: the first machine converts the GGUF and uploads the result, listing object last; the next
downloads it instead. Three processes that prepare the model at once on one machine all get the
whole folder and leave no temporary file. The pipeline itself runs with both options on gs://.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, require_root_namespaces, subprocess_env


@pytest.fixture(scope="module")
def found(tmp_path_factory):
  require_root_namespaces()
  if importlib.util.find_spec("gcp_storage_emulator") is None:
    message = "gcp-storage-emulator is needed: `make setup` installs the dev extras"
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  workdir = tmp_path_factory.mktemp("model_storage")
  (workdir / "tmp").mkdir()
  command = f'exec "{sys.executable}" -m tests.e2e.reliability.model_storage_driver "{workdir}"'
  driver = subprocess.run(
      ["unshare", "-n", "sh", "-c", f"ip link set lo up && {command}"], cwd=REPO,
      env=subprocess_env(TMPDIR=str(workdir / "tmp")), capture_output=True, text=True,
      timeout=900, check=False)
  assert driver.returncode == 0, driver.stderr[-6000:]
  return json.loads(driver.stdout.strip().splitlines()[-1])


def _converted_files(tree: dict) -> dict:
  """{name: sha256} of the converted model folder in a machine's cache (`tiny-<digest>/`)."""
  return {path.split("/", 1)[1]: digest for path, digest in tree.items()
          if path.startswith("tiny-")}


@pytest.mark.slow
def test_a_gs_gguf_is_converted_once_for_every_worker_through_a_gs_cache(found):
  a, b = found["a"], found["b"]
  assert "error" not in a, a["error"]
  assert "error" not in b, b["error"]
  # machine a downloaded the GGUF, converted it and uploaded the conversion, listing last
  assert any(m.startswith("Converting ") for m in a["messages"]), a["messages"]
  assert a["finish_reason"] and isinstance(a["text"], str)
  assert _converted_files(a["local_cache"]) == found["converted"]
  folder = {name.split("/")[1] for name in found["remote_cache"]}
  assert len(folder) == 1, found["remote_cache"]
  assert sorted(name.split("/", 2)[2] for name in found["remote_cache"]) == sorted(
      [".complete.json", *found["converted"]])
  # machine b downloaded that conversion instead of converting
  assert not any(m.startswith("Converting ") for m in b["messages"]), b["messages"]
  assert any(m.startswith("Downloading the converted ") for m in b["messages"]), b["messages"]
  assert _converted_files(b["local_cache"]) == found["converted"]
  assert (b["finish_reason"], b["text"]) == (a["finish_reason"], a["text"])


@pytest.mark.slow
def test_a_gs_model_folder_reaches_the_local_backend(found):
  c = found["c"]
  assert "error" not in c, c["error"]
  downloaded = {path.split("/", 2)[2]: digest for path, digest in c["local_cache"].items()
                if path.startswith("downloads/")}
  assert downloaded == found["converted"]
  assert (c["finish_reason"], c["text"]) == (found["a"]["finish_reason"], found["a"]["text"])


@pytest.mark.slow
def test_processes_that_prepare_at_once_each_get_the_whole_model(found):
  d = found["d"]
  assert "error" not in d, d["error"]
  assert d["exit_codes"] == [0, 0, 0], d
  assert len({got["folder"] for got in d["got"]}) == 1
  assert all(got["files"] == found["converted"] for got in d["got"])
  # the downloaded GGUF and the converted folder, and no temporary file or folder besides
  assert [p for p in d["local_cache"] if ".part" in p or "/." in p or p.startswith(".")] == []


@pytest.mark.slow
def test_the_pipeline_generates_with_a_gs_generator_model_and_cache(found):
  report = found["pipeline"]
  assert "error" not in report, report["error"]
  assert report["per_branch"]["safeweb"] > 0, report["per_branch"]
  assert "generation_error" not in json.dumps(report["dead_letters"]), report["dead_letters"]
  # the worker's machine read the conversion the first machine put in the gs:// cache
  assert any(path.startswith("tiny-") for path in found["e"]), found["e"]


@pytest.mark.slow
def test_the_launch_checks_the_window_against_a_gs_model_without_downloading_it(found):
  window = found["window"]
  assert window["code"] == 2, window
  lines = window["stderr"].strip().splitlines()
  assert lines[-1].startswith("error: --window=600 is longer than the classifier model at gs://")
  assert "512" in lines[-1]
  assert found["copies_after_window"] == []  # model.json alone was read
  assert not [name for name in found["objects"] if name.startswith("window-out/")]
  # an older folder, without model.json, is tried with one window of that length instead
  old = found["window_without_metadata"]
  assert old["code"] == 2, old
  assert "fails on a window of 600 tokens" in old["stderr"].strip().splitlines()[-1]
