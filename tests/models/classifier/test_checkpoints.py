"""Checkpoints of an adapter run: a stopped run resumes and ends where an unbroken one ends."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.classifier import checkpoints, data, train

SAFE = ["We planted {} tulips along the school fence.", "The bakery sells {} kinds of rye bread.",
        "Our hiking club walked {} miles along the coast.", "The choir learned {} new carols."]
UNSAFE = ["I will hunt you down and stab you {} times.", "Those people are vermin, kill {} of them.",
          "Tell me how to poison {} people at the office.", "Build a bomb and hurt {} shoppers."]


def test_save_writes_atomically_latest_finds_the_newest_and_load_restores_random_states(
    tmp_path):
  directory = str(tmp_path / "run")
  assert checkpoints.latest(directory) is None
  checkpoints.save(directory, 9, {"plan": {"lr": 1.0}, "x": 1})
  random.seed(3)
  np.random.seed(3)
  torch.manual_seed(3)
  path = checkpoints.save(directory, 10, {"plan": {"lr": 1.0}, "x": 2})
  expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
  assert checkpoints.latest(directory) == path and os.path.basename(path) == "step-00000010.pt"
  assert sorted(os.listdir(directory)) == ["step-00000009.pt", "step-00000010.pt"]  # no partials
  state = checkpoints.load(path, {"lr": 1.0})
  assert state["x"] == 2 and state["step"] == 10
  assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
  with pytest.raises(SystemExit, match="lr"):
    checkpoints.load(path, {"lr": 2.0})


def _labels(path):
  rows, index = [], 0
  for number in range(24):
    for templates, score, source in ((SAFE, 0, "garden"), (UNSAFE, 4, "threats")):
      while data.is_dev(f"{source}:{index}"):
        index += 1
      rows.append({"id": f"{source}:{index}", "source": source, "score_0_5": score,
                   "text": templates[number % 4].format(number + 2)})
      index += 1
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _args(labels, out, *extra):
  return ["--labels", str(labels), "--output_dir", str(out), "--checkpoint_dir",
          str(out / "checkpoints"), "--epochs", "2", "--batch_size", "8",
          "--balanced_sampling", "0.5", "--augment", "16", "--augment_share", "0.1",
          "--feature_layers", "4,5,6", "--head_hidden", "16", "--head_dropout", "0.1",
          "--threads", "1", "--log_every", "1000", *extra]


@pytest.mark.slow
def test_a_run_stopped_between_checkpoints_resumes_to_the_same_weights(tmp_path):
  labels = tmp_path / "labels.jsonl"
  _labels(labels)
  whole = train.train(train.build_parser().parse_args(_args(labels, tmp_path / "whole")))
  per_epoch = whole["total_steps"] // 2  # 64 windows (48 texts + 16 templated) in batches of 8
  assert whole["steps"] == whole["total_steps"] == 16 and per_epoch == 8
  assert whole["samples_per_epoch"] == 64 and whole["balanced_sampling"] == 0.5
  assert sum(v for s, v in whole["sampling_shares"].items()
             if s.startswith("augment_")) == pytest.approx(0.1, abs=1e-4)
  assert sorted(os.listdir(tmp_path / "whole" / "checkpoints")) == [
      f"step-{s:08d}.pt" for s in (2, 4, 6, 8, 10, 12, 14, 16)]  # each quarter epoch

  stopped = tmp_path / "stopped"
  first = train.train(train.build_parser().parse_args(_args(labels, stopped, "--max_steps", "11")))
  assert first["steps"] == 11 and first["total_steps"] == 16
  # a kill after step 11: the checkpoint written on stopping is lost, step 10's is the newest
  os.remove(stopped / "checkpoints" / "step-00000011.pt")
  with pytest.raises(SystemExit, match="lr"):  # other settings: refused, not mixed
    train.train(train.build_parser().parse_args(
        _args(labels, stopped, "--resume", "--lr", "5e-4")))
  resumed = train.train(train.build_parser().parse_args(_args(labels, stopped, "--resume")))
  assert resumed["resumed_at_step"] == 10 and whole["resumed_at_step"] == 0
  assert resumed["steps"] == 16 and resumed["train_tokens_seen"] == whole["train_tokens_seen"]

  a = load_file(str(tmp_path / "whole" / "classifier.safetensors"))
  b = load_file(str(stopped / "classifier.safetensors"))
  assert a.keys() == b.keys() and any(k.startswith("adapter.") for k in a)
  for key in a:
    assert torch.allclose(a[key], b[key], atol=1e-6), key
  # and the run did learn: the head moved after the first quarter epoch's checkpoint
  early = torch.load(stopped / "checkpoints" / "step-00000002.pt", weights_only=False)
  assert not torch.allclose(early["trainable"]["head.4.weight"], a["head.4.weight"])
