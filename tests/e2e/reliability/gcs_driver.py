"""The Cloud Storage run of test_cloud_storage.py; runs inside a private network namespace.

    unshare -n sh -c 'ip link set lo up && python -m tests.e2e.reliability.gcs_driver WORKDIR'

Starts, on 127.0.0.1 only, a Cloud Storage emulator that speaks the JSON API (the PyPI package
gcp-storage-emulator) and a stand-in for the GCE metadata server, so Beam's GCS filesystem finds
credentials at once as on a Google Cloud worker (without it, Beam retries the credential lookup
for about 30 s before going on anonymously). Then, with STORAGE_EMULATOR_HOST pointing at the
emulator:

1. uploads the input documents and the classifier's model folder (model.int8.onnx and
   tokenizer.json) with google-cloud-storage;
2. runs the pipeline with gs:// input, output and --classifier_model (Beam's FileSystems);
3. runs it again into the same gs:// output, which must be refused, and once more with
   --overwrite;
4. runs it on the same input from local files with the local classifier;
5. downloads every gs:// output object with google-cloud-storage;
6. downloads the gs:// model folder in several processes at once into one folder, as the SDK
   processes of one worker machine do (models.classifier.artifacts.download).

It prints one JSON line with what it found; the test checks it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

from tests.e2e.reliability.conftest import output_tree

BUCKET = "safety-pretraining-test"
PROJECT = "emulated-project"


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
  """The few paths of the GCE metadata server that google-auth reads."""

  ROUTES = {
      "/": "",
      "/computeMetadata/v1/project/project-id": PROJECT,
      "/computeMetadata/v1/universe/universe-domain": "googleapis.com",
      "/computeMetadata/v1/instance/service-accounts/default/": json.dumps({
          "email": "pipeline@emulated-project.iam.gserviceaccount.com",
          "aliases": ["default"],
          "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}),
      "/computeMetadata/v1/instance/service-accounts/default/token": json.dumps({
          "access_token": "emulated-token", "expires_in": 3600, "token_type": "Bearer"}),
  }

  def do_GET(self):  # pylint: disable=invalid-name
    path = self.path.split("?", 1)[0]
    if path.startswith("/computeMetadata/v1/instance/service-accounts/") and path.endswith(
        "/token"):
      path = "/computeMetadata/v1/instance/service-accounts/default/token"
    elif path.startswith("/computeMetadata/v1/instance/service-accounts/"):
      path = "/computeMetadata/v1/instance/service-accounts/default/"
    body = self.ROUTES.get(path)
    if body is None:
      self.send_response(404)
      self.send_header("Metadata-Flavor", "Google")
      self.end_headers()
      return
    data = body.encode()
    self.send_response(200)
    self.send_header("Metadata-Flavor", "Google")
    self.send_header("Content-Type",
                     "application/json" if body.startswith("{") else "application/text")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):  # quiet
    pass


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, process=None, seconds: float = 30) -> None:
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if process is not None and process.poll() is not None:
      raise RuntimeError(f"the emulator exited with {process.returncode}")
    try:
      socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
      return
    except OSError:
      time.sleep(0.1)
  raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _start_services(workdir: str):
  metadata = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MetadataHandler)
  threading.Thread(target=metadata.serve_forever, daemon=True).start()
  metadata_address = f"127.0.0.1:{metadata.server_address[1]}"
  os.environ["GCE_METADATA_HOST"] = metadata_address
  os.environ["GCE_METADATA_IP"] = metadata_address
  port = _free_port()
  log = open(os.path.join(workdir, "emulator.log"), "wb")  # pylint: disable=consider-using-with
  emulator = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
       "--port", str(port), "--in-memory", "--default-bucket", BUCKET],
      stdout=log, stderr=subprocess.STDOUT)
  _wait_for_port(port, emulator)
  os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
  return metadata, emulator


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
  from models.classifier.export import default_model_path  # pylint: disable=import-outside-toplevel
  from beam_pipeline.output_folder import OutputExistsError  # pylint: disable=import-outside-toplevel

  client = storage.Client(project=PROJECT)
  bucket = client.bucket(BUCKET)
  local_input = os.path.join(workdir, "in")
  for name in sorted(os.listdir(local_input)):
    bucket.blob(f"in/{name}").upload_from_filename(os.path.join(local_input, name))
  model = default_model_path()
  for name in ("model.int8.onnx", "tokenizer.json"):
    bucket.blob(f"models/classifier/{name}").upload_from_filename(
        os.path.join(os.path.dirname(model), name))

  common = ["--runner=DirectRunner", "--generation=off", "--num_shards=2",
            "--unreadable_files=dead_letter"]
  gs_args = common + [f"--input=gs://{BUCKET}/in/*", f"--output=gs://{BUCKET}/out",
                      f"--classifier_model=gs://{BUCKET}/models/classifier"]
  started = time.monotonic()
  gs_report = entry.run(gs_args)
  gs_seconds = time.monotonic() - started
  objects_after_first = sorted(blob.name for blob in client.list_blobs(BUCKET, prefix="out/"))
  try:
    entry.run(gs_args)
    refused = ""
  except OutputExistsError as error:
    refused = str(error)
  overwrite_report = entry.run(gs_args + ["--overwrite"])

  local_output = os.path.join(workdir, "local_out")
  local_report = entry.run(common + [f"--input={local_input}/*", f"--output={local_output}"])

  gs_files = {}
  for blob in client.list_blobs(BUCKET, prefix="out/"):
    gs_files[blob.name[len("out/"):]] = blob.download_as_bytes()
  local_files = output_tree(local_output)
  model_copies = [name for name in os.listdir(os.environ.get("TMPDIR", "/tmp"))
                  if name.startswith("safety-classifier-")]
  concurrent = _download_at_once(f"gs://{BUCKET}/models/classifier",
                                 os.path.join(workdir, "concurrent"), processes=3)
  return {
      "gs_report": gs_report,
      "overwrite_report": overwrite_report,
      "local_report": local_report,
      "gs_seconds": round(gs_seconds, 1),
      "objects_after_first": objects_after_first,
      "refused": refused,
      "gs_names": sorted(gs_files),
      "local_names": sorted(local_files),
      # Each run's .committed_run names its own run id; every other file is the same.
      "different": sorted(name for name in local_files
                          if gs_files.get(name) != local_files[name]
                          and name != ".committed_run"),
      "gs_committed_run": json.loads(gs_files.get(".committed_run", b"null")),
      "model_copies": model_copies,
      "model_sha256": {name: _sha256(os.path.join(os.path.dirname(model), name))
                       for name in ("model.int8.onnx", "tokenizer.json")},
      "concurrent": concurrent,
      "authenticated": bool(os.environ.get("GCE_METADATA_HOST")),
  }


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _download_in_process(location: str, root: str, barrier, results) -> None:
  """One SDK process's download: all start together once every process has imported Beam."""
  from models.classifier import artifacts  # pylint: disable=import-outside-toplevel
  files = artifacts.files_of(location)
  barrier.wait(timeout=120)
  local = artifacts.download(files, root)
  results.put({"onnx": local.onnx, "tokenizer": local.tokenizer,
               "sha256": {os.path.basename(p): _sha256(p) for p in (local.onnx, local.tokenizer)}})


def _download_at_once(location: str, root: str, processes: int) -> dict:
  """The model downloaded by `processes` processes at once into one folder: what each got,
  and every file left in the folder afterwards (temporary ones included)."""
  context = multiprocessing.get_context("spawn")
  barrier, results = context.Barrier(processes), context.Queue()
  workers = [context.Process(target=_download_in_process, args=(location, root, barrier, results))
             for _ in range(processes)]
  for worker in workers:
    worker.start()
  got = [results.get(timeout=300) for _ in workers]
  for worker in workers:
    worker.join(timeout=60)
  return {"got": got, "exit_codes": [worker.exitcode for worker in workers],
          "files": sorted(os.path.relpath(os.path.join(folder, name), root)
                          for folder, _, names in os.walk(root) for name in names)}


if __name__ == "__main__":
  main(sys.argv[1])
