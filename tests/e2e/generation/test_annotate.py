"""The LLM-judge labeller, and the paper's loop: annotate -> train -> export -> score."""

from __future__ import annotations

import glob
import gzip
import json
import os

import pytest

from beam_pipeline import run as entry
from beam_pipeline.options import SAMPLE_INPUT
from transforms.annotate import INVALID_JUDGEMENT, Judgement, check_judgement, parse_judgement
from tests.e2e.generation.servers import MODEL_ALIAS


@pytest.mark.parametrize("text,expected", [
    ('{"score": 3, "reason": "Moderate violence."}', Judgement(3, "Moderate violence.")),
    ('{"score":0,"reason":"A recipe."}\n```', Judgement(0, "A recipe.")),
    ('Here you go: {"score": "5", "reason": " Threats\n of violence. "}', Judgement(5, "Threats of violence.")),
    ('{"score": 2.0, "reason": "Insults."} {"score": 4, "reason": "ignored"}', Judgement(2, "Insults.")),
    ('{"score": 9, "reason": "x"} then {"score": 1, "reason": "Mild."}', Judgement(1, "Mild.")),
])
def test_parse_judgement_accepts_valid_answers(text, expected):
  assert parse_judgement(text) == expected
  assert check_judgement(text) is None


@pytest.mark.parametrize("text", [
    '{"score": 8, "reason": "out of range"}',
    '{"score": "high", "reason": "not a number"}',
    '{"score": true, "reason": "a boolean"}',
    '{"score": 3}',
    '{"score": 3, "reason": "cut off in the mid',
    '{"score":N, "reason":"a placeholder"}',
    "no JSON at all",
    "",
])
def test_parse_judgement_rejects_invalid_answers(text):
  with pytest.raises(ValueError):
    parse_judgement(text)
  assert check_judgement(text) == INVALID_JUDGEMENT


def _rows(pattern):
  rows = []
  for path in sorted(glob.glob(pattern)):
    with gzip.open(path, "rt", encoding="utf-8") as f:
      rows.extend(json.loads(line) for line in f)
  return rows


@pytest.mark.slow
def test_annotate_train_export_score_loop(llama_server, tmp_path):
  """The bundled sample labelled through the openai backend (llama.cpp serving SmolLM2), a
  classifier head trained on the labels, exported to ONNX, and used to score the sample."""
  from models.classifier import export, train  # pylint: disable=import-outside-toplevel

  labelled = str(tmp_path / "annotated")
  report = entry.run([
      "--runner=DirectRunner", "--mode=annotate", f"--input={SAMPLE_INPUT}",
      f"--output={labelled}", "--num_shards=2", "--generator=openai",
      f"--openai_base_url={llama_server.base_url}", f"--openai_model={MODEL_ALIAS}",
      "--openai_api_key_env=none",
      "--max_new_tokens=64", "--max_attempts=4"])
  assert report["checks_hold"], report
  labels = os.path.join(labelled, "labels", "part-*.jsonl.gz")
  rows = _rows(labels)
  assert len(rows) == report["labelled"] > 0
  assert sum(report["per_score"].values()) == len(rows)
  for row in rows:
    assert 0 <= row["score_0_5"] <= 5 and row["reason"] and row["text"]
    assert row["judge"] == f"openai:{MODEL_ALIAS}" and 1 <= row["attempts"] <= 4
  dead = _rows(os.path.join(labelled, "dead_letter", "part-*.jsonl.gz"))
  assert len(dead) == report["dead_letters_total"]
  assert {d["reason"] for d in dead} <= {"empty_text", INVALID_JUDGEMENT}

  weights = tmp_path / "weights"
  config = train.train(train.build_parser().parse_args([
      "--labels", labels, "--frozen", "--head_epochs", "5", "--output_dir", str(weights),
      "--precision", "fp32"]))
  assert config["train_texts"] + 0 <= len(rows) and config["train_texts"] > 0
  onnx = export.export(str(weights / "classifier.safetensors"), str(weights / "classifier.json"),
                       str(tmp_path / "onnx"))

  scored = str(tmp_path / "scored")
  report = entry.run([
      "--runner=DirectRunner", f"--input={SAMPLE_INPUT}", f"--output={scored}",
      "--num_shards=1", "--generation=off", f"--classifier_model={onnx['int8']}"])
  assert report["checks_hold"], report
  assert sum(report["per_score"].values()) == report["documents_valid"]
