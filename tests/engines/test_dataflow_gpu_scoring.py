"""Dataflow with GPU scoring: --classifier_device=cuda and --classifier_accelerator, translated
offline with DataflowRunner --dry_run (as test_dataflow.py does; nothing is staged or sent).

The accelerator hint goes on the classifier's steps alone, Score and every Gate, so reading,
generation through the endpoint and writing stay on CPU workers; and the job still records
the ONNX model folder, staged under the temp location, that the quality gate's encoder reads.
"""

from __future__ import annotations

import json
import os

import pytest

from engine_runs import run_engine

ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"
HINT = "beam:resources:accelerator:v1"
TEMP = "gs://your-bucket/tmp"
CLASSIFIER_STAGES = ("Score", "GateRephrase", "GateRefuseWeb", "GateMoralEducation")


@pytest.mark.slow
def test_score_and_every_gate_alone_carry_the_classifier_accelerator(tmp_path):
  output = str(tmp_path / "job")
  run_engine("dataflow", output, "--input=gs://your-bucket/crawl/*.jsonl.gz",
             "--output=gs://your-bucket/out", "--generator=openai",
             "--openai_base_url=http://vllm.internal:8000/v1", "--openai_model=m",
             "--openai_api_key_env=none", "--classifier_device=cuda",
             f"--classifier_accelerator={ACCELERATOR}", "--project=your-project",
             "--region=us-central1", f"--temp_location={TEMP}",
             "--sdk_container_image=us-central1-docker.pkg.dev/p/templates/gpu:2.77.0",
             timeout=300)
  with open(os.path.join(output, "dataflow_job.json"), encoding="utf-8") as f:
    job = json.load(f)
  gpu = {env_id for env_id, env in job["environments"].items()
         if env["resource_hints"].get(HINT) == ACCELERATOR}
  assert gpu, job["environments"]
  hinted, plain = set(), set()
  for name, env_id in job["transforms"].items():
    if not env_id:
      continue
    stage = name.split("/")[0]
    (hinted if env_id in gpu else plain).add(stage)
    assert (env_id in gpu) == (stage in CLASSIFIER_STAGES), name
  assert hinted == set(CLASSIFIER_STAGES)
  assert {"Read", "Rephrase", "RefuseWeb", "Writeraw", "CommitOutput"} <= plain
  # the classifier's own RunInference of each step runs on the GPU workers
  classify = ["Score/Classify/BeamML_RunInference"] + [
      f"{stage}/Rescore/Classify/BeamML_RunInference" for stage in CLASSIFIER_STAGES[1:]]
  assert all(job["transforms"][name] in gpu for name in classify), classify
  # the quality gate's encoder reads the ONNX folder staged for the workers
  options = {item["key"]: item["value"]
             for item in job["worker_environment"]["sdk_pipeline_options"]["display_data"]}
  assert options["classifier_model"].startswith(f"{TEMP}/safety-pretraining/classifier/")
  assert options["classifier_accelerator"] == ACCELERATOR
