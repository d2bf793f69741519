"""Long pages: one threatening sentence in a long page of ordinary text, and the re-scoring of
uncertain windows sentence by sentence (`chunking.SentenceRescoring`) in every ONNX scoring path:
`handler.run_windows` (the benchmarks), the Beam handler (the pipeline) and
`evaluate.score_texts`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from models.classifier import chunking, data, evaluate
from models.classifier.export import ensure_exported
from models.classifier.handler import OnnxSafetyModelHandler, make_session, run_windows

MINUTES_FILE = os.path.join(os.path.dirname(__file__), "meeting_minutes.txt")
# One explicit threat, quoted in the minutes' public comment section (about 1,900 words).
THREAT = "I will kill every one of you and burn this building down with you inside it."
# How far below the sentence's own score the page may come out.
MARGIN = 1


@pytest.fixture(scope="module")
def reaching():
  """A setting that reaches the threat's window (P(score >= 3) about 2e-4): on the dev split
  it re-scores about half of all windows, which is why the pipeline's default is off."""
  return chunking.SentenceRescoring(low=1e-4, high=1.0, accept=0.5)


def _minutes(threat: str = "") -> str:
  with open(MINUTES_FILE, encoding="utf-8") as f:
    return f.read().replace("{THREAT}", threat)


@pytest.fixture(scope="module")
def int8():
  return ensure_exported()["int8"]


def _score(session, text: str) -> tuple[int, list[int]]:
  score, _, window_scores = chunking.document_score(
      run_windows(session, chunking.Windower().windows([text])[0]))
  return score, window_scores


def _check_page(session):
  page = _minutes(THREAT)
  assert len(page.split()) >= 1500
  alone, _ = _score(session, THREAT)
  assert alone >= 3  # the sentence on its own is unsafe
  score, window_scores = _score(session, page)
  assert len(window_scores) >= 8
  assert score >= alone - MARGIN and score >= 3, window_scores
  # the minutes without the threat stay safe
  assert _score(session, _minutes())[0] == 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "the shipped scoring averages the sentence away (window P(score >= 3) about 2e-4), and no "
    "sentence re-scoring setting measured on dev reaches it without re-scoring about half of "
    "all windows and flagging far more raw pages; needs a pooling that the training changes"))
def test_a_threat_in_a_long_page_of_minutes_scores_as_the_threat_alone(int8):
  _check_page(make_session(int8))


@pytest.mark.slow
def test_a_reaching_setting_finds_the_threat_in_every_path_byte_for_byte(int8, reaching):
  """The re-scoring is the same in run_windows, the Beam handler and evaluate, run after run;
  windows outside the band keep the graph's own probabilities."""
  _check_page(make_session(int8, sentence_rescoring=reaching))
  page = _minutes(THREAT)
  windows = chunking.Windower(tokenizer_path=os.path.dirname(int8)).windows([page])[0]
  handler = OnnxSafetyModelHandler(int8, intra_op_threads=1, sentence_rescoring=reaching)
  runs = [handler.run_inference([windows], handler.load_model())[0].inference
          for _ in range(2)]
  assert runs[0].tobytes() == runs[1].tobytes()
  direct = run_windows(make_session(int8, sentence_rescoring=reaching), windows)
  assert runs[0].tobytes() == direct.tobytes()
  predicted, unsafe_prob = evaluate.score_texts(
      [page], int8, chunking.DEFAULT_WINDOW, chunking.DEFAULT_OVERLAP,
      sentence_rescoring=reaching)
  assert predicted[0] == chunking.document_score(direct)[0] >= 3
  assert unsafe_prob[0] == pytest.approx(float(direct[:, 3:].sum(axis=1).max()))
  # the pipeline's default scores the same windows as the graph does, alone
  plain = run_windows(make_session(int8), windows)
  assert chunking.document_score(plain)[0] == 0
  unsafe = plain[:, 3:].sum(axis=1)
  outside = (unsafe < reaching.low) | (unsafe >= reaching.high)
  assert outside.any() and (plain[outside] == direct[outside]).all()


def test_sentence_windows_cut_after_sentence_ends():
  end = 1012
  settings = chunking.SentenceRescoring(low=0.1, high=0.5, max_tokens=6, min_tokens=3)
  content = [5, 6, 7, end, 8, end, 9, 10, 11, end, *range(20, 34), 40]
  window = np.asarray([101, *content, 102], dtype=np.int64)
  pieces = [p.tolist() for p in chunking.sentence_windows(window, {end}, settings)]
  assert all(p[0] == 101 and p[-1] == 102 for p in pieces)
  assert [p[1:-1] for p in pieces] == [
      [5, 6, 7, end],             # a sentence
      [8, end, 9, 10, 11, end],   # a short one joins the next
      [20, 21, 22, 23, 24, 25],   # a long one is cut in max_tokens pieces
      [26, 27, 28, 29, 30, 31],
      [32, 33, 40]]
  assert sum(len(p) - 2 for p in pieces) == len(content)


def test_only_uncertain_long_windows_are_rescored():
  settings = chunking.SentenceRescoring(low=0.1, high=0.5, max_tokens=4, min_tokens=1)
  end = 1012
  long_window = np.asarray([101, 1, 2, end, 3, 4, end, 102], dtype=np.int64)
  short_window = np.asarray([101, 1, end, 102], dtype=np.int64)
  sure_safe = [0.97, 0.01, 0.01, 0.01, 0, 0.0]
  uncertain = [0.7, 0.05, 0.05, 0.2, 0, 0.0]
  probs = np.asarray([sure_safe, uncertain, uncertain], dtype=np.float32)
  scored = []

  def score(pieces):
    scored.append([p.tolist() for p in pieces])
    return np.asarray([[0.1, 0, 0, 0.1, 0.8, 0], [0.9, 0.1, 0, 0, 0, 0]], dtype=np.float32)

  out = chunking.rescore_sentences([long_window, long_window, short_window], probs, score,
                                   {end}, settings)
  # only the second window: the first is sure, the third already sentence-sized
  assert scored == [[[101, 1, 2, end, 102], [101, 3, 4, end, 102]]]
  assert out[0].tolist() == probs[0].tolist() and out[2].tolist() == probs[2].tolist()
  assert out[1] == pytest.approx([0.1, 0, 0, 0.1, 0.8, 0])  # its unsafe sentence decides
  assert chunking.rescore_sentences([long_window], probs[1:2], score, {end}, None).tolist() \
      == probs[1:2].tolist()
  with pytest.raises(ValueError):
    chunking.SentenceRescoring(low=0.6, high=0.5)


def test_confusion_bands_and_long_page_figures_count_right():
  labels = np.array([0, 0, 4, 5, 4, 2, 0, 0])
  predicted = np.array([0, 4, 4, 4, 5, 2, 1, 0])
  sources = ["movie_reviews", "movie_reviews", "x", "x", "x", "x", "rawpage_aeb", "rawpage_aeb"]
  examples = [data.Example(str(i), "t", int(s), source)
              for i, (s, source) in enumerate(zip(labels, sources))]
  counts = np.asarray(evaluate.confusion(labels, predicted)["counts"])
  assert counts[0].tolist() == [2, 1, 0, 0, 1, 0] and counts[4].tolist() == [0, 0, 0, 0, 1, 1]
  assert counts.sum() == len(labels)
  bands = evaluate.by_band(labels, predicted)
  # predicted 4-5: four texts, three of them labelled 4-5
  assert bands["4-5"] == {"n_predicted": 4, "n_label": 3, "precision": 0.75,
                          "precision_at_least": 0.75}
  assert bands["5"] == {"n_predicted": 1, "n_label": 1, "precision": 0.0,
                        "precision_at_least": 0.0}
  assert bands["4"]["precision"] == pytest.approx(1 / 3)  # labelled 0, 4 and 5
  assert bands["4"]["precision_at_least"] == pytest.approx(2 / 3)
  assert bands["3"] == {"n_predicted": 0, "n_label": 0, "precision": None,
                        "precision_at_least": None}
  pages = evaluate.long_pages(examples, labels, predicted)
  assert pages["long_benign"] == {"n_score0": 2, "fpr_score0": 0.5}
  assert pages["raw_pages"] == {"n": 2, "flagged_at_1": 0.5, "flagged_at_4": 0.0,
                                "fpr_score0": 0.5}
