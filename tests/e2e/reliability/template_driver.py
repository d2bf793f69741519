"""The Flex Template launch of test_template_launch.py; runs inside a private network namespace.

    unshare -n sh -c 'ip link set lo up && python -m tests.e2e.reliability.template_driver WORKDIR'

Starts the Cloud Storage emulator and the metadata stand-in of gcs_driver.py on 127.0.0.1, then
runs `python -m beam_pipeline.run` exactly as the Flex Template launcher does: DataflowRunner
with --template_location, the template's parameters as `--name=value` flags. Beam writes the
job's spec and returns without a job. Prints one JSON line: the launch's exit status and output,
and the template file as read back from the bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.e2e.reliability.gcs_driver import BUCKET, PROJECT, _start_services


def main(workdir: str) -> None:
  metadata, emulator = _start_services(workdir)
  try:
    from google.cloud import storage  # pylint: disable=import-outside-toplevel
    client = storage.Client(project=PROJECT)
    bucket = client.bucket(BUCKET)
    bucket.blob("in/sample.jsonl").upload_from_filename(
        os.path.join(workdir, "in", "sample.jsonl"))
    template = f"gs://{BUCKET}/templates/safety-pretraining.json"
    launch = subprocess.run(
        [sys.executable, "-m", "beam_pipeline.run", "--runner=DataflowRunner",
         f"--project={PROJECT}", "--region=us-central1", f"--temp_location=gs://{BUCKET}/tmp",
         f"--staging_location=gs://{BUCKET}/staging", f"--template_location={template}",
         "--sdk_container_image=gcr.io/your-project/safety-pretraining:latest",
         "--sdk_location=container", f"--input=gs://{BUCKET}/in/*.jsonl",
         f"--output=gs://{BUCKET}/out", "--generation=off", "--overwrite=false"],
        capture_output=True, text=True, timeout=300, check=False, env=dict(os.environ))
    blob = bucket.blob("templates/safety-pretraining.json")
    spec = json.loads(blob.download_as_bytes()) if blob.exists() else None
    steps = _top_level_steps(client, spec) if spec else []
    objects = sorted(b.name for b in client.list_blobs(BUCKET))
  finally:
    emulator.terminate()
    emulator.wait(timeout=30)
    metadata.shutdown()
  print(json.dumps({"returncode": launch.returncode, "stdout": launch.stdout[-4000:],
                    "stderr": launch.stderr[-6000:], "template": spec, "steps": steps,
                    "objects": objects}))


def _top_level_steps(client, spec: dict) -> list:
  """The job graph's top-level steps: the portable pipeline the template points at."""
  from apache_beam.portability.api import beam_runner_api_pb2  # pylint: disable=import-outside-toplevel
  url = spec["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
  bucket_name, _, name = url[len("gs://"):].partition("/")
  pipeline = beam_runner_api_pb2.Pipeline.FromString(
      client.bucket(bucket_name).blob(name).download_as_bytes())
  transforms = pipeline.components.transforms
  roots = [transforms[t] for t in pipeline.root_transform_ids]
  # Beam wraps the user's graph in one root; its subtransforms are the pipeline's stages.
  while len(roots) == 1 and roots[0].subtransforms:
    roots = [transforms[t] for t in roots[0].subtransforms]
  return [t.unique_name for t in roots]


if __name__ == "__main__":
  main(sys.argv[1])
