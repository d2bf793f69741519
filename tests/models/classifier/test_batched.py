"""The batched PyTorch classifier path (`--classifier_device=cuda`), checked on CPU: batched runs
give the same 0-5 scores as one window at a time, probabilities within 1e-3; the merged folder
loads back without the PyPI encoder or peft; the Beam handler scores through ScoreSafety."""

from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipeline.options import SAMPLE_INPUT
from models.classifier import chunking
from models.classifier.batched import BatchedScorer, length_buckets, load_merged, save_merged
from models.classifier.export import ensure_exported
from models.classifier.handler import make_session, run_windows
from models.classifier.torch_handler import TorchSafetyModelHandler, window_tokens
from corpus.records import DOCUMENTS, Document
from transforms.scoring import ScoreSafety

pytestmark = pytest.mark.slow


def _texts() -> list[str]:
  with open(SAMPLE_INPUT, encoding="utf-8") as f:
    texts = [json.loads(line)["text"] for line in f]
  # Documents of several lengths, so batches mix windows of different padding.
  return texts + [" ".join(texts[:n]) * n for n in range(2, 7)]


@pytest.fixture(scope="module")
def classifier():
  from models.classifier.model import load_classifier
  return load_classifier()


@pytest.fixture(scope="module")
def windows():
  per_text = chunking.Windower().windows(_texts())
  return per_text, [w for text_windows in per_text for w in text_windows]


def _doc_scores(probs, per_text):
  scores, offset = [], 0
  for text_windows in per_text:
    scores.append(chunking.document_score(probs[offset:offset + len(text_windows)])[0])
    offset += len(text_windows)
  return scores


def test_length_buckets():
  lengths = [10, 256, 30, 256, 100, 5]
  batches = length_buckets(lengths, max_batch_tokens=520)
  assert sorted(i for b in batches for i in b) == list(range(6))
  assert batches[0] == [1, 3]  # the two longest, 2 x 256 <= 520
  for batch in batches:
    longest = -(-max(lengths[i] for i in batch) // 8) * 8
    assert len(batch) == 1 or len(batch) * longest <= 520
  assert length_buckets(lengths, 1) == [[1], [3], [4], [2], [0], [5]]


def test_batched_matches_one_window_at_a_time(classifier, windows):
  per_text, flat = windows
  lengths = {len(w) for w in flat}
  assert len(flat) > 20 and len(lengths) > 5
  alone = BatchedScorer(classifier, "cpu", max_batch_tokens=1)(flat)  # every window alone
  batched = BatchedScorer(classifier, "cpu", max_batch_tokens=8192)(flat)
  assert np.abs(alone - batched).max() < 1e-3
  assert (alone.argmax(1) == batched.argmax(1)).all()
  assert _doc_scores(alone, per_text) == _doc_scores(batched, per_text)
  # The merged PyTorch model is the model the ONNX fp32 graph was exported from.
  onnx_fp32 = run_windows(make_session(ensure_exported()["fp32"], intra_op_threads=1), flat)
  assert np.abs(onnx_fp32 - alone).max() < 1e-3


def test_merged_folder_loads_back_without_the_encoder_package(classifier, windows, tmp_path):
  _, flat = windows
  folder = save_merged(classifier, str(tmp_path / "merged"),
                      os.path.join(chunking.encoder_dir(), "tokenizer.json"))
  loaded = load_merged(folder)
  a = BatchedScorer(classifier, "cpu", max_batch_tokens=4096)(flat[:16])
  b = BatchedScorer(loaded, "cpu", max_batch_tokens=4096)(flat[:16])
  assert np.abs(a - b).max() < 1e-5
  assert (tmp_path / "merged" / "tokenizer.json").exists()


def test_torch_handler_scores_through_score_safety(windows):
  handler = TorchSafetyModelHandler(device="cpu", dtype="float32", max_batch_tokens=4096)
  assert window_tokens(("key", [np.zeros(5), np.zeros(7)])) == 12
  assert handler.batch_elements_kwargs()["max_batch_size"] == 4096
  per_text, flat = windows
  expected = _doc_scores(
      BatchedScorer(handler.load_model().classifier, "cpu", max_batch_tokens=1)(flat), per_text)
  documents = [Document(id=f"d{i}", text=text) for i, text in enumerate(_texts())]
  with TestPipeline() as p:
    scored = p | beam.Create(documents) | ScoreSafety(handler)
    assert_that(scored[DOCUMENTS] | beam.Map(lambda d: (d.id, d.safety_score)),
                equal_to([(f"d{i}", s) for i, s in enumerate(expected)]))


def test_gpu_benchmark_runs_from_a_bundle(tmp_path):
  """benchmarks/gpu_check.sh's classifier figure, exercised on CPU from a real bundle of a few
  documents (its numbers mean nothing here; the code path is the one the GPU machine runs)."""
  from benchmarks import classifier_gpu, classifier_throughput, make_gpu_bundle  # pylint: disable=import-outside-toplevel
  bundle = str(tmp_path / "bundle")
  make_gpu_bundle.main(["--output", bundle, "--docs", "12", "--chars", "1500"])
  generator = os.listdir(os.path.join(bundle, "generator"))  # for generation_throughput.py
  assert "config.json" in generator and "tokenizer.json" in generator
  assert not [name for name in generator if name.endswith(".safetensors")]
  args = classifier_throughput.build_parser().parse_args(
      ["--device", "cuda", "--bundle", bundle, "--gpu_passes", "1", "--gpu_batch_tokens", "4096"])
  report = classifier_gpu.gpu_report(args, device="cpu")
  assert report["documents"] == 12 and set(report["windows"]) == {"256", "512"}
  entry = report["windows"]["256"]
  assert entry["model_gflops_per_token"] == pytest.approx(
      2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536 + 2 * 256 * 384) / 1e9)
  assert set(entry["engines"]) == {"bucketed_bf16", "eager_fp16_padded"}
  # On CPU the bucketed engine runs fp32: the shipped int8 scores agree on (nearly) all.
  assert entry["bucketed_bf16_vs_cpu_int8_score_agreement"] >= 10 / 12


def test_cuda_device_option_picks_the_batched_handler():
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from beam_pipeline import pipeline as graph  # pylint: disable=import-outside-toplevel
  from beam_pipeline.options import SafetyPretrainingOptions  # pylint: disable=import-outside-toplevel
  from models.classifier.handler import OnnxSafetyModelHandler  # pylint: disable=import-outside-toplevel

  def handler_of(*argv):
    options = PipelineOptions(list(argv))
    return graph.classifier_handler(options.view_as(SafetyPretrainingOptions),
                                    beam.Pipeline(options=options))

  assert isinstance(handler_of(), OnnxSafetyModelHandler)
  handler = handler_of(
      "--classifier_device=cuda", "--classifier_dtype=float16", "--max_batch_tokens=32768")
  assert isinstance(handler, TorchSafetyModelHandler)
  assert handler.batch_elements_kwargs()["max_batch_size"] == 32768
  assert handler._dtype == "float16" and handler._device == "cuda"  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="classifier_model"):
    handler_of("--classifier_device=cuda", "--classifier_model=x.onnx")
