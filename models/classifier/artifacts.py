"""The classifier as workers get it: a built model folder, found, staged and downloaded, no torch.

A model folder holds the ONNX graph (`model.int8.onnx`, the one scored with, and `model.onnx`,
fp32), the `tokenizer.json` that texts are windowed with and `model.json`, the longest window
the graph takes (`python -m models.classifier.export` writes them all). Workers install the
package without extras, so they have ONNX Runtime and `tokenizers` but no torch, transformers
or encoder package: they never build the model, only read it. Everything here therefore uses
Beam's FileSystems, ONNX Runtime and the standard library only.

- `--classifier_model` names a folder (its `model.int8.onnx` is scored with) or an `.onnx` file
  (with `tokenizer.json` beside it), local or on any filesystem Beam knows (gs://).
- Without it, `$SAFETY_PRETRAINING_CLASSIFIER` names the model folder that the machine (a
  container image) holds; else a worker stops with `NoClassifierModel`, one line that says what
  to pass.
- `settle_model` is the one place the model's location is decided, where the graph is built
  (or a benchmark starts): with no `--classifier_model` it builds the default model there (the
  `local` extra), checks that the model takes `--window`, and, for a runner whose workers are
  elsewhere, stages it under the job's remote temp location, named by its content, so workers
  only download. Every reader (the scorer, the safety gates, the quality gate's encoder, the
  benchmarks) takes the location it settled, and none decides again.
- `local_files` runs on workers: a remote model is downloaded once per machine, each file to a
  unique temporary name and then renamed into place (`models.remote_files`, which the local
  generator shares), so the SDK processes of one machine never write the same file, and a
  reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from models import remote_files
from models.classifier.chunking import DEFAULT_OVERLAP, WindowError, check_window
from models.classifier.folder import (INT8_NAME, MAX_POSITIONS, METADATA_NAME, TOKENIZER_NAME,
                                      window_error)
from models.remote_files import is_local

LOG = logging.getLogger("models.classifier.artifacts")
# The model folder a machine (the template image) holds, read when no --classifier_model is given.
IMAGE_MODEL_ENV = "SAFETY_PRETRAINING_CLASSIFIER"
# Under the job's temp location: <temp>/safety-pretraining/classifier/<content digest>/.
STAGING_FOLDER = ("safety-pretraining", "classifier")
# Runners whose workers run on the launching machine and read its files.
LOCAL_RUNNERS = frozenset({
    "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner",
    "PrismRunner", "TestDirectRunner", "InteractiveRunner"})
_BLOCK = 1 << 20

NO_MODEL = (
    "no classifier model: pass --classifier_model=gs://BUCKET/PATH/classifier (a folder with "
    f"{INT8_NAME} and {TOKENIZER_NAME}, as `python -m models.classifier.export --output_dir` "
    f"writes it) or install safety-pretraining[local] where the pipeline is launched, so that it "
    f"builds the default model; a worker image may also hold one and name it in "
    f"${IMAGE_MODEL_ENV}")


class NoClassifierModel(RuntimeError):
  """No classifier model where one is needed; the message (one line) says what to pass."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
  """The two files scoring needs: the ONNX graph and the tokenizer.json it windows with."""
  onnx: str
  tokenizer: str

  @property
  def tokenizer_folder(self) -> str:
    """The folder of tokenizer.json, as `chunking.Windower(tokenizer_path=...)` takes it."""
    return FileSystems.split(self.tokenizer)[0]

  @property
  def metadata(self) -> str:
    """The model.json beside tokenizer.json (absent in a folder exported before it)."""
    return FileSystems.join(self.tokenizer_folder, METADATA_NAME)


def files_of(location: str) -> ModelFiles:
  """The files of a model location: an `.onnx` file and the tokenizer.json beside it, or a
  folder's model.int8.onnx and tokenizer.json. Only the name decides (a folder on Cloud Storage
  is a prefix, not an object that could be asked), so nothing is read here."""
  if location.endswith(".onnx"):
    folder = FileSystems.split(location)[0]
    return ModelFiles(location, FileSystems.join(folder, TOKENIZER_NAME))
  return ModelFiles(FileSystems.join(location, INT8_NAME),
                    FileSystems.join(location, TOKENIZER_NAME))


def _checked(location: str) -> ModelFiles:
  """The files of `location`, or NoClassifierModel naming those that are missing."""
  files = files_of(location)
  missing = [path for path in (files.onnx, files.tokenizer) if not FileSystems.exists(path)]
  if missing:
    raise NoClassifierModel(
        f"no classifier model at {location}: {', '.join(missing)} not found (a model folder "
        f"holds {INT8_NAME} and {TOKENIZER_NAME}; `python -m models.classifier.export "
        f"--output_dir DIR` writes one)")
  return files


def local_files(location: str | None) -> ModelFiles:
  """The model's files on this machine, downloaded first when `location` is remote.

  `location` None means the model folder named by $SAFETY_PRETRAINING_CLASSIFIER (the one a
  worker image holds); without it this raises NoClassifierModel. Never builds a model: that
  needs torch, which workers do not have (`launch_location` builds it where the graph is built).
  """
  location = location or os.environ.get(IMAGE_MODEL_ENV)
  if not location:
    raise NoClassifierModel(NO_MODEL)
  files = _checked(location)
  if is_local(files.onnx):
    return files
  return download(files)


_metadata = remote_files.metadata


def download(files: ModelFiles, root: str | None = None) -> ModelFiles:
  """Copies remote model files into `root` (default: the machine's temporary folder) and returns
  the local copies, in `safety-classifier-<key>/` (`remote_files.download`: the key covers each
  file's path, size and modification time, so a model replaced at the same path is downloaded
  afresh; each file goes to a temporary name of its own and is renamed into place)."""
  onnx, tokenizer = remote_files.download(
      [files.onnx, files.tokenizer], root or tempfile.gettempdir(), "safety-classifier",
      [FileSystems.split(files.onnx)[1], TOKENIZER_NAME])
  return ModelFiles(onnx, tokenizer)


def content_digest(files: ModelFiles) -> str:
  """A short SHA-256 of both files' bytes: the staged copy's folder name."""
  digest = hashlib.sha256()
  for path in (files.onnx, files.tokenizer):
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      for block in iter(lambda: f.read(_BLOCK), b""):  # pylint: disable=cell-var-from-loop
        digest.update(block)
  return digest.hexdigest()[:16]


def stage(location: str, destination_root: str, upload: bool = True) -> str:
  """Copies a local model (its ONNX file and tokenizer.json) to
  `<destination_root>/<content digest>/` and returns the staged location (the folder, or the
  file when `location` named a file other than model.int8.onnx).

  The folder is named by the content, so each launch of an unchanged model finds it staged and
  uploads nothing (a file already there with the right size is kept); Cloud Storage makes an
  object visible only once its upload completes, so a worker never reads half a file. With
  `upload` False (DataflowRunner's --dry_run) only the staged location is computed.
  """
  files = _checked(location)
  target = FileSystems.join(destination_root, content_digest(files))
  onnx_name = FileSystems.split(files.onnx)[1]
  copies = [(files.tokenizer, TOKENIZER_NAME), (files.onnx, onnx_name)]
  if FileSystems.exists(files.metadata):  # read at the next launch, from the staged copy
    copies.insert(0, (files.metadata, METADATA_NAME))
  for source, name in copies:
    destination = FileSystems.join(target, name)
    if not upload:
      continue
    if (FileSystems.exists(destination)
        and _metadata(destination).size_in_bytes == _metadata(source).size_in_bytes):
      continue
    with FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED) as src, \
        FileSystems.create(destination, compression_type=CompressionTypes.UNCOMPRESSED) as out:
      shutil.copyfileobj(src, out, _BLOCK)
    LOG.info("classifier file %s staged at %s", source, destination)
  return target if onnx_name == INT8_NAME else FileSystems.join(target, onnx_name)


def default_model_folder() -> str | None:
  """The default classifier's model folder, built into the cache folder on first use; None
  where it cannot be built because the `local` extra (torch, transformers, the encoder package)
  is not installed."""
  try:
    from models.classifier.export import ensure_exported  # pylint: disable=import-outside-toplevel
    return os.path.dirname(ensure_exported()["int8"])
  except ModuleNotFoundError as error:
    LOG.warning("the default classifier cannot be built here (no module %s: it comes with "
                "safety-pretraining[local])", error.name)
    return None


def model_or_default(classifier_model: str | None) -> str | None:
  """The given model or the default: `classifier_model` when given; else None when
  $SAFETY_PRETRAINING_CLASSIFIER is set (the image holds the model, and `local_files` reads it
  there); else the default model folder, built here once (None without the `local` extra).
  The first step of `settle_model`; readers take what `settle_model` returns instead."""
  if classifier_model:
    return classifier_model
  if os.environ.get(IMAGE_MODEL_ENV):
    return None
  return default_model_folder()


def max_positions(location: str) -> int | None:
  """The longest window (tokens) the model at `location` takes, from its model.json alone (a
  few bytes, on any filesystem: nothing else is read or downloaded); None for a folder exported
  before model.json was written."""
  path = files_of(location).metadata
  if not FileSystems.exists(path):
    return None
  with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return int(json.loads(f.read().decode("utf-8"))[MAX_POSITIONS])


def check_model_window(location: str | None, window: int, overlap: int = DEFAULT_OVERLAP) -> None:
  """Raises WindowError (one line) when the model at `location` (None: the image's) cannot take
  windows of `window` tokens, or `overlap` leaves windows that never advance, so a run that
  would fail every scoring batch stops at launch instead.

  The model's model.json says its maximum positions. A folder without one (an older export) is
  tried instead: one window of `window` tokens through its graph (a remote model is downloaded
  for it, as a worker would). No model at all is left to the workers' NoClassifierModel.
  """
  check_window(window, overlap)
  location = location or os.environ.get(IMAGE_MODEL_ENV)
  if not location:
    return
  positions = max_positions(location)
  if positions is not None:
    if window > positions:
      raise WindowError(
          f"--window={window} is longer than the classifier model at {location} takes: its "
          f"position embeddings cover {positions} tokens ([CLS] and [SEP] included; "
          f"{METADATA_NAME}); pass --window={positions} or less")
    return
  error = window_error(local_files(location).onnx, window)
  if error:
    raise WindowError(
        f"--window={window}: the classifier model at {location} fails on a window of "
        f"{window} tokens ({error}); its folder has no {METADATA_NAME} naming its maximum "
        f"positions (`python -m models.classifier.export` writes one): pass a shorter --window")


def workers_are_local(runner, options) -> bool:
  """True when the runner's workers run on this machine (DirectRunner, Prism, or any runner
  with LOOPBACK workers) and so read its files."""
  from apache_beam.options.pipeline_options import PortableOptions  # pylint: disable=import-outside-toplevel
  if type(runner).__name__ in LOCAL_RUNNERS:
    return True
  return options.view_as(PortableOptions).environment_type == "LOOPBACK"


def remote_temp_location(options) -> str | None:
  """The job's temp location (--temp_location, else --staging_location) when it is on a
  filesystem other than this machine's, e.g. gs://; None otherwise."""
  from apache_beam.options.pipeline_options import GoogleCloudOptions  # pylint: disable=import-outside-toplevel
  cloud = options.view_as(GoogleCloudOptions)
  temp = cloud.temp_location or cloud.staging_location
  return temp if temp and not is_local(temp) else None


def settle_model(classifier_model: str | None, runner=None, options=None,
                 window: int | None = None, overlap: int = DEFAULT_OVERLAP) -> str | None:
  """The model location every reader takes (the job's --classifier_model), settled once, where
  the graph is built or a benchmark starts.

  - None, with $SAFETY_PRETRAINING_CLASSIFIER set: None, the image holds the model (the
    template image sets the variable for its launcher and workers alike).
  - None otherwise: the default model, built here once (cached); None, with a warning, where
    the `local` extra is missing (the workers then stop with NoClassifierModel).
  - With `window`, the model is checked to take it (`check_model_window`, WindowError), where
    its files are read: before staging.
  - A local model, with `runner` (and its `options`) a runner whose workers are elsewhere and
    a remote temp location: the copy staged there (`stage`), so the workers download it; with
    a local temp location the local path is kept (workers must see it, as on one machine's
    Flink cluster). No `runner`: read here (a benchmark), kept as it is.
  - A remote model: as it is; the workers download it.
  """
  classifier_model = model_or_default(classifier_model)
  if window is not None:
    check_model_window(classifier_model, window, overlap)
  if classifier_model is None:
    if os.environ.get(IMAGE_MODEL_ENV):
      LOG.info("classifier: the model folder $%s names (%s), on the workers too",
               IMAGE_MODEL_ENV, os.environ[IMAGE_MODEL_ENV])
    else:
      LOG.warning("%s", NO_MODEL)
    return None
  if runner is None or not is_local(classifier_model) or workers_are_local(runner, options):
    return classifier_model
  temp = remote_temp_location(options)
  if temp is None:
    LOG.warning("classifier model %s is a local path and the workers do not run here: they "
                "must see the same path (or pass --classifier_model=gs://...)", classifier_model)
    return classifier_model
  from apache_beam.options.pipeline_options import TestOptions  # pylint: disable=import-outside-toplevel
  dry_run = bool(options.view_as(TestOptions).dry_run)  # as DataflowRunner reads it
  staged = stage(classifier_model, FileSystems.join(temp, *STAGING_FOLDER), upload=not dry_run)
  LOG.info("classifier model %s staged for the workers at %s", classifier_model, staged)
  return staged
