"""Every flag has help text; the defaults are the embedded default run."""

import argparse
import os

from beam_pipeline.options import SAMPLE_INPUT, SafetyPretrainingOptions


def _actions():
  parser = argparse.ArgumentParser()
  SafetyPretrainingOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_flag_has_help_text():
  missing = [a.option_strings[0] for a in _actions() if not (a.help or "").strip()]
  assert not missing


def test_defaults_are_the_embedded_default_run():
  options = SafetyPretrainingOptions([])
  assert options.input == SAMPLE_INPUT and os.path.exists(SAMPLE_INPUT)
  assert (options.rephrase_min_score, options.rephrase_max_score) == (1, 3)
  assert (options.refuse_min_score, options.refuse_max_score) == (4, 5)
  assert options.tag_rate == 0.05 and options.tag_min_score == 1
  assert options.generation == "on" and options.generator == "local"
