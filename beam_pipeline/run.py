"""`python -m beam_pipeline.run [--runner=DirectRunner] [options]`: parse, build, run, report.

With no options it runs the embedded default: the bundled sample documents, the shipped
classifier and SmolLM2-135M-Instruct, offline, writing into ./output. `--help` lists every
option.
"""

from __future__ import annotations

import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import pipeline as graph
from beam_pipeline.options import SafetyPretrainingOptions
from transforms import report as run_report


def run(argv=None, save_main_session: bool = False) -> dict:
  """Runs the pipeline to completion and returns the report (also written as report.json)."""
  options = PipelineOptions(argv)
  safety = options.view_as(SafetyPretrainingOptions)
  with beam.Pipeline(options=options) as pipeline:
    graph.build(pipeline, safety)
  result = pipeline.result
  report = run_report.build_report(run_report.counters_from(result))
  path = run_report.write_report(report, safety.output)
  print(run_report.summary(report))
  print(f"report: {path}")
  return report


def main(argv=None):
  logging.getLogger().setLevel(logging.WARNING)
  argv = sys.argv[1:] if argv is None else argv
  if "--help" in argv or "-h" in argv:
    SafetyPretrainingOptions(["--help"])
  report = run(argv)
  sys.exit(0 if report["checks_hold"] else 1)


if __name__ == "__main__":
  main()
