"""The ONNX Runtime ModelHandler of the safety classifier, for Beam's RunInference.

An example is one document's token windows (a list of int64 arrays from
`chunking.Windower`), or a single window; the inference is the windows' score probabilities,
shape (windows, 6), or (6,) for a single window. Unlike Beam's `OnnxModelHandlerNumpy` this
handler feeds both graph inputs (`input_ids`, `attention_mask`).

By default each window is its own ONNX Runtime call. The int8 graph quantizes activations with
ranges computed over the whole input tensor, so in a padded multi-window batch a window's
probabilities would depend on its neighbours, and a runner that batches differently would write
different bytes; one window per call is deterministic, and on CPU it is also faster (a window
already gives the matrix products up to 256 rows; see benchmarks/classifier_throughput.py).
With `max_batch_tokens > 0` (for GPUs), the windows of a batch are sorted by length and run in
padded sub-batches of similar length under that token budget.

With a `chunking.SentenceRescoring` setting (the default, `chunking.SENTENCE_RESCORING`, is
off), a window whose P(score >= 3) is uncertain is scored once more sentence by sentence and
keeps the maximum: a threat in one sentence of a long page is otherwise averaged away by the
window's mean pooling. `run_windows` does it for every caller, from the setting and the
tokenizer's sentence ends that `make_session` attaches to the session.

The handler reads a built model folder (the ONNX graph and its tokenizer.json) and never builds
one: workers have ONNX Runtime but no torch (`models.classifier.artifacts`). Where the graph is
built, `beam_pipeline.pipeline` settles which model that is (the default one built and staged
there); a handler without a model and without $SAFETY_PRETRAINING_CLASSIFIER stops at
`load_model` with `NoClassifierModel`.
"""

from __future__ import annotations

import typing

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from models.classifier import artifacts, chunking
from models.classifier.folder import TOKENIZER_NAME

Windows = typing.Union[np.ndarray, typing.Sequence[np.ndarray]]


def make_session(model_path: str, device: str = "cpu", intra_op_threads: int = 0,
                 spinning: bool = False,
                 sentence_rescoring: chunking.SentenceRescoring | None = (
                     chunking.SENTENCE_RESCORING)):
  """An ONNX Runtime session; options are built here since they cannot be pickled.

  The session carries what `run_windows` needs to re-score uncertain windows sentence by
  sentence (`chunking.SentenceRescoring`): the setting, and the sentence-end ids of the
  tokenizer.json beside the graph (a graph without one, or `sentence_rescoring=None`: windows
  are scored as they are)."""
  import os
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  if intra_op_threads:
    options.intra_op_num_threads = intra_op_threads
  # Idle intra-op threads sleep instead of spinning. A worker machine's cores are shared (an SDK
  # process per core on Dataflow, the runner's JVMs on Flink, other bundles' threads): spinning
  # threads burn the cores the other sessions need. Scores are unchanged (the same threads do
  # the same arithmetic); benchmarks/classifier_throughput.py --spinning measures the difference.
  options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
  providers = ["CPUExecutionProvider"]
  if device == "cuda":
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
  session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
  folder = os.path.dirname(os.path.abspath(model_path))
  has_tokenizer = os.path.exists(os.path.join(folder, TOKENIZER_NAME))
  session.sentence_rescoring = sentence_rescoring if has_tokenizer else None
  session.sentence_ends = (chunking.sentence_end_ids(folder) if session.sentence_rescoring
                           else frozenset())
  return session


def run_windows(session, windows: typing.Sequence[np.ndarray], max_batch_tokens: int = 0) -> np.ndarray:
  """Probabilities (len(windows), 6) for token windows: one call per window when
  `max_batch_tokens` is 0, else length-sorted padded sub-batches under that token budget.
  Uncertain windows are re-scored sentence by sentence as the session says (`make_session`,
  `chunking.rescore_sentences`): the same calls for the sentence windows."""
  probs = _run_windows(session, windows, max_batch_tokens)
  return chunking.rescore_sentences(
      windows, probs, lambda pieces: _run_windows(session, pieces, max_batch_tokens),
      getattr(session, "sentence_ends", ()), getattr(session, "sentence_rescoring", None))


def _run_windows(session, windows: typing.Sequence[np.ndarray],
                 max_batch_tokens: int) -> np.ndarray:
  """`run_windows` without the sentence re-scoring."""
  probs = np.zeros((len(windows), 6), dtype=np.float32)
  order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
  start = 0
  while start < len(order):
    end = start + 1
    # windows are sorted by length, so the batch's padded size is count * the last one's length
    while (max_batch_tokens and end < len(order)
           and (end + 1 - start) * len(windows[order[end]]) <= max_batch_tokens):
      end += 1
    rows = order[start:end]
    length = len(windows[rows[-1]])
    ids = np.zeros((len(rows), length), dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for row, index in enumerate(rows):
      ids[row, :len(windows[index])] = windows[index]
      mask[row, :len(windows[index])] = 1
    (batch_probs,) = session.run(["probs"], {"input_ids": ids, "attention_mask": mask})
    probs[rows] = batch_probs
    start = end
  return probs


EMBEDDING_OUTPUT = "embedding"


def has_embedding(session) -> bool:
  """Whether the graph has the pooled `embedding` output (exports since GRAPH_VERSION 2; not a
  graph exported with --hf_model or an older export)."""
  return any(output.name == EMBEDDING_OUTPUT for output in session.get_outputs())


def embed_windows(session, windows: typing.Sequence[np.ndarray]) -> np.ndarray:
  """The text's embedding from its token windows: the mean of the windows' pooled, normalised
  features, normalised again (a dot product of two is their cosine). One window per call, as
  scoring runs them, so a window's features do not depend on its neighbours."""
  rows = []
  for window in windows:
    ids = np.asarray(window, dtype=np.int64)[None, :]
    (features,) = session.run([EMBEDDING_OUTPUT], {"input_ids": ids,
                                                   "attention_mask": np.ones_like(ids)})
    rows.append(features[0])
  mean = np.mean(rows, axis=0)
  return mean / max(float(np.linalg.norm(mean)), 1e-9)


def score_examples(batch, score) -> list[PredictionResult]:
  """RunInference results of `batch`, each example a window (1-D ids) or a document's windows,
  with every window of the batch scored in one call `score(windows) -> (n, 6)`: the one
  flatten-and-regroup both classifier handlers (ONNX here, PyTorch in torch_handler) share."""
  flat, owners = [], []
  for position, example in enumerate(batch):
    windows = [example] if isinstance(example, np.ndarray) and example.ndim == 1 else example
    for window in windows:
      flat.append(np.asarray(window, dtype=np.int64))
      owners.append(position)
  probs = score(flat)
  per_example: list[list[np.ndarray]] = [[] for _ in batch]
  for owner, row in zip(owners, probs):
    per_example[owner].append(row)
  results = []
  for example, rows in zip(batch, per_example):
    single = isinstance(example, np.ndarray) and example.ndim == 1
    results.append(PredictionResult(example, rows[0] if single else np.stack(rows)))
  return results


def windows_num_bytes(batch) -> int:
  """The bytes of a batch of examples as `score_examples` takes them."""
  return sum(
      example.nbytes if isinstance(example, np.ndarray) else sum(w.nbytes for w in example)
      for example in batch)


class OnnxSafetyModelHandler(ModelHandler[Windows, np.ndarray, typing.Any]):
  """Scores token windows with the exported safety classifier on ONNX Runtime.

  Args:
    model_path: a model folder (its model.int8.onnx) or an ONNX file with tokenizer.json beside
      it, local or any path Beam's FileSystems knows (a remote one is downloaded once per
      machine); None: the folder $SAFETY_PRETRAINING_CLASSIFIER names, else load_model raises
      NoClassifierModel.
    device: "cpu" (default) or "cuda" (CUDA execution provider, CPU fallback).
    intra_op_threads: ONNX Runtime threads per session (0: its default, one per core).
    max_batch_tokens: 0 (default): one window per ONNX Runtime call, deterministic and fastest
      on CPU; > 0: padded tokens per call, for GPUs (results then depend on batching).
    max_batch_size: documents per RunInference batch.
    sentence_rescoring: which windows are re-scored sentence by sentence
      (`chunking.SentenceRescoring`; default the pipeline's, `chunking.SENTENCE_RESCORING`).
  """

  def __init__(self, model_path: str | None = None, device: str = "cpu",
               intra_op_threads: int = 0, max_batch_tokens: int = 0,
               min_batch_size: int = 1, max_batch_size: int = 64,
               sentence_rescoring: chunking.SentenceRescoring | None = (
                   chunking.SENTENCE_RESCORING)):
    super().__init__()
    if device not in ("cpu", "cuda"):
      raise ValueError(f"device must be cpu or cuda, got {device!r}")
    self._model_path = model_path
    self._device = device
    self._intra_op_threads = intra_op_threads
    self._max_batch_tokens = max_batch_tokens
    self._sentence_rescoring = sentence_rescoring
    self._batching = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

  @property
  def model_path(self) -> str | None:
    """The model location as given (None: the one $SAFETY_PRETRAINING_CLASSIFIER names)."""
    return self._model_path

  def model_files(self) -> artifacts.ModelFiles:
    """The model's ONNX file and tokenizer.json on this machine, downloaded if remote. Not
    kept on the handler: the handler is pickled to workers, where a launcher's path means
    nothing, and after the first download each call only checks the files' sizes."""
    return artifacts.local_files(self._model_path)

  def tokenizer_folder(self) -> str:
    """The folder of the model's tokenizer.json, for `chunking.Windower(tokenizer_path=...)`."""
    return self.model_files().tokenizer_folder

  def load_model(self):
    return make_session(self.model_files().onnx, self._device, self._intra_op_threads,
                        sentence_rescoring=self._sentence_rescoring)

  def run_inference(self, batch, model, inference_args=None):
    return score_examples(
        batch, lambda flat: run_windows(model, flat, self._max_batch_tokens) if flat
        else np.zeros((0, 6)))

  def get_num_bytes(self, batch) -> int:
    return windows_num_bytes(batch)

  def get_metrics_namespace(self) -> str:
    return "safety_classifier_onnx"

  def batch_elements_kwargs(self):
    return dict(self._batching)
