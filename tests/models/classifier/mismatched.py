"""A classifier model folder whose graph does not fit its tokenizer: a real way for every
scoring batch to fail in ONNX Runtime while the model loads, whatever --window is.

The shipped int8 graph with its word embeddings cut to the first `vocabulary` rows, beside the
shipped tokenizer.json: what a folder holds when tokenizer.json comes from a model with a larger
vocabulary. Every window with a token id past the cut fails inference ("input index out of
range" in the embedding node); the position embeddings are untouched, so a window the shipped
model accepts passes any launch check of --window against the model's positions.
"""

from __future__ import annotations

import os
import shutil

WORD_EMBEDDINGS = "classifier.encoder.embeddings.word_embeddings.weight_quantized"


def mismatched_model(folder: str, vocabulary: int = 1000) -> str:
  """Writes the mismatched model folder into `folder` (created); returns it, for
  --classifier_model. Ids below 1000 are special and unused tokens, so every word fails."""
  import onnx
  from onnx import numpy_helper

  from models.classifier.export import ensure_exported

  shipped = ensure_exported()
  graph = onnx.load(shipped["int8"])
  (embeddings,) = [init for init in graph.graph.initializer if init.name == WORD_EMBEDDINGS]
  cut = numpy_helper.to_array(embeddings)[:vocabulary]
  embeddings.CopyFrom(numpy_helper.from_array(cut, WORD_EMBEDDINGS))
  os.makedirs(folder, exist_ok=True)
  onnx.save(graph, os.path.join(folder, os.path.basename(shipped["int8"])))
  shutil.copy(shipped["tokenizer"], os.path.join(folder, os.path.basename(shipped["tokenizer"])))
  return folder
