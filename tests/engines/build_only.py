"""`python tests/engines/build_only.py ARGS...`: the graph from `beam_pipeline.pipeline.build`,
run to the end with no run.py around it, as a job launched from a template runs. Whatever the
output holds afterwards (shards, report.json) the graph's CommitOutput put there."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import apache_beam as beam  # noqa: E402  pylint: disable=wrong-import-position

from beam_pipeline import launch  # noqa: E402  pylint: disable=wrong-import-position
from beam_pipeline import pipeline as graph  # noqa: E402  pylint: disable=wrong-import-position
from beam_pipeline.options import SafetyPretrainingOptions  # noqa: E402  pylint: disable=wrong-import-position


def main(argv) -> None:
  options = launch.prepare(argv)
  pipeline = beam.Pipeline(options=options)
  graph.build(pipeline, options.view_as(SafetyPretrainingOptions))
  pipeline.run().wait_until_finish()


if __name__ == "__main__":
  main(sys.argv[1:])
