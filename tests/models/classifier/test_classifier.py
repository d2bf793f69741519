"""The safety classifier: training, ONNX export, chunking, evaluation and the Beam handler."""

import json
import os

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.classifier import chunking, data, evaluate, export, model, train
from models.classifier.handler import OnnxSafetyModelHandler, make_session, run_windows

SAFE = ["I baked {} loaves of bread with my kids this morning.",
        "The library opens at {} on weekdays for study groups.",
        "Our garden club planted {} new apple trees in the park.",
        "The choir practises {} songs for the winter concert."]
UNSAFE = ["I will kill you and burn your house down, {} times over.",
          "Tell me how to poison my neighbour's {} dogs without getting caught.",
          "Those people are vermin and {} of them should be wiped out.",
          "Give me steps to build a bomb to hurt {} people at the mall."]

REAL_TEXTS = [
    "The Moon takes about 27 days to orbit the Earth.",
    "Damn, that party was wild and we drank way too much beer.",
    "The referee was a useless idiot today, what a clown.",
    "Women are too emotional to lead, everyone knows it.",
    "I swear I will find you and kill you and your family.",
    "Write a guide for making a bomb to hurt people at the stadium.",
    "Community gardens teach children how long a tomato takes to ripen. " * 40,
    "Just double your dose of the pills if you feel dizzy, skip the doctor.",
    "This shit traffic is killing me every damn morning.",
    "Our chess club meets on Thursdays and beginners are welcome.",
]


@pytest.fixture(scope="module")
def shipped():
  """The committed classifier's ONNX files (built into the cache once per machine)."""
  return export.ensure_exported()


def _fixture_labels(path):
  rows, index = [], 0
  for number in range(40):
    for templates, score in ((SAFE, 0), (UNSAFE, 4)):
      text = templates[number % 4].format(number + 2)
      while data.is_dev(f"fixture:{index}"):
        index += 1
      rows.append({"id": f"fixture:{index}", "text": text, "score_0_5": score, "source": "fixture"})
      index += 1
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return rows


def test_training_on_a_fixture_beats_chance(tmp_path):
  labels = tmp_path / "labels.jsonl"
  rows = _fixture_labels(labels)
  out = tmp_path / "weights"
  train.main(["--labels", str(labels), "--output_dir", str(out), "--epochs", "3",
              "--batch_size", "16", "--lr", "2e-3", "--head_lr", "2e-2", "--log_every", "100"])
  assert os.path.getsize(out / "classifier.safetensors") < 2 * 1024 * 1024
  classifier = model.load_classifier(str(out / "classifier.safetensors"),
                                     str(out / "classifier.json"))
  windower = chunking.Windower()
  windows = [w[0] for w in windower.windows([r["text"] for r in rows])]
  ids, mask = model.pad_batch(windows)
  with torch.no_grad():
    predicted = classifier(ids, mask).argmax(-1).numpy()
  truth = np.array([r["score_0_5"] for r in rows])
  accuracy = float((predicted == truth).mean())
  assert accuracy > 0.75, f"accuracy {accuracy:.2f} on a two-class fixture (chance: 0.5)"


def test_committed_weights_are_small():
  """Only the adapters and the head are committed (1.3 MB + 1.2 MB), never the encoder."""
  for name in os.listdir(model.WEIGHTS_DIR):
    assert os.path.getsize(os.path.join(model.WEIGHTS_DIR, name)) < 4 * 1024 * 1024, name


def test_onnx_matches_pytorch_on_real_text(shipped):
  """fp32 ONNX: same score everywhere, probabilities within 1e-4. int8: >= 90% same score,
  mean probability error below 0.03 (on these 10 texts; the benchmark measures 512)."""
  classifier = model.load_classifier()
  windows = [w for text in REAL_TEXTS for w in chunking.Windower().windows([text])[0]]
  ids, mask = model.pad_batch(windows)
  with torch.no_grad():
    reference = torch.softmax(classifier(ids, mask), -1).numpy()
  fp32 = run_windows(make_session(shipped["fp32"]), windows)
  int8 = run_windows(make_session(shipped["int8"]), windows)
  assert np.abs(fp32 - reference).max() < 1e-4
  assert (fp32.argmax(1) == reference.argmax(1)).all()
  assert (int8.argmax(1) == reference.argmax(1)).mean() >= 0.9
  assert np.abs(int8 - reference).mean() < 0.03


def test_export_is_deterministic(tmp_path):
  first = export.export(model.WEIGHTS_FILE, model.CONFIG_FILE, str(tmp_path / "a"))
  second = export.export(model.WEIGHTS_FILE, model.CONFIG_FILE, str(tmp_path / "b"))
  for key in ("fp32", "int8"):
    with open(first[key], "rb") as a, open(second[key], "rb") as b:
      assert a.read() == b.read(), key


def test_windows_cover_the_text_with_overlap():
  windower = chunking.Windower(window=16, overlap=4)
  ids = list(range(1000, 1050))
  windows = windower.split_ids(ids)
  assert all(len(w) <= 16 and w[0] == windower.cls_id and w[-1] == windower.sep_id
             for w in windows)
  covered = [t for w in windows for t in w[1:-1]]
  assert set(covered) == set(ids)
  for before, after in zip(windows, windows[1:]):
    assert list(before[-5:-1]) == list(after[1:5])  # 4 shared tokens
  assert len(windower.split_ids([])) == 1


def test_document_score_is_the_maximum_over_windows():
  probs = np.array([[0.9, 0.1, 0, 0, 0, 0],
                    [0.1, 0, 0, 0, 0.8, 0.1],
                    [0.2, 0.7, 0.1, 0, 0, 0]], dtype=np.float32)
  score, doc_probs, window_scores = chunking.document_score(probs)
  assert score == 4 and window_scores == [0, 4, 1]
  assert doc_probs == pytest.approx(probs[1].tolist())


def test_a_threat_inside_a_long_benign_document_raises_its_score(shipped):
  benign = "The council discussed the new bus timetable and the library hours. " * 60
  # one window's worth of unsafe text inside long benign text
  threat = ("Write a step-by-step guide to building a bomb to kill as many people as possible. "
            "Tell me how to poison my neighbour without getting caught. "
            "Those people are vermin and deserve to be exterminated. ") * 5
  windower = chunking.Windower()
  session = make_session(shipped["int8"])
  scores = {}
  for name, text in (("benign", benign + benign), ("mixed", benign + threat + benign)):
    windows = windower.windows([text])[0]
    probs = run_windows(session, windows)
    scores[name] = chunking.document_score(probs)
  assert len(scores["mixed"][2]) > 2
  assert scores["mixed"][0] == max(scores["mixed"][2])
  assert scores["mixed"][0] > scores["benign"][0]


def test_evaluate_reports_every_figure(tmp_path, shipped):
  labels = tmp_path / "labels.jsonl"
  _fixture_labels(labels)
  result = evaluate.evaluate(data.read_labels(str(labels)), shipped["int8"], 256, 32)
  expected = {"n", "n_score0", "macro_f1", "recall_at_1", "precision_at_1", "recall_at_3",
              "precision_at_3", "auroc", "auprc", "fpr_score0"}
  assert set(result) == {"overall", "by_source", "by_threshold", "calibration", "by_kind",
                         "confusion", "by_band", "long_pages"}
  assert set(result["overall"]) == expected
  assert set(result["by_source"]["fixture"]) == expected
  assert result["overall"]["auroc"] > 0.9
  # thresholds: "predicted >= t" against "label >= t"; the fixture's unsafe texts are all 4
  assert set(result["by_threshold"]) == {"1", "2", "3", "4", "5"}
  assert result["by_threshold"]["5"]["n_positive"] == 0
  assert result["by_threshold"]["5"]["recall"] is None
  assert result["by_threshold"]["3"]["n_positive"] == 40
  calibration = result["calibration"]
  assert sum(row["n"] for row in calibration["bins"]) == 80 and 0 <= calibration["ece"] <= 1
  counts = np.asarray(result["confusion"]["counts"])
  assert counts.shape == (6, 6) and counts.sum() == 80 and counts[[0, 4]].sum() == 80
  assert result["by_band"]["4-5"]["n_label"] == 40
  assert result["by_band"]["4-5"]["n_predicted"] == counts[:, 4:].sum()


def test_threshold_calibration_and_kind_tables_count_right():
  labels = np.array([0, 0, 3, 4, 5, 1])
  predicted = np.array([0, 3, 3, 2, 5, 1])
  rows = evaluate.by_threshold(labels, predicted)
  assert rows["3"]["precision"] == pytest.approx(2 / 3) and rows["3"]["recall"] == pytest.approx(2 / 3)
  assert rows["5"]["precision"] == 1.0 and rows["1"]["flagged"] == pytest.approx(5 / 6)
  table = evaluate.calibration(np.array([0, 3, 0, 4]), np.array([0.05, 0.95, 0.15, 0.85]))
  assert [b["n"] for b in table["bins"]] == [1, 1, 1, 1]
  assert table["ece"] == pytest.approx((0.05 + 0.05 + 0.15 + 0.15) / 4)
  examples = [data.Example(str(i), "t", int(s), "x", c) for i, (s, c) in enumerate(
      [(3, "self_harm_suicide"), (3, "eating_disorder"), (4, "sexual_fiction"),
       (4, "hate:bisexual"), (0, "self_harm_suicide")])]
  kinds = evaluate.by_kind(examples, np.array([e.score for e in examples]),
                           np.array([3, 1, 4, 4, 0]))
  assert kinds["self_harm"] == {"n_unsafe": 2, "recall_at_3": 0.5, "recall_at_4": 0.0}
  assert kinds["sexual"]["n_unsafe"] == 1 and kinds["hate"]["n_unsafe"] == 1


def test_handler_scores_documents_inside_beam(shipped):
  windower = chunking.Windower()
  texts = ["A quiet walk in the park with my dog.",
           "Write a step-by-step guide to building a bomb to kill as many people as possible."]
  examples = [windower.windows([t])[0] for t in texts]
  with TestPipeline() as p:
    scores = (p | beam.Create(examples)
              | RunInference(OnnxSafetyModelHandler(shipped["int8"]))
              | beam.Map(lambda r: chunking.document_score(r.inference)[0]))
    assert_that(scores, lambda got: _check(sorted(got)))


def _check(scores):
  assert len(scores) == 2 and scores[0] == 0 and scores[1] >= 3, scores


def _tiny_checkpoint(folder, num_labels=6, max_positions=512):
  """A small BERT sequence classifier of the standard architecture, saved as a checkpoint,
  with the encoder package's fast tokenizer (same vocabulary)."""
  import shutil
  from transformers import BertConfig, BertForSequenceClassification
  torch.manual_seed(7)
  config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, num_labels=num_labels,
                      max_position_embeddings=max_positions)
  BertForSequenceClassification(config).eval().save_pretrained(folder)
  shutil.copyfile(os.path.join(chunking.encoder_dir(), "tokenizer.json"),
                  os.path.join(folder, "tokenizer.json"))
  return folder


def test_any_hf_checkpoint_exports_to_the_same_contract(tmp_path):
  from transformers import AutoModelForSequenceClassification
  checkpoint = _tiny_checkpoint(str(tmp_path / "checkpoint"))
  out = tmp_path / "onnx"
  export.main(["--hf_model", checkpoint, "--output_dir", str(out)])
  assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= set(os.listdir(out))
  reference_model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
  windower = chunking.Windower(tokenizer_path=str(out))
  windows = [w for text in REAL_TEXTS for w in windower.windows([text])[0]]
  ids, mask = model.pad_batch(windows)
  with torch.no_grad():
    reference = torch.softmax(reference_model(input_ids=ids, attention_mask=mask).logits, -1)
  fp32 = run_windows(make_session(str(out / "model.onnx")), windows)
  assert fp32.shape == (len(windows), 6)
  assert np.abs(fp32 - reference.numpy()).max() < 1e-4
  # the pipeline's handler takes the exported file as it takes the shipped one
  examples = [windower.windows([t])[0] for t in REAL_TEXTS[:3]]
  with TestPipeline() as p:
    shapes = (p | beam.Create(examples)
              | RunInference(OnnxSafetyModelHandler(str(out / "model.int8.onnx")))
              | beam.Map(lambda r: (r.inference.shape[1], round(float(r.inference.sum()))
                                    // r.inference.shape[0])))
    assert_that(shapes, equal_to([(6, 1)] * 3))


def test_an_hf_export_says_its_maximum_positions_and_the_launch_reads_them(tmp_path):
  """--window is checked at launch against the exported model.json: a checkpoint with 128
  positions takes --window=128 and stops a launch with --window=200 before any job."""
  from models.classifier import artifacts
  checkpoint = _tiny_checkpoint(str(tmp_path / "checkpoint"), max_positions=128)
  out = tmp_path / "onnx"
  export.main(["--hf_model", checkpoint, "--output_dir", str(out)])
  with open(out / "model.json", encoding="utf-8") as f:
    assert json.load(f) == {"max_positions": 128}
  assert artifacts.settle_model(str(out), window=128) == str(out)
  with pytest.raises(chunking.WindowError, match="--window=200 is longer .* 128 tokens"):
    artifacts.settle_model(str(out), window=200)


def test_a_checkpoint_without_six_labels_is_refused(tmp_path):
  checkpoint = _tiny_checkpoint(str(tmp_path / "checkpoint"), num_labels=2)
  with pytest.raises(SystemExit, match="6"):
    export.main(["--hf_model", checkpoint, "--output_dir", str(tmp_path / "onnx")])


def test_a_head_on_cached_features_of_layers_4_to_6(tmp_path):
  labels = tmp_path / "labels.jsonl"
  rows = _fixture_labels(labels)
  out = tmp_path / "head"
  config = train.train(train.build_parser().parse_args([
      "--labels", str(labels), "--output_dir", str(out), "--frozen", "--feature_layers",
      "4,5,6", "--head_hidden", "16", "--head_epochs", "30", "--head_lr", "1e-2",
      "--source_weight", "fix*=2", "--adapters", model.WEIGHTS_FILE]))
  assert config["feature_layers"] == [4, 5, 6] and config["head_hidden"] == 16
  assert config["source_weight"] == ["fix*=2"] and config["adapters"]
  classifier = model.load_classifier(str(out / "classifier.safetensors"),
                                     str(out / "classifier.json"))
  assert classifier.feature_layers == (4, 5, 6) and classifier.feature_size == 3 * 384
  windows = [w[0] for w in chunking.Windower().windows([r["text"] for r in rows])]
  ids, mask = model.pad_batch(windows)
  with torch.no_grad():
    predicted = classifier(ids, mask).argmax(-1).numpy()
  assert (predicted == np.array([r["score_0_5"] for r in rows])).mean() > 0.9
  # the exported graph computes the same features and head as PyTorch
  paths = export.export(str(out / "classifier.safetensors"), str(out / "classifier.json"),
                        str(tmp_path / "onnx"))
  with torch.no_grad():
    reference = torch.softmax(classifier(ids, mask), -1).numpy()
  assert np.abs(run_windows(make_session(paths["fp32"]), windows) - reference).max() < 1e-4


def test_unsafe_bias_moves_only_the_2_3_boundary():
  logits = torch.tensor([[2.0, 0.0, 0.0, 1.8, 0.0, 0.0],    # 0, close to 3: becomes 3
                         [0.0, 0.0, 2.0, 0.0, 0.0, 0.0],    # 2, far from 3: stays 2
                         [0.0, 0.0, 0.0, 1.8, 2.0, 0.0],    # 4: stays 4 (never down to 3)
                         [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])   # 5: untouched
  shifted = model.shift_unsafe(logits, 0.5)
  assert shifted.argmax(-1).tolist() == [3, 2, 4, 5]
  assert torch.equal(shifted[2:], logits[2:])
  assert torch.allclose(shifted[:2, 3], logits[:2, 3] + 0.5)
  assert torch.equal(model.shift_unsafe(logits, 0.0), logits)


def test_source_weights_balance_sources_and_boost_globs():
  examples = [data.Example(str(i), "t", 0, s) for i, s in enumerate(["big"] * 9 + ["page_a"])]
  even = train.text_weights(examples, 0.0)
  assert even == pytest.approx(np.ones(10))
  balanced = train.text_weights(examples, 1.0)
  assert balanced[:9].sum() == pytest.approx(balanced[9])  # each source weighs the same
  boosted = train.text_weights(examples, 0.0, ["page_*=3"])
  assert boosted[9] == pytest.approx(3 * boosted[0]) and boosted.mean() == pytest.approx(1.0)
  with pytest.raises(ValueError):
    train.text_weights(examples, 0.0, ["page_*"])


def test_leave_one_source_out_reports_every_held_out_source(tmp_path, capsys):
  from models.classifier import loso
  rows = []
  for number in range(60):
    for templates, score in ((SAFE, 0), (UNSAFE, 4)):
      source = "forum" if number % 2 else "news"
      rows.append({"id": f"{source}:{number}:{score}", "source": source, "score_0_5": score,
                   "text": templates[number % 4].format(number + 2)})
  labels = tmp_path / "labels.jsonl"
  labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
  loso.main(["--labels", str(labels), "--min_rows", "10", "--head_epochs", "20",
             "--head_lr", "1e-2", "--unsafe_bias_grid=-20,0,20", "--json"])
  summary = json.loads(capsys.readouterr().out)
  by_bias = {r["unsafe_bias"]: r for r in summary["by_unsafe_bias"]}
  assert set(by_bias) == {-20.0, 0.0, 20.0}
  # a bias moves score 3 alone: at +20 every text is scored 3; at -20 none is, and texts the
  # head scores 4 (the fixture's unsafe score) stay 4
  assert by_bias[-20.0]["pooled_recall_at_3"] == by_bias[0.0]["pooled_recall_at_3"]
  assert by_bias[20.0]["pooled_recall_at_3"] == 1.0 and by_bias[20.0]["mean_flagged_at_1"] == 1.0
  assert by_bias[0.0]["pooled_recall_at_3"] == pytest.approx(np.mean(
      [r["recall_at_3"] for r in summary["by_source"].values() if r["recall_at_3"] is not None]))
  assert summary["held_out"] == ["forum", "news"]
  assert set(summary["by_source"]) == {"forum", "news"}
  assert summary["by_source"]["news"]["n"] == 60
  assert summary["worst_auroc"] == min(r["auroc"] for r in summary["by_source"].values())
  assert summary["mean_auroc"] > 0.9
