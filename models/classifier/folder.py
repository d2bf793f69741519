"""What a classifier model folder holds: the file names that the export writes
(`models.classifier.export`) and the workers read (`models.classifier.artifacts`).

A module of its own, so that the export and the artifacts both import it and neither imports
the other at module level (the artifacts build the default model through the export).
"""

FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
TOKENIZER_NAME = "tokenizer.json"
