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

from beam_pipeline import launch
from beam_pipeline import pipeline as graph
from beam_pipeline import report as run_report
from beam_pipeline.options import SafetyPretrainingOptions
from beam_pipeline.output_folder import OutputExistsError, check_output, remove_staging
from beam_pipeline.report_card import REPORT_CARD
from transforms.progress import LOGGER_NAME as PROGRESS_LOGGER

# How an input file that cannot be read at all (transforms.reading.UnreadableFileError) reads in
# the runner's error, which wraps it in tracebacks and the step's name.
_UNREADABLE_FILE = re.compile(r"cannot read input file .*?(?=\s*\[while running|\n|$)")
# How a worker without a classifier model (models.classifier.artifacts.NoClassifierModel) reads
# in the runner's error: one line that says what to pass.
_NO_CLASSIFIER_MODEL = re.compile(r"no classifier model.*?(?=\s*\[while running|\n|$)")


def _job_not_run(options, result) -> bool:
  """True for a launch that returned before any job ran: Dataflow's template creation
  (--template_location) writes the job's spec and returns a result without a job."""
  if options.view_as(GoogleCloudOptions).template_location:
    return True
  return getattr(result, "has_job", True) is False


def run(argv=None, save_main_session: bool = False) -> dict | None:
  """Runs the pipeline and returns the report it wrote (report.json), or None for a launch that
  returns before the job runs (a template is created; the job commits its own output).

  The graph writes into a staging folder inside --output and its last stage, CommitOutput, moves
  the files into place and writes report.json and report.html (beam_pipeline/output_folder.py).
  Raises OutputExistsError for an --output that holds an earlier run's output unless --overwrite
  is given (checked here at launch, and again by CommitOutput).
  """
  del save_main_session
  options = launch.prepare(argv)
  safety = options.view_as(SafetyPretrainingOptions)
  check_output(safety.output, safety.overwrite)
  pipeline = beam.Pipeline(runner=launch.runner_for(options), options=options)
  staging = graph.build(pipeline, safety)
  result = None
  try:
    result = pipeline.run()
    if _job_not_run(options, result):
      template = options.view_as(GoogleCloudOptions).template_location
      print(f"no job ran here: the template is at {template}; each job launched from it "
            f"commits its own output to {safety.output} and writes "
            f"{FileSystems.join(safety.output, 'report.json')} and report.html when it succeeds")
      return None
    result.wait_until_finish()
  except BaseException:
    remove_staging(safety.output, staging)
    raise
  report = run_report.read_report(safety.output)
  print(run_report.summary(report))
  print(f"report: {FileSystems.join(safety.output, 'report.json')}")
  if run_report.has_report_card(report):
    print(f"report card: {FileSystems.join(safety.output, REPORT_CARD)}")
  return report


def main(argv=None):
  logging.getLogger().setLevel(logging.WARNING)
  progress = logging.getLogger(PROGRESS_LOGGER)
  progress.setLevel(logging.INFO)
  if not progress.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    progress.addHandler(handler)
    progress.propagate = False
  argv = sys.argv[1:] if argv is None else argv
  if "--help" in argv or "-h" in argv:
    SafetyPretrainingOptions(["--help"])
  try:
    report = run(argv)
  except OutputExistsError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  except Exception as error:  # pylint: disable=broad-except
    known = _UNREADABLE_FILE.search(str(error)) or _NO_CLASSIFIER_MODEL.search(str(error))
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
