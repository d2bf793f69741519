"""Keeps the tools' chatter out of the console: one line per build step, and the project's own
warnings and errors as they are.

Building the models (`python -m models.classifier.export`, `python -m models.generators.local
--prepare`) and loading the local generator make ONNX Runtime, transformers, TensorFlow and
their progress bars print dozens of lines: every fused operator and quantized tensor, a weight
loading bar per model, TensorFlow's CUDA and CPU-feature notes. `quiet_tools` holds those
tools' loggers at WARNING and turns their progress bars off; `build_step` prints one line for
a step, `building <what> (once) ... done in 40 s`. Errors still show, of the tools and of the
project; so do the tools' warnings other than the few known ones listed here, which say nothing
about the user's run (each entry says why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings

# Python loggers of the tools the project drives. Their INFO is per-operator and per-tensor
# detail of a build that succeeded.
TOOL_LOGGERS = (
    "absl", "apache_beam", "filelock", "huggingface_hub", "onnx", "onnxruntime", "tensorflow",
    "torch", "transformers", "urllib3")

# Read by the tools when they are imported, so set before that (a value the user set is kept):
# TensorFlow's C++ log at errors only (its CUDA-driver, oneDNN and CPU-feature notes are
# INFO and WARNING), and no Hugging Face progress bars (transformers reads this one for its own).
TOOL_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

# Warnings the build steps get from the tools that are about the tools themselves, not the run:
# (category name, message pattern).
KNOWN_TOOL_WARNINGS = (
    # torch: the project exports with the TorchScript exporter on purpose (dynamo=False: the
    # graph ONNX Runtime's optimizer fuses), and traces a model with Python conditions on shapes.
    ("DeprecationWarning", r"You are using the legacy TorchScript-based ONNX export"),
    ("TracerWarning", r""),
    ("UserWarning", r"Exporting aten::index operator of advanced indexing"),
    # transformers, on its own deprecated attribute that torch.onnx.export reads.
    ("FutureWarning", r"`is_gradient_checkpointing` is deprecated"),
)

# Log records of the tools at WARNING that are advice on the tool's use, not news of the run.
KNOWN_TOOL_MESSAGES = (
    # ONNX Runtime's quantizer, to every caller of quantize_dynamic: the project quantizes the
    # graph its optimizer has already fused (models/classifier/export.py).
    r"^Please consider to run pre-processing before quantization",
)

# transformers' load report of the MiniLM encoder, which the project loads without its pooler
# (add_pooling_layer=False): the pooler's weights in the checkpoint are unused, as meant.
_POOLER_ONLY_ROW = re.compile(r"^\s*pooler\.\S+\s*\|\s*UNEXPECTED\b")
_REPORT_ROW = re.compile(r"^\s*\S+\s*\|\s*[A-Z_]+\s*\|")


class _PoolerOnlyLoadReport(logging.Filter):
  """Drops transformers' load report when all it reports is unused pooler weights."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if "LOAD REPORT" not in message:
      return True
    rows = [line for line in message.splitlines() if _REPORT_ROW.match(line)]
    return not rows or not all(_POOLER_ONLY_ROW.match(row) for row in rows)


_LOAD_REPORT_FILTER = _PoolerOnlyLoadReport()


def quiet_tools() -> None:
  """Holds the tools' loggers at WARNING and their progress bars off, in this process.

  Call it before the tools are imported (the environment settings are read at import); a tool
  already imported gets its progress bars turned off here too. Idempotent.
  """
  for name, value in TOOL_ENVIRONMENT.items():
    os.environ.setdefault(name, value)
  for name in TOOL_LOGGERS:
    logger = logging.getLogger(name)
    if logger.level < logging.WARNING:  # NOTSET included; a stricter level stays
      logger.setLevel(logging.WARNING)
  for name in ("transformers.modeling_utils", "transformers.modeling_layers"):
    logger = logging.getLogger(name)
    if _LOAD_REPORT_FILTER not in logger.filters:
      logger.addFilter(_LOAD_REPORT_FILTER)
  transformers_logging = sys.modules.get("transformers.utils.logging")
  if transformers_logging is not None:
    transformers_logging.disable_progress_bar()


class _KnownToolMessages(logging.Filter):
  """Drops the log records of KNOWN_TOOL_MESSAGES."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(re.search(pattern, message) for pattern in KNOWN_TOOL_MESSAGES)


@contextlib.contextmanager
def known_tool_messages_dropped():
  """Within the block, the log records of KNOWN_TOOL_MESSAGES are dropped: ONNX Runtime logs
  them on the root logger itself (`logging.warning`), so the filter sits there."""
  root = logging.getLogger()
  known = _KnownToolMessages()
  root.addFilter(known)
  try:
    yield
  finally:
    root.removeFilter(known)


@contextlib.contextmanager
def known_tool_warnings_ignored():
  """Within the block, the warnings of KNOWN_TOOL_WARNINGS are not shown; every other warning
  is, as before."""
  with warnings.catch_warnings():
    for category, message in KNOWN_TOOL_WARNINGS:
      warnings.filterwarnings("ignore", message=message, category=_category(category))
    yield


def _category(name: str) -> type[Warning]:
  builtin = {"DeprecationWarning": DeprecationWarning, "FutureWarning": FutureWarning,
             "UserWarning": UserWarning}
  if name in builtin:
    return builtin[name]
  try:  # torch's own category, where torch is installed
    from torch.jit import TracerWarning  # pylint: disable=import-outside-toplevel
  except ImportError:
    return _NeverRaised
  return TracerWarning


class _NeverRaised(Warning):
  """The category of a known warning whose tool is not installed."""


@contextlib.contextmanager
def progress_bars_off():
  """Within the block, no tqdm progress bar draws, whoever opens it.

  transformers' own bars follow its switch (`quiet_tools`), but its GGUF conversion opens a bar
  of plain tqdm, which has no switch once imported (its TQDM_* variables are read at import,
  and Beam's imports import it first); so tqdm's constructor is given `disable=True` meanwhile.
  """
  try:
    import tqdm.std  # pylint: disable=import-outside-toplevel
  except ImportError:
    yield
    return
  original = tqdm.std.tqdm.__init__

  def silent_init(self, *args, **kwargs):
    kwargs["disable"] = True
    original(self, *args, **kwargs)

  tqdm.std.tqdm.__init__ = silent_init
  try:
    yield
  finally:
    tqdm.std.tqdm.__init__ = original


@contextlib.contextmanager
def build_step(what: str, once: bool = True, stream=None):
  """One line on stderr for a build step: `building <what> (once) ... done in N s` (without
  `(once)` for a build the user asked for, not one cached for later runs), or `... failed`
  before the error propagates. Meanwhile the tools are quiet (`quiet_tools`) and their known
  warnings hidden (`known_tool_warnings_ignored`)."""
  stream = stream or sys.stderr
  quiet_tools()
  print(f"building {what}{' (once)' if once else ''} ...", end="", file=stream, flush=True)
  started = time.monotonic()
  try:
    with known_tool_warnings_ignored(), known_tool_messages_dropped(), progress_bars_off():
      yield
  except BaseException:
    print(" failed", file=stream, flush=True)
    raise
  print(f" done in {time.monotonic() - started:.0f} s", file=stream, flush=True)
