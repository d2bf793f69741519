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

from beam_pipeline import launch
from beam_pipeline import pipeline as graph
from beam_pipeline.options import SafetyPretrainingOptions
from transforms import report as run_report
from transforms.output_folder import OutputExistsError, StagedOutput
from transforms.progress import LOGGER_NAME as PROGRESS_LOGGER
from transforms.report_card import write_report_card

# How an input file that cannot be read at all (transforms.documents.UnreadableFileError) reads in
# the runner's error, which wraps it in tracebacks and the step's name.
_UNREADABLE_FILE = re.compile(r"cannot read input file .*?(?=\s*\[while running|\n|$)")


def run(argv=None, save_main_session: bool = False) -> dict:
  """Runs the pipeline to completion and returns the report (also written as report.json).

  The pipeline writes into a staging folder inside --output; its files move into place only
  when it has succeeded, then report.json and report.html are written (see
  transforms.output_folder). Raises OutputExistsError for an --output that holds an earlier run's
  output unless --overwrite is given.
  """
  options = launch.prepare(argv)
  safety = options.view_as(SafetyPretrainingOptions)
  output = safety.output
  staged = StagedOutput(output, overwrite=safety.overwrite)
  safety.output = staged.path  # every sink of the graph writes under the staging folder
  try:
    with beam.Pipeline(runner=launch.runner_for(options), options=options) as pipeline:
      graph.build(pipeline, safety)
  except BaseException:
    staged.abort()
    raise
  finally:
    safety.output = output
  result = pipeline.result
  counters = run_report.counters_from(result)
  if safety.mode == "annotate":
    from transforms.annotate import annotate_summary, build_annotate_report
    report = build_annotate_report(counters)
    text = annotate_summary(report)
  else:
    report = run_report.build_report(counters)
    text = run_report.summary(report)
  staged.commit()
  path = run_report.write_report(report, safety.output)
  print(text)
  print(f"report: {path}")
  if "per_branch" in report:
    print(f"report card: {write_report_card(report, safety.output)}")
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
    unreadable = _UNREADABLE_FILE.search(str(error))
    if not unreadable:
      raise
    print(f"error: {unreadable.group(0)}", file=sys.stderr)
    sys.exit(2)
  sys.exit(0 if report["checks_hold"] else 1)


if __name__ == "__main__":
  main()
