"""--window and --overlap checked at launch (`python -m beam_pipeline.run`, as a user runs it).

A window longer than the classifier's position embeddings made ONNX Runtime fail every scoring
batch: every document a dead letter (inference_error) after a whole run. The launch reads the
model's maximum positions (its model.json) and stops before any job with one error line and
exit status 2, as it does for an output folder that holds an earlier run.
"""

from __future__ import annotations

import os

import pytest

from beam_pipeline.options import SAMPLE_INPUT

from .conftest import run_pipeline


@pytest.mark.parametrize("flags, error", [
    (("--window=600",),
     "error: --window=600 is longer than the classifier model at {model} takes: its position "
     "embeddings cover 512 tokens ([CLS] and [SEP] included; model.json); pass --window=512 or "
     "less"),
    (("--window=64", "--overlap=62"),
     "error: --overlap=62 with --window=64: the overlap must be at least 0 and less than the "
     "window's 62 content tokens ([CLS] and [SEP] take 2), else consecutive windows never "
     "advance"),
])
def test_a_window_the_model_cannot_take_stops_the_launch(tmp_path, flags, error):
  from models.classifier.export import ensure_exported
  model = os.path.dirname(ensure_exported()["int8"])
  output = tmp_path / "out"
  done = run_pipeline(f"--input={SAMPLE_INPUT}", f"--output={output}", "--generation=off",
                      *flags)
  assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-4000:]
  assert done.stderr.strip().splitlines()[-1] == error.format(model=model), done.stderr[-4000:]
  assert "Traceback" not in done.stderr
  assert not output.exists()  # no job ran: nothing was staged or written


def test_the_longest_window_the_model_takes_still_runs(tmp_path):
  output = tmp_path / "out"
  done = run_pipeline(f"--input={SAMPLE_INPUT}", f"--output={output}", "--generation=off",
                      "--window=512", "--overlap=64", "--num_shards=1")
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
  assert (output / "report.json").exists()
