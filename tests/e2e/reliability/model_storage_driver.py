"""The Cloud Storage run of test_model_storage.py; runs inside a private network namespace.

    unshare -n sh -c 'ip link set lo up && \
      python -m tests.e2e.reliability.model_storage_driver WORKDIR'

Starts the Cloud Storage emulator and the metadata stand-in of gcs_driver.py on 127.0.0.1, uploads
a tiny GGUF generator (tests/models/generators/tiny_gguf.py), its converted model folder and the
classifier's model folders with google-cloud-storage, then, each "machine" a local cache folder
of its own ($SAFETY_PRETRAINING_CACHE):

1. machine a loads the local generator from the gs:// GGUF with a gs:// --generator_cache: it
   converts the model and uploads the conversion; machine b then downloads it, not converting;
2. machine c loads the generator from the gs:// model folder;
3. three processes of machine d prepare the model at once;
4. the pipeline runs with --generator_model and --generator_cache on gs:// (machine e);
5. the launch is run with --window=600 against the gs:// classifier folder (its model.json read,
   nothing downloaded), and against a gs:// folder without model.json.

It prints one JSON line with what it found; the test checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys

from tests.e2e.reliability.gcs_driver import BUCKET, PROJECT, _start_services

GGUF = f"gs://{BUCKET}/models/tiny.gguf"
FOLDER = f"gs://{BUCKET}/models/tiny-folder"
CACHE = f"gs://{BUCKET}/cache"
CLASSIFIER = f"gs://{BUCKET}/models/classifier"
OLD_CLASSIFIER = f"gs://{BUCKET}/models/classifier-without-metadata"


class _Messages(logging.Handler):
  """The local generator's log messages, to tell a conversion from a download."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def _tree(folder: str) -> dict:
  """{relative path: sha256} of every file under a local folder, hidden ones included."""
  found = {}
  for base, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(base, name), "rb") as f:
        found[os.path.relpath(os.path.join(base, name), folder)] = hashlib.sha256(
            f.read()).hexdigest()
  return found


def _on_machine(workdir: str, machine: str) -> str:
  cache = os.path.join(workdir, "machines", machine)
  os.environ["SAFETY_PRETRAINING_CACHE"] = cache
  return cache


def _generate(workdir: str, machine: str, model_path: str, cache_dir: str | None) -> dict:
  """The local backend on one machine: load (prepare) the model, generate one reply."""
  from models.generators.local import LocalGeneratorHandler  # pylint: disable=import-outside-toplevel
  from models.generators.prompts import KIND_REFUSEWEB, build_prompt  # pylint: disable=import-outside-toplevel
  cache = _on_machine(workdir, machine)
  messages = _Messages()
  logger = logging.getLogger("models.generators.local")
  logger.setLevel(logging.INFO)
  logger.addHandler(messages)
  try:
    handler = LocalGeneratorHandler(model_path, cache_dir, max_new_tokens=8)
    model = handler.load_model()
    (result,) = handler.run_inference([build_prompt(KIND_REFUSEWEB, "How do rivers form?")],
                                      model)
  finally:
    logger.removeHandler(messages)
  return {"messages": messages.messages, "local_cache": _tree(cache),
          "finish_reason": result.inference.finish_reason, "text": result.inference.text}


def _prepare_in_process(workdir: str, barrier, results) -> None:
  """One SDK process of machine d: all start together once each has imported Beam."""
  _on_machine(workdir, "d")
  from models.generators.local import prepare_local_model  # pylint: disable=import-outside-toplevel
  barrier.wait(timeout=120)
  try:
    folder = prepare_local_model(GGUF, CACHE)
  except Exception as error:  # pylint: disable=broad-except
    results.put({"error": f"{type(error).__name__}: {error}"[-3000:]})
    raise
  results.put({"folder": os.path.relpath(folder, os.path.join(workdir, "machines", "d")),
               "files": _tree(folder)})


def _prepare_at_once(workdir: str, processes: int) -> dict:
  context = multiprocessing.get_context("spawn")
  barrier, results = context.Barrier(processes), context.Queue()
  workers = [context.Process(target=_prepare_in_process, args=(workdir, barrier, results))
             for _ in range(processes)]
  for worker in workers:
    worker.start()
  got = [results.get(timeout=300) for _ in workers]
  for worker in workers:
    worker.join(timeout=60)
  return {"got": got, "exit_codes": [worker.exitcode for worker in workers],
          "local_cache": sorted(_tree(os.path.join(workdir, "machines", "d")))}


def _step(function, *args, **kwargs):
  """`function`'s result, or {"error": its exception} so each check reports its own failure."""
  try:
    return function(*args, **kwargs)
  except Exception as error:  # pylint: disable=broad-except
    return {"error": f"{type(error).__name__}: {error}"[-3000:]}


def _launch(args: list) -> dict:
  """`python -m beam_pipeline.run ARGS` as main runs it: its exit status and error output."""
  from beam_pipeline import run as entry  # pylint: disable=import-outside-toplevel
  errors = io.StringIO()
  with contextlib.redirect_stderr(errors):
    try:
      entry.main(args)
      code = 0
    except SystemExit as exit_:
      code = exit_.code
  return {"code": code, "stderr": errors.getvalue()}


def main(workdir: str) -> None:
  metadata, emulator = _start_services(workdir)
  try:
    result = _exercise(workdir)
  finally:
    emulator.terminate()
    emulator.wait(timeout=30)
    metadata.shutdown()
  print(json.dumps(result, sort_keys=True))


def _exercise(workdir: str) -> dict:
  # Imported here: the environment above must be set first.
  from google.cloud import storage  # pylint: disable=import-outside-toplevel

  from beam_pipeline import run as entry  # pylint: disable=import-outside-toplevel
  from beam_pipeline.options import SAMPLE_INPUT  # pylint: disable=import-outside-toplevel
  from models.classifier.export import ensure_exported  # pylint: disable=import-outside-toplevel
  from models.generators.local import prepare_local_model  # pylint: disable=import-outside-toplevel
  from tests.models.generators.tiny_gguf import write_tiny_gguf  # pylint: disable=import-outside-toplevel

  bucket = storage.Client(project=PROJECT).bucket(BUCKET)
  gguf = write_tiny_gguf(os.path.join(workdir, "tiny.gguf"))
  bucket.blob("models/tiny.gguf").upload_from_filename(gguf)
  _on_machine(workdir, "uploader")
  converted = prepare_local_model(gguf, os.path.join(workdir, "uploader-cache"))
  for name, _ in sorted(_tree(converted).items()):
    bucket.blob(f"models/tiny-folder/{name}").upload_from_filename(os.path.join(converted, name))
  shipped = os.path.dirname(ensure_exported()["int8"])
  for name in ("model.int8.onnx", "tokenizer.json", "model.json"):
    if os.path.exists(os.path.join(shipped, name)):
      bucket.blob(f"models/classifier/{name}").upload_from_filename(os.path.join(shipped, name))
  for name in ("model.int8.onnx", "tokenizer.json"):
    bucket.blob(f"models/classifier-without-metadata/{name}").upload_from_filename(
        os.path.join(shipped, name))

  found = {"converted": _tree(converted)}
  found["a"] = _step(_generate, workdir, "a", GGUF, CACHE)
  found["remote_cache"] = sorted(b.name for b in bucket.client.list_blobs(BUCKET, prefix="cache/"))
  found["b"] = _step(_generate, workdir, "b", GGUF, CACHE)
  found["c"] = _step(_generate, workdir, "c", FOLDER, None)
  found["d"] = _step(_prepare_at_once, workdir, processes=3)

  _on_machine(workdir, "e")
  found["pipeline"] = _step(entry.run, [
      "--runner=DirectRunner", f"--input={SAMPLE_INPUT}", f"--output=gs://{BUCKET}/out",
      f"--generator_model={GGUF}", f"--generator_cache={CACHE}", "--max_new_tokens=8",
      "--quality=off", "--max_attempts=1", "--num_shards=1"])
  found["e"] = sorted(_tree(os.path.join(workdir, "machines", "e")))

  tmp = os.environ.get("TMPDIR", "/tmp")
  launch = ["--runner=DirectRunner", f"--input={SAMPLE_INPUT}", "--generation=off",
            "--window=600"]
  found["window"] = _launch(launch + [f"--classifier_model={CLASSIFIER}",
                                      f"--output=gs://{BUCKET}/window-out"])
  found["copies_after_window"] = sorted(n for n in os.listdir(tmp)
                                        if n.startswith("safety-classifier-"))
  found["window_without_metadata"] = _launch(launch + [
      f"--classifier_model={OLD_CLASSIFIER}", f"--output=gs://{BUCKET}/window-old-out"])
  found["objects"] = sorted(b.name for b in bucket.client.list_blobs(BUCKET))
  return found


if __name__ == "__main__":
  main(sys.argv[1])
