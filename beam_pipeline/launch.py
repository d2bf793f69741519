"""What a launch settles before the graph is built: the Prism binary, dated paths, template flags.

- Prism. Beam 2.77's DirectRunner hands every pipeline that Prism supports to the PrismRunner,
  which without `--prism_location` downloads a Prism release zip from GitHub at run time. Here
  `--prism_location` defaults to the binary that `make engines` builds from Beam's Go module into
  the cache folder; where there is none, DirectRunner's switch to Prism is turned off, so the
  default run never downloads anything.
- Dated paths. `{date}` in --input and --output becomes --run_date (YYYY-MM-DD, `today` or
  `yesterday`, UTC), so one scheduled launch reads and writes a new partition every day.
- Template flags. A Dataflow Flex Template passes every parameter as `--name=value`; a switch
  such as --overwrite arrives as `--overwrite=true`, which argparse refuses. `--switch=true`
  becomes `--switch` and `--switch=false` is dropped.
"""

from __future__ import annotations

import datetime
import logging
import os
import typing

from apache_beam.options.pipeline_options import PipelineOptions, PrismRunnerOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.version import __version__ as BEAM_VERSION

from beam_pipeline.options import SafetyPretrainingOptions
from models.cache import cache_root

_LOG = logging.getLogger(__name__)

DATE_PLACEHOLDER = "{date}"
_DIRECT_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner")


def prism_binary() -> str:
  """Where `make engines` puts Prism built at Beam's version (engines/fetch.sh prism)."""
  return os.path.join(cache_root(), "engines", f"prism-v{BEAM_VERSION}", "prism")


def pin_prism(options: PipelineOptions) -> str | None:
  """Points --prism_location at the local Prism binary unless it is set; returns the location."""
  prism = options.view_as(PrismRunnerOptions)
  if not prism.prism_location and os.path.isfile(prism_binary()):
    prism.prism_location = prism_binary()
  return prism.prism_location


def runner_for(options: PipelineOptions):
  """The runner to build the pipeline with: None (the --runner option's) unless DirectRunner
  would have to download Prism, in which case a DirectRunner whose switch to Prism is off."""
  if options.view_as(StandardOptions).runner not in _DIRECT_RUNNERS:
    return None
  if options.view_as(PrismRunnerOptions).prism_location:
    return None
  from apache_beam.runners.direct.direct_runner import DirectRunner
  runner = DirectRunner()
  # The switch checks this flag first: Beam does not run interactive pipelines on Prism.
  runner.is_interactive()
  _LOG.info("no local Prism binary (%s): DirectRunner will not switch to Prism", prism_binary())
  return runner


def resolve_date(value: str, today: datetime.date | None = None) -> str:
  """--run_date as YYYY-MM-DD: `today` and `yesterday` are UTC dates, anything else must be one."""
  today = today or datetime.datetime.now(datetime.timezone.utc).date()
  if value == "today":
    return today.isoformat()
  if value == "yesterday":
    return (today - datetime.timedelta(days=1)).isoformat()
  try:
    return datetime.date.fromisoformat(value).isoformat()
  except ValueError:
    raise ValueError(f"--run_date must be YYYY-MM-DD, today or yesterday, got {value!r}") from None


def fill_dated_paths(safety: SafetyPretrainingOptions, today: datetime.date | None = None) -> None:
  """Replaces {date} in --input and --output with --run_date."""
  if DATE_PLACEHOLDER not in safety.input + safety.output:
    return
  date = resolve_date(safety.run_date, today)
  safety.input = safety.input.replace(DATE_PLACEHOLDER, date)
  safety.output = safety.output.replace(DATE_PLACEHOLDER, date)


def _switches() -> set[str]:
  """The options of SafetyPretrainingOptions that take no value (store_true)."""
  import argparse
  parser = argparse.ArgumentParser()
  SafetyPretrainingOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return {
      action.option_strings[0] for action in parser._actions  # pylint: disable=protected-access
      if isinstance(action, argparse._StoreTrueAction)}  # pylint: disable=protected-access


def template_flags(argv: typing.Sequence[str]) -> list[str]:
  """argv with `--switch=true` as `--switch` and `--switch=false` dropped (Flex Templates)."""
  switches = _switches()
  flags = []
  for arg in argv:
    name, equals, value = arg.partition("=")
    if equals and name in switches and value.lower() in ("true", "false"):
      if value.lower() == "true":
        flags.append(name)
      continue
    flags.append(arg)
  return flags


def prepare(argv: typing.Sequence[str] | None) -> PipelineOptions:
  """The pipeline options of a launch: template flags read, dated paths filled, Prism pinned."""
  options = PipelineOptions(template_flags(list(argv or [])))
  fill_dated_paths(options.view_as(SafetyPretrainingOptions))
  pin_prism(options)
  return options
