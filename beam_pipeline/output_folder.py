"""Safe outputs: a run writes into a staging folder, and its last stage moves the files into place.

    {output}/.staging/<run id>/raw/part-...   while the pipeline runs
    {output}/raw/part-...                      after the graph's `CommitOutput`

`CommitOutput` is the graph's final stage: it runs once every sink has finalized (their written
file names are its side input, which a runner computes before it), moves exactly those files
into place, writes report.json and report.html from the statistics computed in the graph, and
removes its staging folder. It needs nothing from the process that launched the job, so a job
started from a template commits as a local run does. It is idempotent, since a runner may retry
it: a file already moved counts as moved, a marker in the staging folder records that the
check against another run's output passed, and report.json, the sign of a complete run, is
written last.

A run that fails or is killed leaves no file under a final name: only its hidden staging folder.
Another run's staging folder is removed by a commit only once nothing in it has changed for
`stale_staging_s` (7 days by default): it may belong to a run still working. A run into a folder
that holds another run's output is refused unless `overwrite` is set (checked when the run is
launched, and again by the commit); then the old output is replaced at commit time, so it stays
whole until the new run has succeeded. Everything goes through Beam's FileSystems (a rename is a
copy and delete on gs://), so it works the same locally and on Cloud Storage.
"""

from __future__ import annotations

import json
import logging
import os
import time
import typing
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

STAGING_DIR = ".staging"
COMPLETE_MARKER = "report.json"
COMMIT_MARKER = ".commit"  # in a staging folder: this run's commit has passed check_output
DEFAULT_STALE_STAGING_S = 7 * 24 * 3600.0
_LOG = logging.getLogger(__name__)


class OutputExistsError(Exception):
  """The output folder holds another run's output and `--overwrite` was not given."""


def _files_under(folder: str) -> typing.List[str]:
  """Every file under `folder`, at any depth (hidden ones included); [] when it does not exist."""
  pattern = FileSystems.join(folder, "**")
  return sorted(metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list)


def _relative(path: str, folder: str) -> str:
  prefix = folder.rstrip("/") + "/"
  if not path.startswith(prefix):
    raise ValueError(f"{path} is not under {folder}")
  return path[len(prefix):]


def _is_staged(relative_path: str) -> bool:
  return relative_path.split("/", 1)[0] == STAGING_DIR


def output_files(output: str) -> typing.List[str]:
  """The files of earlier runs in `output` (paths relative to it), staging leftovers excluded."""
  return [
      relative for relative in (_relative(path, output) for path in _files_under(output))
      if not _is_staged(relative)]


def check_output(output: str, overwrite: bool) -> None:
  """Raises OutputExistsError when `output` holds a run's files and `overwrite` is not set."""
  if overwrite:
    return
  existing = output_files(output)
  if existing:
    state = ("a complete run" if COMPLETE_MARKER in existing
             else "files of an unfinished or partly committed run")
    shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
    raise OutputExistsError(
        f"output folder {output} is not empty: it holds {state} ({len(existing)} files: "
        f"{shown}); pass --overwrite to replace it, or choose another --output")


def _is_local(path: str) -> bool:
  return FileSystems.get_scheme(path) in (None, "file")


def _remove_empty_folders(folder: str) -> None:
  """Local filesystems keep empty folders after their files move; object stores have none."""
  if not _is_local(folder) or not os.path.isdir(folder):
    return
  for root, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
    if not os.listdir(root):
      os.rmdir(root)


def staging_path(output: str, run_id: str) -> str:
  return FileSystems.join(output, STAGING_DIR, run_id)


def new_run_id() -> str:
  return uuid.uuid4().hex


def _last_updated(metadata) -> float:
  return metadata.last_updated_in_seconds or FileSystems.last_updated(metadata.path)


def _remove_stale_staging(output: str, mine: str, stale_staging_s: float) -> typing.List[str]:
  """Removes other runs' staging folders in which nothing changed for `stale_staging_s`."""
  root = FileSystems.join(output, STAGING_DIR)
  pattern = FileSystems.join(root, "**")
  by_run: dict[str, list] = {}
  for metadata in FileSystems.match([pattern])[0].metadata_list:
    run = _relative(metadata.path, root).split("/", 1)[0]
    by_run.setdefault(run, []).append(metadata)
  removed = []
  now = time.time()
  for run, files in sorted(by_run.items()):
    if FileSystems.join(root, run) == mine.rstrip("/"):
      continue
    newest = max(_last_updated(metadata) for metadata in files)
    if now - newest >= stale_staging_s:
      FileSystems.delete([metadata.path for metadata in files])
      removed.append(run)
    else:
      _LOG.info("kept the staging folder of run %s: changed %.0f s ago, it may be running",
                run, now - newest)
  return removed


def commit_staged(output: str, staging: str, relative_files: typing.Iterable[str],
                  overwrite: bool, stale_staging_s: float = DEFAULT_STALE_STAGING_S
                  ) -> typing.List[str]:
  """Moves `relative_files` from `staging` into `output`, replacing an earlier run's output;
  returns their final paths. Idempotent: a retry after a partial commit finishes it.

  Refuses (OutputExistsError) an `output` that holds another run's files, unless `overwrite`;
  a retry finds COMMIT_MARKER and knows that check passed. Files of an earlier run are removed
  (its report.json first, so the folder never looks complete while mixed); the staging folder
  is removed at the end, and other runs' staging folders only when stale.
  """
  relative = sorted(set(relative_files))
  finals = [FileSystems.join(output, *name.split("/")) for name in relative]
  marker = FileSystems.join(staging, COMMIT_MARKER)
  if not FileSystems.exists(marker):
    check_output(output, overwrite)
    with FileSystems.create(marker) as f:
      f.write(json.dumps(relative).encode("utf-8"))
  mine = set(finals)
  old = [path for path in (FileSystems.join(output, *name.split("/"))
                           for name in output_files(output)) if path not in mine]
  old.sort(key=lambda path: not path.endswith("/" + COMPLETE_MARKER))
  if old:
    FileSystems.delete(old)
  sources, destinations = [], []
  for name, final in zip(relative, finals):
    staged = FileSystems.join(staging, *name.split("/"))
    if FileSystems.exists(staged):
      sources.append(staged)
      destinations.append(final)
    elif not FileSystems.exists(final):
      raise FileNotFoundError(f"{staged} was written by the run but is neither staged nor "
                              f"committed")
  if _is_local(output):
    for folder in sorted({os.path.dirname(path) for path in destinations}):
      if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
  if sources:
    FileSystems.rename(sources, destinations)
  _remove_stale_staging(output, staging, stale_staging_s)
  return finals


def remove_staging(output: str, staging: str) -> None:
  """Deletes what is left in a run's staging folder (temporary files, the commit marker)."""
  left = _files_under(staging)
  if left:
    FileSystems.delete(left)
  _remove_empty_folders(FileSystems.join(output, STAGING_DIR))
  _remove_empty_folders(output)


class _Commit(beam.DoFn):
  """The report record in, the committed report's path out; the written files as side input."""

  def __init__(self, output: str, staging: str, overwrite: bool, stale_staging_s: float,
               write_report: typing.Callable[[dict, str], typing.List[str]]):
    self._output = output
    self._staging = staging
    self._overwrite = overwrite
    self._stale_staging_s = stale_staging_s
    self._write_report = write_report

  def process(self, report: dict, written: typing.List[str]):
    commit_staged(self._output, self._staging, [_relative(path, self._staging) for path in written],
                  self._overwrite, self._stale_staging_s)
    yield from self._write_report(report, self._output)
    remove_staging(self._output, self._staging)


class CommitOutput(beam.PTransform):
  """The graph's last stage: commits the staged files and writes the report (see the module).

  Applied to the one-record PCollection of the report; `written` is the PCollection of every
  file path the sinks wrote under `staging`; `write_report(report, output)` writes report.json
  (and the report card) and returns their paths, which are this transform's output.
  """

  def __init__(self, output: str, staging: str, written, overwrite: bool,
               write_report: typing.Callable[[dict, str], typing.List[str]],
               stale_staging_s: float = DEFAULT_STALE_STAGING_S):
    super().__init__()
    self._written = written
    self._commit = _Commit(output, staging, overwrite, stale_staging_s, write_report)

  def expand(self, report):
    return report | "Commit" >> beam.ParDo(self._commit, beam.pvalue.AsList(self._written))


class StagedOutput:
  """The staging folder of one run into `output`, and a commit of everything staged in it.

  Args:
    output: the run's output folder (any FileSystems path).
    overwrite: replace an earlier run's output; without it the constructor refuses a folder that
      holds one (OutputExistsError).
    run_id: the staging folder's name (default: a random one).
  """

  def __init__(self, output: str, overwrite: bool = False, run_id: str | None = None):
    check_output(output, overwrite)
    self.output = output
    self.overwrite = overwrite
    self.path = staging_path(output, run_id or new_run_id())

  def abort(self) -> None:
    """Removes what this run staged (best effort: a killed run cannot; a later commit removes
    it once stale)."""
    remove_staging(self.output, self.path)

  def commit(self) -> typing.List[str]:
    """Moves every staged file into place, replacing any earlier output; returns their paths."""
    staged = [_relative(path, self.path) for path in _files_under(self.path)]
    finals = commit_staged(self.output, self.path,
                           [name for name in staged if name != COMMIT_MARKER], self.overwrite)
    remove_staging(self.output, self.path)
    return finals
