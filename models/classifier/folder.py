"""What a classifier model folder holds: the file names that the export writes
(`models.classifier.export`) and the workers read (`models.classifier.artifacts`), and the
longest window its graph takes.

A module of its own, so that the export and the artifacts both import it and neither imports
the other at module level (the artifacts build the default model through the export).
"""

from __future__ import annotations

FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
TOKENIZER_NAME = "tokenizer.json"
# A few bytes beside the graphs, {"max_positions": N}: the longest window (in tokens, [CLS]
# and [SEP] included) the encoder's position embeddings cover. Written by the export, read at
# launch to check --window without downloading the model.
METADATA_NAME = "model.json"
MAX_POSITIONS = "max_positions"


def window_error(onnx_path: str, length: int) -> str | None:
  """None when the graph at `onnx_path` scores one window of `length` tokens, else the first
  line of ONNX Runtime's error: the same call scoring makes, on ids 0 (a token of every
  vocabulary)."""
  import numpy as np
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.log_severity_level = 4  # the failure is the answer, returned: not logged as an error
  session = ort.InferenceSession(onnx_path, sess_options=options,
                                 providers=["CPUExecutionProvider"])
  ids = np.zeros((1, length), dtype=np.int64)
  try:
    session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
  except Exception as error:  # pylint: disable=broad-except  (ONNX Runtime's own error types)
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
  return None
