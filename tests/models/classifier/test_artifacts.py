"""How the classifier's model folder is found, staged and downloaded (models/classifier/artifacts.py),
on local files: the gs:// paths of the same functions run against the Cloud Storage emulator in
tests/e2e/reliability/ (test_cloud_storage.py, test_template_launch.py), the whole lean worker in
tests/e2e/reliability/test_lean_worker.py."""

from __future__ import annotations

import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import DirectRunner
from apache_beam.runners.portability.portable_runner import PortableRunner

from models.classifier import artifacts


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
  assert artifacts.launch_location(None, PortableRunner(), PipelineOptions([])) is None


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
  assert artifacts.launch_location(str(folder), DirectRunner(), options) == str(folder)
  loopback = PipelineOptions(["--environment_type=LOOPBACK"])
  assert artifacts.launch_location(str(folder), PortableRunner(), loopback) == str(folder)
  # workers elsewhere, but no remote temp location to stage to: the path is kept (with a warning)
  assert artifacts.launch_location(str(folder), PortableRunner(), options) == str(folder)
  assert artifacts.launch_location("gs://b/classifier", PortableRunner(), options) == (
      "gs://b/classifier")
