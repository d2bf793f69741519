"""The classifier as workers get it: a built model folder, found, staged and downloaded, no torch.

A model folder holds the ONNX graph (`model.int8.onnx`, the one scored with, and `model.onnx`,
fp32) and the `tokenizer.json` that texts are windowed with (`python -m models.classifier.export`
writes all three). Workers install the package without extras, so they have ONNX Runtime and
`tokenizers` but no torch, transformers or encoder package: they never build the model, only
read it. Everything here therefore uses Beam's FileSystems and the standard library only.

- `--classifier_model` names a folder (its `model.int8.onnx` is scored with) or an `.onnx` file
  (with `tokenizer.json` beside it), local or on any filesystem Beam knows (gs://).
- Without it, `$SAFETY_PRETRAINING_CLASSIFIER` names the model folder that the machine (a
  container image) holds; else a worker stops with `NoClassifierModel`, one line that says what
  to pass.
- `launch_location` runs where the graph is built: with no `--classifier_model` it builds the
  default model there (the `local` extra) and, for a runner whose workers are elsewhere, stages
  it under the job's remote temp location, named by its content, so workers only download.
- `local_files` runs on workers: a remote model is downloaded once per machine, each file to a
  unique temporary name and then renamed into place, so the SDK processes of one machine never
  write the same file, and a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from models.classifier.folder import INT8_NAME, TOKENIZER_NAME

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


def is_local(path: str) -> bool:
  """True for a path on this machine's filesystem (no scheme, or file://)."""
  return FileSystems.get_scheme(path) in (None, "file")


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


def _metadata(path: str):
  return FileSystems.get_filesystem(path).metadata(path)


def download(files: ModelFiles, root: str | None = None) -> ModelFiles:
  """Copies remote model files into `root` (default: the machine's temporary folder) and returns
  the local copies.

  The copies go to `safety-classifier-<key>/`, the key a digest of each file's path, size and
  modification time, so a model replaced at the same path is downloaded afresh. A file already
  there with the right size is kept. Each file is written to a temporary name of its own
  (mkstemp) in that folder and renamed into place (atomic on POSIX): SDK processes of one
  machine that download at once each write their own file, and the last rename wins with the
  same bytes.
  """
  sources = [_metadata(files.onnx), _metadata(files.tokenizer)]
  key = hashlib.sha256("\n".join(
      f"{m.path}\t{m.size_in_bytes}\t{m.last_updated_in_seconds}" for m in sources).encode())
  folder = os.path.join(root or tempfile.gettempdir(), "safety-classifier-" + key.hexdigest()[:16])
  os.makedirs(folder, exist_ok=True)
  local = ModelFiles(os.path.join(folder, FileSystems.split(files.onnx)[1]),
                     os.path.join(folder, TOKENIZER_NAME))
  for source, target in zip(sources, (local.onnx, local.tokenizer)):
    if os.path.exists(target) and os.path.getsize(target) == source.size_in_bytes:
      continue
    _download_file(source.path, target, source.size_in_bytes)
  return local


def _download_file(source: str, target: str, size: int) -> None:
  folder, name = os.path.split(target)
  handle, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
  try:
    with os.fdopen(handle, "wb") as out, FileSystems.open(
        source, compression_type=CompressionTypes.UNCOMPRESSED) as src:
      shutil.copyfileobj(src, out, _BLOCK)
    if os.path.getsize(partial) != size:
      raise IOError(f"downloading {source}: got {os.path.getsize(partial)} bytes of {size}")
    os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from the machine's other users
    os.replace(partial, target)
    LOG.info("classifier file %s downloaded to %s", source, target)
  except BaseException:
    if os.path.exists(partial):
      os.unlink(partial)
    raise


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
  for source, name in ((files.tokenizer, TOKENIZER_NAME), (files.onnx, onnx_name)):
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
  """The one answer to "the given model, or the default": `classifier_model` when given; else
  None when $SAFETY_PRETRAINING_CLASSIFIER is set (the image holds the model, and `local_files`
  reads it there); else the default model folder, built here once (None without the `local`
  extra). The launch (`launch_location`), the quality gate's encoder and the benchmarks use it.
  """
  if classifier_model:
    return classifier_model
  if os.environ.get(IMAGE_MODEL_ENV):
    return None
  return default_model_folder()


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


def launch_location(classifier_model: str | None, runner, options) -> str | None:
  """The --classifier_model the workers get, settled where the graph is built.

  - None, with $SAFETY_PRETRAINING_CLASSIFIER set: None, the image holds the model (the
    template image sets the variable for its launcher and workers alike).
  - None otherwise: the default model, built here once (cached); None, with a warning, where
    the `local` extra is missing (the workers then stop with NoClassifierModel).
  - A local model, for a runner whose workers are elsewhere and a remote temp location: the
    copy staged there (`stage`), so the workers download it; with a local temp location the
    local path is kept (workers must see it, as on one machine's Flink cluster).
  - A remote model: as it is; the workers download it.
  """
  classifier_model = model_or_default(classifier_model)
  if classifier_model is None:
    if os.environ.get(IMAGE_MODEL_ENV):
      LOG.info("classifier: the model folder $%s names (%s), on the workers too",
               IMAGE_MODEL_ENV, os.environ[IMAGE_MODEL_ENV])
    else:
      LOG.warning("%s", NO_MODEL)
    return None
  if not is_local(classifier_model) or workers_are_local(runner, options):
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
