"""How the classifier's model folder is found, staged and downloaded (models/classifier/artifacts.py),
on local files: the gs:// paths of the same functions run against the Cloud Storage emulator in
tests/e2e/reliability/ (test_cloud_storage.py, test_template_launch.py), the whole lean worker in
tests/e2e/reliability/test_lean_worker.py."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import DirectRunner
from apache_beam.runners.portability.portable_runner import PortableRunner

from models.classifier import artifacts
from models.classifier.chunking import WindowError


@pytest.fixture
def folder(tmp_path):
  """A model folder as export writes it (the bytes do not matter to these functions)."""
  model = tmp_path / "classifier"
  model.mkdir()
  (model / artifacts.INT8_NAME).write_bytes(b"onnx graph " * 1000)
  (model / artifacts.TOKENIZER_NAME).write_text('{"model": "wordpiece"}')
  return model


def test_a_location_is_a_folder_or_an_onnx_file_with_its_tokenizer_beside_it():
  assert artifacts.files_of("gs://b/models/classifier") == artifacts.ModelFiles(
      "gs://b/models/classifier/model.int8.onnx", "gs://b/models/classifier/tokenizer.json")
  assert artifacts.files_of("gs://b/m/model.onnx") == artifacts.ModelFiles(
      "gs://b/m/model.onnx", "gs://b/m/tokenizer.json")


def test_no_model_is_one_error_that_says_what_to_pass(monkeypatch, tmp_path, folder):
  monkeypatch.delenv(artifacts.IMAGE_MODEL_ENV, raising=False)
  with pytest.raises(artifacts.NoClassifierModel) as no_model:
    artifacts.local_files(None)
  assert str(no_model.value) == artifacts.NO_MODEL
  assert "--classifier_model=gs://" in artifacts.NO_MODEL and "[local]" in artifacts.NO_MODEL
  with pytest.raises(artifacts.NoClassifierModel, match="tokenizer.json not found"):
    os.remove(folder / artifacts.TOKENIZER_NAME)
    artifacts.local_files(str(folder))


def test_the_image_model_is_read_where_no_model_is_given(monkeypatch, folder):
  monkeypatch.setenv(artifacts.IMAGE_MODEL_ENV, str(folder))
  assert artifacts.local_files(None).onnx == str(folder / artifacts.INT8_NAME)
  # the launcher leaves it to the workers, which run the same image
  assert artifacts.settle_model(None, PortableRunner(), PipelineOptions([])) is None


def test_download_is_once_per_machine_through_a_temporary_name(tmp_path, folder):
  files = artifacts.files_of(str(folder))
  local = artifacts.download(files, str(tmp_path / "tmp"))
  copy_folder = os.path.dirname(local.onnx)
  assert os.path.basename(copy_folder).startswith("safety-classifier-")
  assert sorted(os.listdir(copy_folder)) == [artifacts.INT8_NAME, artifacts.TOKENIZER_NAME]
  assert open(local.onnx, "rb").read() == (folder / artifacts.INT8_NAME).read_bytes()
  written = os.stat(local.onnx).st_mtime_ns
  assert artifacts.download(files, str(tmp_path / "tmp")) == local
  assert os.stat(local.onnx).st_mtime_ns == written  # kept, not fetched again
  # a model replaced at the same path is a new copy
  (folder / artifacts.INT8_NAME).write_bytes(b"another graph")
  assert artifacts.download(files, str(tmp_path / "tmp")) != local


def test_staging_is_named_by_content_and_uploads_once(tmp_path, folder):
  root = str(tmp_path / "staged")
  staged = artifacts.stage(str(folder), root)
  assert os.path.dirname(staged) == root
  assert sorted(os.listdir(staged)) == [artifacts.INT8_NAME, artifacts.TOKENIZER_NAME]
  written = os.stat(os.path.join(staged, artifacts.INT8_NAME)).st_mtime_ns
  assert artifacts.stage(str(folder), root) == staged
  assert os.stat(os.path.join(staged, artifacts.INT8_NAME)).st_mtime_ns == written
  # a dry run (DataflowRunner --dry_run) computes the same location and writes nothing
  assert artifacts.stage(str(folder), str(tmp_path / "dry"), upload=False) == os.path.join(
      str(tmp_path / "dry"), os.path.basename(staged))
  assert not os.path.exists(tmp_path / "dry")


def test_local_models_stay_local_where_the_workers_can_read_them(folder):
  options = PipelineOptions([])
  assert artifacts.settle_model(str(folder), DirectRunner(), options) == str(folder)
  loopback = PipelineOptions(["--environment_type=LOOPBACK"])
  assert artifacts.settle_model(str(folder), PortableRunner(), loopback) == str(folder)
  # workers elsewhere, but no remote temp location to stage to: the path is kept (with a warning)
  assert artifacts.settle_model(str(folder), PortableRunner(), options) == str(folder)
  assert artifacts.settle_model("gs://b/classifier", PortableRunner(), options) == (
      "gs://b/classifier")


def _write_positions(folder, positions: int) -> None:
  (folder / artifacts.METADATA_NAME).write_text(json.dumps({artifacts.MAX_POSITIONS: positions}))


def test_the_window_is_checked_against_the_model_json_where_the_model_is_settled(folder):
  _write_positions(folder, 128)
  assert artifacts.max_positions(str(folder)) == 128
  assert artifacts.max_positions(str(folder / artifacts.INT8_NAME)) == 128  # an .onnx location
  assert artifacts.settle_model(str(folder), window=128) == str(folder)
  with pytest.raises(WindowError) as too_long:
    artifacts.settle_model(str(folder), window=200)
  message = str(too_long.value)
  assert message.startswith("--window=200 is longer than the classifier model at ")
  assert "128 tokens" in message and "--window=128 or less" in message
  assert "\n" not in message


def test_an_overlap_that_never_advances_is_refused_at_launch(folder):
  _write_positions(folder, 512)
  with pytest.raises(WindowError, match=r"--overlap=62 with --window=64: .* 62 content tokens"):
    artifacts.settle_model(str(folder), window=64, overlap=62)
  with pytest.raises(WindowError, match="at least 8 tokens"):
    artifacts.settle_model(str(folder), window=4, overlap=0)
  artifacts.settle_model(str(folder), window=64, overlap=61)


def test_a_model_without_model_json_is_tried_with_one_window(tmp_path):
  """An export from before model.json: its graph runs one window of --window tokens."""
  from models.classifier.export import ensure_exported
  shipped = ensure_exported()
  old = tmp_path / "old"
  old.mkdir()
  for name in ("int8", "tokenizer"):
    shutil.copy(shipped[name], old)
  assert artifacts.max_positions(str(old)) is None
  artifacts.check_model_window(str(old), 512)
  with pytest.raises(WindowError, match="fails on a window of 513 tokens"):
    artifacts.check_model_window(str(old), 513)


def test_the_default_model_knows_its_positions():
  from models.classifier.export import ensure_exported
  shipped = ensure_exported()
  assert artifacts.max_positions(os.path.dirname(shipped["int8"])) == 512


def test_staging_carries_model_json(tmp_path, folder):
  _write_positions(folder, 300)
  staged = artifacts.stage(str(folder), str(tmp_path / "staged"))
  assert artifacts.max_positions(staged) == 300
