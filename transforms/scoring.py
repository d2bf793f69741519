"""ScoreSafety: windows of the encoder's length -> RunInference with the classifier -> max.

Each document is tokenized into windows (`models.classifier.chunking.Windower`) with the
tokenizer.json of the model folder (so a worker needs no encoder package), the classifier's
ModelHandler scores all windows of a batch of documents in one RunInference call,
and the document gets the maximum score over its windows, its per-window scores, the 6
probabilities of the window that decided it, and that window's character span in its text
(`deciding_span`: what the generation steps quote from a document longer than their prompt
budget). A batch that fails inference goes to dead letter.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from models.classifier.chunking import (
    DEFAULT_OVERLAP, DEFAULT_WINDOW, TOKENIZE_BATCH, Windower, deciding_window, document_score)
from corpus.records import DEAD_LETTER, DOCUMENTS, STAGE_SCORE, Document
from transforms.deadletter import count, failed_batch_dead_letters

# The dead-letter reason of a document in a batch that inference failed on (the scoring stage's
# and each safety gate's): a broken model or worker, never the document's content.
INFERENCE_ERROR = "inference_error"


def document_text(document: Document) -> str:
  return document.text



class _ToWindows(beam.DoFn):
  """A batch of Documents -> per document ((document, its windows' character spans), its token
  windows); the tokenizer loads once per worker, from the model's own tokenizer.json (the
  handler's `tokenizer_folder()`, downloading a remote model). Spans are kept only when the
  scored text is the document's text."""

  def __init__(self, window: int, overlap: int, text_of, model_handler):
    self._window = window
    self._overlap = overlap
    self._text_of = text_of
    self._model_handler = model_handler
    self._windower = None

  def setup(self):
    self._windower = Windower(self._window, self._overlap,
                              tokenizer_path=self._model_handler.tokenizer_folder())

  def process(self, documents):
    texts = [self._text_of(document) for document in documents]
    for document, text, (windows, spans) in zip(
        documents, texts, self._windower.windows_and_spans(texts)):
      yield (document, spans if text is document.text else []), windows


def _apply_scores(keyed_result, stage: str) -> Document:
  (document, spans), result = keyed_result
  score, probs, window_scores = document_score(result.inference)
  count(stage, f"score_{score}")
  deciding = list(spans[deciding_window(result.inference)]) if spans else []
  return document._replace(safety_score=score, safety_probs=probs, chunk_scores=window_scores,
                           deciding_span=deciding)


def _document_keys(failure):
  """A failed batch of ((document, spans), windows) as one of (document, windows)."""
  batch, exception = failure
  return [(document, windows) for (document, _), windows in batch], exception


class ScoreSafety(beam.PTransform):
  """Scores each Document 0-5 with the safety classifier (max over windows).

  Args:
    model_handler: a ModelHandler from token windows to window probabilities, with a
      `tokenizer_folder()` method that gives the local folder of the model's tokenizer.json:
      `models.classifier.handler.OnnxSafetyModelHandler`.
    window / overlap: the window length and overlap in tokens.
    stage: the stage named in counters (`<stage>.score_<n>`) and in dead letters of failed
      batches.
    text_of: the text of a Document that is scored (default: all of it).

  Returns a dict: DOCUMENTS (scored Documents) and DEAD_LETTER (DeadLetters).
  """

  def __init__(self, model_handler, window: int = DEFAULT_WINDOW,
               overlap: int = DEFAULT_OVERLAP, stage: str = STAGE_SCORE,
               text_of=document_text):
    super().__init__()
    self._stage = stage
    self._text_of = text_of
    self._model_handler = model_handler
    self._window = window
    self._overlap = overlap

  def expand(self, documents):
    inference = (
        documents
        | "TokenizeBatches" >> beam.BatchElements(
            min_batch_size=1, max_batch_size=TOKENIZE_BATCH)
        | "Windows" >> beam.ParDo(
            _ToWindows(self._window, self._overlap, self._text_of, self._model_handler))
        | "Classify" >> RunInference(KeyedModelHandler(self._model_handler))
        .with_exception_handling())
    scored, failures = inference
    return {
        DOCUMENTS: scored | "MaxOverWindows" >> beam.Map(
            _apply_scores, self._stage).with_output_types(Document),
        DEAD_LETTER: failures.failed_inferences
        | "DocumentKeys" >> beam.Map(_document_keys)
        | "FailedBatches" >> beam.FlatMap(
            failed_batch_dead_letters, self._stage, INFERENCE_ERROR),
    }
