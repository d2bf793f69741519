"""The tools are quiet and the project is not: `quiet_tools` and `build_step` hold the tools'
INFO, their known notes and progress bars back, and let every warning and error of the project,
and every other warning of the tools, through."""

from __future__ import annotations

import io
import logging
import os
import warnings

import pytest
import tqdm
import tqdm.auto

from models import tool_logs


@pytest.fixture(autouse=True)
def _restore_loggers():
  levels = {name: logging.getLogger(name).level for name in tool_logs.TOOL_LOGGERS}
  yield
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)


def _captured(name: str = ""):
  """A handler on the logger `name` (the root logger by default) that keeps what reaches it."""
  stream = io.StringIO()
  handler = logging.StreamHandler(stream)
  logging.getLogger(name or None).addHandler(handler)
  return stream, handler


def test_tool_info_is_held_back_and_the_projects_warnings_pass(monkeypatch):
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  root = logging.getLogger()
  saved = root.level
  root.setLevel(logging.INFO)
  stream, handler = _captured()
  try:
    tool_logs.quiet_tools()
    logging.getLogger("onnxruntime.transformers.fusion_utils").info("Fused Gelu: 7")
    logging.getLogger("transformers.modeling_utils").info("loading")
    logging.getLogger("onnxruntime").warning("a tool warning still shows")
    logging.getLogger("models.classifier.export").warning("a project warning")
    logging.getLogger("beam_pipeline.run").error("a project error")
  finally:
    root.removeHandler(handler)
    root.setLevel(saved)
  text = stream.getvalue()
  assert "Fused Gelu" not in text and "loading" not in text
  assert "a tool warning still shows" in text
  assert "a project warning" in text and "a project error" in text
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_a_level_the_user_set_is_kept(monkeypatch):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
  logging.getLogger("absl").setLevel(logging.ERROR)
  tool_logs.quiet_tools()
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
  assert logging.getLogger("absl").level == logging.ERROR


def test_the_pooler_only_load_report_is_dropped_and_any_other_shown():
  # transformers' loggers do not propagate to the root: its own handler sits on "transformers".
  stream, handler = _captured("transformers")
  logger = logging.getLogger("transformers.modeling_utils")
  try:
    tool_logs.quiet_tools()
    logger.warning("BertModel LOAD REPORT from: x\nKey | Status | | \n"
                   "-----+-----+\npooler.dense.weight | UNEXPECTED |  | \n"
                   "pooler.dense.bias   | UNEXPECTED |  | \n\nNotes:\n- UNEXPECTED: ...")
    logger.warning("BertModel LOAD REPORT from: y\nKey | Status | | \n"
                   "-----+-----+\nencoder.layer.0.weight | MISSING |  | \n")
  finally:
    logging.getLogger("transformers").removeHandler(handler)
  text = stream.getvalue()
  assert "from: x" not in text
  assert "from: y" in text and "MISSING" in text


def test_build_step_is_one_line_and_keeps_the_projects_warnings():
  stream = io.StringIO()
  with warnings.catch_warnings(record=True) as shown:
    warnings.simplefilter("always")
    with tool_logs.build_step("the thing", stream=stream):
      warnings.warn("You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
      warnings.warn("the project's own warning", UserWarning)
      warnings.warn("another tool's deprecation", DeprecationWarning)
      logging.getLogger().warning("Please consider to run pre-processing before quantization.")
      for _ in tqdm.auto.tqdm(range(3), file=stream, desc="a bar"):
        pass
  messages = [str(w.message) for w in shown]
  assert messages == ["the project's own warning", "another tool's deprecation"]
  assert "a bar" not in stream.getvalue()
  assert tool_logs.TOOL_LOGGERS  # quiet_tools ran; its loggers are at WARNING
  assert stream.getvalue().startswith("building the thing (once) ... done in ")
  assert stream.getvalue().count("\n") == 1
  # Afterwards tqdm draws again.
  after = io.StringIO()
  for _ in tqdm.tqdm(range(3), file=after, desc="a later bar"):
    pass
  assert "a later bar" in after.getvalue()


def test_a_failed_build_step_says_so_and_raises():
  stream = io.StringIO()
  with pytest.raises(RuntimeError, match="broken"):
    with tool_logs.build_step("the thing", once=False, stream=stream):
      raise RuntimeError("broken")
  assert stream.getvalue() == "building the thing ... failed\n"
