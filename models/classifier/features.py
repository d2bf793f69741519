"""Cached window features of a frozen encoder: one pass over the data, then any number of heads.

Training a head, sweeping its settings and leave-one-source-out validation all need the same
encoder features of the same windows; on 2 CPU cores one pass over the ~95k labelled texts
takes tens of minutes, a head fit seconds. So the windows' pooled features are computed once,
through the same int8 ONNX Runtime graph that the pipeline runs (one window per call, so each
window's features are those it gets at scoring time), and kept as float16 in the cache folder,
named by a digest of the encoder weights, the texts and the window settings.

A text's training windows are at most `max_windows` evenly spaced ones (the first and the last
included); dev texts keep every window, since their score is the maximum over all of them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import tempfile
import time

import numpy as np

from models.cache import cache_root
from models.classifier import chunking

LOG = logging.getLogger("models.classifier.features")


@dataclasses.dataclass
class WindowFeatures:
  """Features of windows and the text each came from (an index into the examples)."""
  features: np.ndarray  # (windows, feature size) float16
  owners: np.ndarray  # (windows,) int32

  def of_texts(self, rows: np.ndarray) -> "WindowFeatures":
    """The windows of the texts `rows` (indices into the examples), owners kept."""
    keep = np.isin(self.owners, rows)
    return WindowFeatures(self.features[keep], self.owners[keep])


def pick_windows(windows: list, max_windows: int) -> list:
  """Up to `max_windows` evenly spaced windows of a text (all of them when 0)."""
  if not max_windows or len(windows) <= max_windows:
    return windows
  picks = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
  return [windows[i] for i in sorted(set(picks.tolist()))]


def all_layers(classifier):
  """A shallow copy of the classifier whose features are every layer's (the cache's columns)."""
  layers = classifier.encoder.config.num_hidden_layers
  wide = copy.copy(classifier)
  object.__setattr__(wide, "feature_layers", tuple(range(1, layers + 1)))
  return wide


def columns(feature_layers, hidden_size: int) -> np.ndarray:
  """The cache's columns that hold the features of `feature_layers` (1-based layers)."""
  return np.concatenate([np.arange((layer - 1) * hidden_size, layer * hidden_size)
                         for layer in feature_layers])


def feature_session(classifier, work_dir: str):
  """An ONNX Runtime session of the classifier's encoder part (int8, as shipped)."""
  from models.classifier import export, model
  from models.classifier.handler import make_session
  merged = copy.deepcopy(classifier)
  if hasattr(merged.encoder, "merge_and_unload"):
    merged.encoder = merged.encoder.merge_and_unload()
  paths = export.export_graph(
      model.FeatureModel(merged).eval(), merged.encoder.config, work_dir,
      output_name="features", names=("features.onnx", "features.int8.onnx"))
  return make_session(paths["int8"])


def _digest(classifier, texts, settings) -> str:
  digest = hashlib.sha256()
  for name, tensor in sorted(classifier.encoder.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().float().numpy().tobytes())
  digest.update(repr(settings).encode())
  for text in texts:
    digest.update(hashlib.sha256(text.encode("utf-8")).digest())
  return digest.hexdigest()[:20]


def window_features(classifier, texts, max_windows, window: int = chunking.DEFAULT_WINDOW,
                    overlap: int = chunking.DEFAULT_OVERLAP, log_every: int = 5000) -> WindowFeatures:
  """The features of the texts' windows, computed once and cached.

  `max_windows` is one cap for all texts or a list with one cap per text (0: every window).
  """
  caps = list(max_windows) if isinstance(max_windows, (list, tuple)) else [max_windows] * len(texts)
  classifier = all_layers(classifier)
  settings = (window, overlap, classifier.feature_layers, caps)
  path = os.path.join(cache_root(), "features", _digest(classifier, texts, settings) + ".npz")
  if os.path.exists(path):
    with np.load(path) as cached:
      LOG.info("window features from %s", path)
      return WindowFeatures(cached["features"], cached["owners"])
  windower = chunking.Windower(window, overlap)
  windows, owners = [], []
  for start in range(0, len(texts), 2048):
    for offset, text_windows in enumerate(windower.windows(texts[start:start + 2048])):
      picked = pick_windows(text_windows, caps[start + offset])
      windows.extend(picked)
      owners.extend([start + offset] * len(picked))
  tokens = sum(len(w) for w in windows)
  LOG.info("%d texts -> %d windows, %d tokens to embed", len(texts), len(windows), tokens)
  features = np.zeros((len(windows), classifier.feature_size), dtype=np.float16)
  with tempfile.TemporaryDirectory() as work:
    session = feature_session(classifier, work)
    started, done = time.time(), 0
    for index, ids in enumerate(windows):
      ids = ids[None, :]
      (row,) = session.run(["features"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
      features[index] = row[0]
      done += ids.shape[1]
      if (index + 1) % log_every == 0:
        elapsed = time.time() - started
        LOG.info("embedded %d/%d windows, %.0f tokens/s, %.0f s left", index + 1, len(windows),
                 done / elapsed, (tokens - done) * elapsed / done)
  result = WindowFeatures(features, np.asarray(owners, dtype=np.int32))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + f".{os.getpid()}.tmp.npz"
  np.savez(partial, features=result.features, owners=result.owners)
  os.replace(partial, path)
  return result
