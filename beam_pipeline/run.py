"""`python -m beam_pipeline.run [--runner=DirectRunner] [options]`: parse, build, run, report.

With no options it runs the embedded default: the bundled sample documents, the shipped
classifier and SmolLM2-135M-Instruct, offline, writing into ./output. `--help` lists every
option.
"""

from __future__ import annotations

import logging
import re
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.runners.runner import PipelineState

from beam_pipeline import launch
from beam_pipeline import pipeline as graph
from beam_pipeline import report as run_report
from beam_pipeline.options import SafetyPretrainingOptions
from beam_pipeline.output_folder import (CHECKS_FAILED, COMPLETE_MARKER, OutputExistsError,
                                         check_output, failed_path, remove_staging, run_id_of)
from beam_pipeline.report_card import REPORT_CARD
from models.classifier.chunking import WindowError
from models.tool_logs import quiet_tools
from transforms.progress import LOGGER_NAME as PROGRESS_LOGGER
from transforms.sinks import SHARDS_TOO_LARGE

# How an input file that cannot be read at all (transforms.reading.UnreadableFileError) reads in
# the runner's error, which wraps it in tracebacks and the step's name.
_UNREADABLE_FILE = re.compile(r"cannot read input file .*?(?=\s*\[while running|\n|$)")
# How a worker without a classifier model (models.classifier.artifacts.NoClassifierModel) reads
# in the runner's error: one line that says what to pass.
_NO_CLASSIFIER_MODEL = re.compile(r"no classifier model.*?(?=\s*\[while running|\n|$)")
# A fixed --num_shards that puts more in a shard than its bounds (transforms.sinks.ShardTooLarge).
_SHARDS_TOO_LARGE = re.compile(SHARDS_TOO_LARGE + r": .*?(?=\s*\[while running|\n|$)")


def _job_not_run(options, result) -> bool:
  """True for a launch that returned before any job ran: Dataflow's template creation
  (--template_location) writes the job's spec and returns a result without a job."""
  if options.view_as(GoogleCloudOptions).template_location:
    return True
  return getattr(result, "has_job", True) is False


class _NoChecksFailedTraceback(logging.Filter):
  """Drops the runner's log (with its traceback) of CommitOutput's ChecksFailedError: the run
  failed on its checks, and main prints the summary and each failed check instead."""

  def filter(self, record: logging.LogRecord) -> bool:
    return CHECKS_FAILED not in record.getMessage()


def run(argv=None, save_main_session: bool = False) -> dict | None:
  """Runs the pipeline and returns the report it wrote (report.json), or None for a launch that
  returns before the job runs (a template is created; the job commits its own output).

  The graph writes into a staging folder inside --output and its last stage, CommitOutput, moves
  the files into place and writes report.json and report.html (beam_pipeline/output_folder.py).
  Raises OutputExistsError for an --output that holds an earlier run's output unless --overwrite
  is given (checked here at launch, and again by CommitOutput). A run whose checks fail makes
  CommitOutput fail the job after it wrote the report under <output>/.failed/<run id>/ (the
  output is left as it was): that report is returned, checks_hold false.
  """
  del save_main_session
  options = launch.prepare(argv)
  safety = options.view_as(SafetyPretrainingOptions)
  check_output(safety.output, safety.overwrite)
  pipeline = beam.Pipeline(runner=launch.runner_for(options), options=options)
  staging = graph.build(pipeline, safety)
  failed = failed_path(safety.output, run_id_of(staging))
  failed_report = FileSystems.join(failed, COMPLETE_MARKER)
  result = None
  try:
    result = pipeline.run()
    if _job_not_run(options, result):
      template = options.view_as(GoogleCloudOptions).template_location
      print(f"no job ran here: the template is at {template}; each job launched from it "
            f"commits its own output to {safety.output} and writes "
            f"{FileSystems.join(safety.output, 'report.json')} and report.html when it succeeds")
      return None
    state = result.wait_until_finish()
    if state is not None and state != PipelineState.DONE:
      raise RuntimeError(f"the job ended in state {state}")
  except Exception:  # pylint: disable=broad-except  (the job failed: on its checks, or not)
    if not FileSystems.exists(failed_report):
      remove_staging(safety.output, staging)
      raise
  except BaseException:
    remove_staging(safety.output, staging)
    raise
  folder = failed if FileSystems.exists(failed_report) else safety.output
  report = run_report.read_report(folder)
  print(run_report.summary(report))
  if folder == failed:
    print(f"the checks failed: nothing in {safety.output} was replaced; this run's report and "
          f"dead letters are in {failed}")
  print(f"report: {FileSystems.join(folder, 'report.json')}")
  if run_report.has_report_card(report):
    print(f"report card: {FileSystems.join(folder, REPORT_CARD)}")
  return report


def main(argv=None):
  quiet_tools()  # the tools' INFO and progress bars stay out of the console; their errors show
  logging.getLogger().setLevel(logging.WARNING)
  progress = logging.getLogger(PROGRESS_LOGGER)
  progress.setLevel(logging.INFO)
  if not progress.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    progress.addHandler(handler)
    progress.propagate = False
  logging.getLogger("apache_beam.runners.common").addFilter(_NoChecksFailedTraceback())
  argv = sys.argv[1:] if argv is None else argv
  if "--help" in argv or "-h" in argv:
    SafetyPretrainingOptions(["--help"])
  try:
    report = run(argv)
  except (OutputExistsError, WindowError) as error:  # found at launch, before any job
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except Exception as error:  # pylint: disable=broad-except
    known = (_UNREADABLE_FILE.search(str(error)) or _NO_CLASSIFIER_MODEL.search(str(error))
             or _SHARDS_TOO_LARGE.search(str(error)))
    if not known:
      raise
    print(f"error: {known.group(0)}", file=sys.stderr)
    sys.exit(2)
  if report is None:
    sys.exit(0)
  for name in report.get("failed_checks", []) if not report["checks_hold"] else []:
    print(f"error: check {name} failed: {run_report.failed_check_reason(report, name)}",
          file=sys.stderr)
  sys.exit(0 if report["checks_hold"] else 1)


if __name__ == "__main__":
  main()
