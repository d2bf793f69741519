"""Dataflow: the pipeline translated offline with DataflowRunner --dry_run, the Flex Template's
metadata.json against the pipeline's options, and the scheduled launch against both.

The dry run happens in a private network namespace with a placeholder project, region and
gs:// temp location: nothing is staged, submitted or sent anywhere. It takes its options from
the scheduled launch (templates/scheduler/launch_body.json), so what the schedule launches is
what is translated here.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

import engine_harness as harness
from engine_runs import run_engine

TEMPLATES = os.path.join(harness.REPO, "templates")
# The method's stages (beam_pipeline/pipeline.py), each a top-level step of the job.
STAGES = ("Read", "Score", "Route", "Tag", "Rephrase", "GateRephrase", "RefuseWeb",
          "GateRefuseWeb", "MoralEducation", "GateMoralEducation", "Writeraw", "Writetagged",
          "Writesafeweb", "Writerefuseweb", "Writemoral_education", "WriteDeadLetters")
GENERATION_STAGES = ("Rephrase", "RefuseWeb", "MoralEducation")
PROJECT = "your-project"
REGION = "us-central1"


def _load_json(*path):
  with open(os.path.join(TEMPLATES, *path), encoding="utf-8") as f:
    return json.load(f)


@pytest.fixture(scope="module")
def metadata():
  return _load_json("metadata.json")


@pytest.fixture(scope="module")
def scheduler_job():
  with open(os.path.join(TEMPLATES, "scheduler", "job.yaml"), encoding="utf-8") as f:
    return yaml.safe_load(f)


@pytest.fixture(scope="module")
def launch_body():
  return _load_json("scheduler", "launch_body.json")["launchParameter"]


def _option_names():
  sys.path.insert(0, TEMPLATES)
  import make_metadata  # pylint: disable=import-outside-toplevel
  return [action.dest for action in make_metadata.option_actions()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, launch_body):
  """The scheduled launch, translated for Dataflow offline; its dataflow_job.json as a dict."""
  environment = launch_body["environment"]
  args = [f"--{name}={value}" for name, value in launch_body["parameters"].items()]
  args += [
      f"--project={PROJECT}", f"--region={REGION}",
      f"--temp_location={environment['tempLocation']}",
      f"--staging_location={environment['stagingLocation']}",
      f"--sdk_container_image={environment['sdkContainerImage']}",
      f"--service_account_email={environment['serviceAccountEmail']}",
      f"--machine_type={environment['machineType']}",
      f"--max_num_workers={environment['maxWorkers']}", "--run_date=2026-03-01"]
  output = str(tmp_path_factory.mktemp("dataflow") / "job")
  run_engine("dataflow", output, *args, timeout=300)
  with open(os.path.join(output, "dataflow_job.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.slow
def test_dry_run_job_holds_every_stage(dry_run):
  assert dry_run["job_type"] in ("JOB_TYPE_BATCH", 1)
  top_level = {name.split("/")[0] for name in dry_run["transforms"]}
  missing = [stage for stage in STAGES if stage not in top_level]
  assert not missing, (missing, sorted(top_level))


@pytest.mark.slow
def test_dry_run_job_runs_on_the_template_image(dry_run, launch_body):
  image = launch_body["environment"]["sdkContainerImage"]
  assert {env["image"] for env in dry_run["environments"].values()} == {image}
  pools = dry_run["worker_environment"]["worker_pools"]
  assert len(pools) == 1
  sdk_images = pools[0]["sdk_harness_container_images"]
  assert {sdk["environment_id"] for sdk in sdk_images} == set(dry_run["environments"])
  assert all(sdk["container_image"] == image for sdk in sdk_images)
  assert pools[0]["worker_harness_container_image"] in ("", image)
  options = {item["key"]: item["value"]
             for item in dry_run["worker_environment"]["sdk_pipeline_options"]["display_data"]}
  assert options["input"] == "gs://your-bucket/crawl/2026-03-01/*.jsonl.gz"
  assert options["output"] == "gs://your-bucket/safety-pretraining/2026-03-01"
  assert options["project"] == PROJECT and options["region"] == REGION


@pytest.mark.slow
def test_the_scheduled_launch_rents_no_gpu_its_generator_does_not_use(dry_run, launch_body):
  """The schedule generates through a shared endpoint: every step on the CPU workers."""
  assert launch_body["parameters"]["generator"] == "openai"
  hint = "beam:resources:accelerator:v1"
  assert not [env_id for env_id, env in dry_run["environments"].items()
              if hint in env.get("resource_hints", {})]
  assert "workerAccelerator" not in json.dumps(launch_body)


@pytest.mark.slow
def test_dry_run_puts_generation_alone_on_gpu_workers(tmp_path, launch_body):
  """--generation_accelerator hints the generation steps only; scoring stays on CPU workers."""
  accelerator = "type:nvidia-l4;count:1;install-nvidia-driver"
  environment = launch_body["environment"]
  output = str(tmp_path / "job")
  run_engine("dataflow", output, "--input=gs://your-bucket/crawl/*.jsonl.gz",
             "--output=gs://your-bucket/out", "--generator=vllm",
             "--vllm_model=meta-llama/Llama-3.1-8B-Instruct",
             f"--generation_accelerator={accelerator}", "--generation_min_ram=32GB",
             f"--project={PROJECT}", f"--region={REGION}",
             f"--temp_location={environment['tempLocation']}",
             f"--sdk_container_image={environment['sdkContainerImage']}", timeout=300)
  with open(os.path.join(output, "dataflow_job.json"), encoding="utf-8") as f:
    job = json.load(f)
  hint = "beam:resources:accelerator:v1"
  hints = {env_id: env["resource_hints"] for env_id, env in job["environments"].items()}
  gpu_environments = {env_id for env_id, h in hints.items() if h.get(hint) == accelerator}
  assert gpu_environments
  inference = [name for name in job["transforms"]
               if name.split("/")[0] in GENERATION_STAGES and name.endswith("/BeamML_RunInference")]
  assert sorted(inference) == sorted(f"{s}/Generate/BeamML_RunInference" for s in GENERATION_STAGES)
  for name, env_id in job["transforms"].items():
    stage = name.split("/")[0]
    if stage in GENERATION_STAGES and env_id:
      assert env_id in gpu_environments, name
    elif env_id:
      assert env_id not in gpu_environments, name


@pytest.mark.parametrize("generator", ["local", "openai"])
def test_an_accelerator_for_a_generator_that_never_uses_it_is_refused(generator):
  from beam_pipeline import options as pipeline_options
  from beam_pipeline import pipeline
  options = pipeline_options.SafetyPretrainingOptions([
      "--input=x", "--output=y", f"--generator={generator}",
      "--generation_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"])
  with pytest.raises(ValueError, match="idle"):
    pipeline.generation_hints(options)


def test_metadata_names_exactly_the_pipeline_options(metadata):
  names = [parameter["name"] for parameter in metadata["parameters"]]
  assert len(names) == len(set(names))
  assert sorted(names) == sorted(_option_names())
  for parameter in metadata["parameters"]:
    assert parameter["label"] and parameter["helpText"], parameter
    assert parameter["regexes"] and all(re.compile(r) for r in parameter["regexes"]), parameter
  required = {p["name"] for p in metadata["parameters"] if not p["isOptional"]}
  assert required == {"input", "output"}


def test_metadata_is_up_to_date():
  done = subprocess.run(
      [sys.executable, os.path.join(TEMPLATES, "make_metadata.py"), "--check"],
      capture_output=True, text=True, check=False, env=harness.child_environment())
  assert done.returncode == 0, done.stdout + done.stderr


def test_metadata_regexes_accept_the_defaults(metadata):
  """Each option's default (where it has one a template user could pass) passes its regex."""
  defaults = _option_defaults()
  for parameter in metadata["parameters"]:
    default = defaults[parameter["name"]]
    if parameter["name"] in ("input", "output") or default in (None, []):
      continue
    value = str(default).lower() if isinstance(default, bool) else str(default)
    assert any(re.fullmatch(r, value) for r in parameter["regexes"]), (parameter["name"], value)


def _option_defaults():
  sys.path.insert(0, TEMPLATES)
  import make_metadata  # pylint: disable=import-outside-toplevel
  return {action.dest: action.default for action in make_metadata.option_actions()}


def test_scheduler_launches_daily(scheduler_job):
  minute, hour, day, month, weekday = scheduler_job["schedule"].split()
  assert minute.isdigit() and hour.isdigit() and (day, month, weekday) == ("*", "*", "*")
  target = scheduler_job["httpTarget"]
  assert target["httpMethod"] == "POST"
  assert re.fullmatch(
      r"https://dataflow\.googleapis\.com/v1b3/projects/[^/]+/locations/[^/]+/"
      r"flexTemplates:launch", target["uri"]), target["uri"]
  assert target["oauthToken"]["scope"] == "https://www.googleapis.com/auth/cloud-platform"
  assert os.path.isfile(os.path.join(TEMPLATES, "scheduler", target["bodyFile"]))


def test_scheduled_parameters_match_the_metadata(launch_body, metadata):
  by_name = {parameter["name"]: parameter for parameter in metadata["parameters"]}
  parameters = launch_body["parameters"]
  unknown = sorted(set(parameters) - set(by_name))
  assert not unknown, unknown
  missing = sorted(p["name"] for p in metadata["parameters"]
                   if not p["isOptional"] and p["name"] not in parameters)
  assert not missing, missing
  for name, value in parameters.items():
    assert isinstance(value, str), (name, value)
    assert any(re.fullmatch(r, value) for r in by_name[name]["regexes"]), (name, value)
  assert launch_body["containerSpecGcsPath"].startswith("gs://")
  assert launch_body["environment"]["sdkContainerImage"]


def test_scheduled_paths_are_date_partitioned(launch_body):
  """A launch on 2026-03-02 reads and writes 2026-03-01 (run_date=yesterday, UTC)."""
  from beam_pipeline import launch
  from beam_pipeline.options import SafetyPretrainingOptions
  parameters = launch_body["parameters"]
  assert "{date}" in parameters["input"] and "{date}" in parameters["output"]
  options = SafetyPretrainingOptions(
      launch.template_flags([f"--{name}={value}" for name, value in parameters.items()]))
  launch.fill_dated_paths(options, today=datetime.date(2026, 3, 2))
  assert options.input == "gs://your-bucket/crawl/2026-03-01/*.jsonl.gz"
  assert options.output == "gs://your-bucket/safety-pretraining/2026-03-01"
  assert options.overwrite is True


def test_template_flags_read_switches_as_flex_templates_pass_them():
  from beam_pipeline import launch
  assert launch.template_flags(["--overwrite=true", "--seed=3"]) == ["--overwrite", "--seed=3"]
  assert launch.template_flags(["--overwrite=false"]) == []
  assert launch.template_flags(["--overwrite"]) == ["--overwrite"]


def test_the_schedule_sizes_shards_from_the_data(launch_body):
  """What one worker sorts in memory stays bounded: the schedule, like the default, sizes the
  shard count from the data (--num_shards=0) instead of fixing it."""
  from beam_pipeline import launch
  from beam_pipeline.options import SafetyPretrainingOptions
  options = SafetyPretrainingOptions(launch.template_flags(
      [f"--{name}={value}" for name, value in launch_body["parameters"].items()]))
  assert options.num_shards == 0
  assert SafetyPretrainingOptions([]).num_shards == 0


def _built_images() -> dict:
  """{Dockerfile target: image} that templates/cloudbuild.yaml builds, substitutions filled in."""
  with open(os.path.join(TEMPLATES, "cloudbuild.yaml"), encoding="utf-8") as f:
    build = yaml.safe_load(f)

  def filled(text):
    return re.sub(r"\$\{(_\w+)\}", lambda m: build["substitutions"][m.group(1)], text)

  images = {}
  for step in build["steps"]:
    args = step["args"]
    targets = [arg.split("=", 1)[1] for arg in args if arg.startswith("--target=")]
    assert len(targets) == 1, args
    images[targets[0]] = filled(args[args.index("-t") + 1])
  assert sorted(filled(image) for image in build["images"]) == sorted(images.values())
  return images


def test_the_schedule_runs_on_the_lean_image(launch_body):
  """Cloud Build builds both targets of the Dockerfile; the scheduled launch runs on the cpu one,
  which installs no `local` extra, so no torch (tests/e2e/reliability/test_lean_worker.py installs
  each target's requirement set and checks it)."""
  images = _built_images()
  assert set(images) == {"cpu", "gpu"}
  assert launch_body["environment"]["sdkContainerImage"] == images["cpu"]
  with open(os.path.join(TEMPLATES, "Dockerfile"), encoding="utf-8") as f:
    dockerfile = f.read()
  stages = re.findall(r"^FROM \S+ AS (\w+)$", dockerfile, re.M)
  assert {"cpu", "gpu"} <= set(stages) and stages[-1] == "cpu", stages  # cpu: the default target
  packages = dict(re.findall(r"^ARG (CPU_PACKAGES|GPU_PACKAGES)=(\S+)$", dockerfile, re.M))
  assert "local" not in packages["CPU_PACKAGES"] and "gcp" in packages["CPU_PACKAGES"], packages
  assert "local" in packages["GPU_PACKAGES"], packages
