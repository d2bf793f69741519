"""Test-session set-up shared by every test module."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# TensorFlow and Triton (pulled in by transformers' model code) both carry LLVM; loaded in the
# order TensorFlow first, LLVM aborts the process on a duplicate option. The pipeline never
# imports TensorFlow, but the tests read its TFRecords with it, so load the PyTorch side first.
import transformers.models.bert.modeling_bert  # noqa: E402,F401  pylint: disable=unused-import
