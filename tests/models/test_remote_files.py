"""Model files brought to the machine (models/remote_files.py), on local paths: the same
functions on gs:// run against the Cloud Storage emulator in tests/e2e/reliability/
(test_model_storage.py for the generator, test_cloud_storage.py for the classifier)."""

from __future__ import annotations

import os

import pytest

from models import remote_files


@pytest.fixture
def model(tmp_path):
  """A model folder with a nested file, as a transformers checkpoint may hold."""
  folder = tmp_path / "model"
  (folder / "sub").mkdir(parents=True)
  (folder / "config.json").write_text('{"model_type": "llama"}')
  (folder / "model.safetensors").write_bytes(b"weights " * 4000)
  (folder / "sub" / "extra.txt").write_text("nested")
  return folder


def test_a_folder_is_downloaded_once_into_a_folder_named_by_its_files(tmp_path, model):
  local = remote_files.download_folder(str(model), str(tmp_path / "cache"), "model")
  assert os.path.basename(local).startswith("model-")
  assert sorted(os.path.relpath(os.path.join(b, n), local)
                for b, _, names in os.walk(local) for n in names) == [
      "config.json", "model.safetensors", os.path.join("sub", "extra.txt")]
  written = os.stat(os.path.join(local, "model.safetensors")).st_mtime_ns
  assert remote_files.download_folder(str(model), str(tmp_path / "cache"), "model") == local
  assert os.stat(os.path.join(local, "model.safetensors")).st_mtime_ns == written
  (model / "config.json").write_text('{"model_type": "llama", "changed": true}')
  assert remote_files.download_folder(str(model), str(tmp_path / "cache"), "model") != local
  with pytest.raises(FileNotFoundError, match="no files under"):
    remote_files.download_folder(str(tmp_path / "nothing"), str(tmp_path / "cache"), "x")


def test_an_uploaded_folder_is_read_only_once_its_listing_is_there(tmp_path, model):
  shared = str(tmp_path / "shared" / "model-1")
  assert remote_files.read_listing(shared) is None
  listing = remote_files.upload_folder(str(model), shared)
  assert listing == {"config.json": 23, "model.safetensors": 32000, "sub/extra.txt": 6}
  assert remote_files.read_listing(shared) == listing
  assert [name for name, _ in remote_files.list_folder(shared)] == sorted(listing)
  target = str(tmp_path / "machine" / "model-1")
  assert remote_files.download_listed(shared, listing, target) == target
  assert open(os.path.join(target, "sub", "extra.txt"), encoding="utf-8").read() == "nested"
  # a second process that lost the race keeps the first one's copy, and leaves nothing behind
  assert remote_files.download_listed(shared, listing, target) == target
  assert os.listdir(tmp_path / "machine") == ["model-1"]


def test_a_short_copy_is_an_error_not_a_file(tmp_path, model):
  target = str(tmp_path / "copy" / "config.json")
  os.makedirs(os.path.dirname(target))
  with pytest.raises(IOError, match="got 23 bytes of 99"):
    remote_files.download_file(str(model / "config.json"), target, 99)
  assert os.listdir(os.path.dirname(target)) == []
