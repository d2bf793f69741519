"""The machine's cache folder for built models (ONNX files, converted generators)."""

from __future__ import annotations

import hashlib
import os

CACHE_ENV = "SAFETY_PRETRAINING_CACHE"


def cache_root() -> str:
  """`$SAFETY_PRETRAINING_CACHE`, else `~/.cache/safety-pretraining`."""
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "safety-pretraining")


def file_sha256(path: str) -> str:
  """The SHA-256 of a file (any path Beam's FileSystems knows), read in blocks."""
  from apache_beam.io.filesystems import FileSystems
  digest = hashlib.sha256()
  with FileSystems.open(path, compression_type="uncompressed") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
