"""Safe outputs: a run writes into a staging folder, and its last stage moves the files into place.

    {output}/.staging/<run id>/raw/part-...   while the pipeline runs
    {output}/raw/part-...                      after the graph's `CommitOutput`

`CommitOutput` is the graph's final stage: it runs once every sink has finalized (their written
file names are its side input, which a runner computes before it), moves exactly those files
into place, writes report.json and report.html from the statistics computed in the graph, and
removes its staging folder. It needs nothing from the process that launched the job, so a job
started from a template commits as a local run does. It is idempotent, since a runner may retry
it: a file already moved counts as moved, a marker in the staging folder records that the
check against another run's output passed, `.committed_run` names the run whose output the
folder holds (written before report.json, the sign of a complete run, which is written last),
and a retry that finds its own run complete there does nothing.

The commit reads the report's checks. A run whose checks fail replaces nothing: its report.json
and report.html go to `{output}/.failed/<run id>/`, with its dead letters (what a person reads
to see why) and samples, the rest of its staging folder is removed, and the commit raises
ChecksFailedError, so the job fails on every runner; a retry finds that report and raises again.

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
FAILED_DIR = ".failed"  # {output}/.failed/<run id>/: the report of a run whose checks failed
COMPLETE_MARKER = "report.json"
COMMIT_MARKER = ".commit"  # in a staging folder: this run's commit has passed check_output
COMMITTED_RUN = ".committed_run"  # in the output folder: {"run_id": ...} of its report.json
# What a failed run keeps beside its report: why it failed (dead letters), what the card shows.
KEPT_WHEN_FAILED = ("dead_letter", "samples")
DEFAULT_STALE_STAGING_S = 7 * 24 * 3600.0
_LOG = logging.getLogger(__name__)


class OutputExistsError(Exception):
  """The output folder holds another run's output and `--overwrite` was not given."""


CHECKS_FAILED = "the run's checks failed"  # how ChecksFailedError's message starts


class ChecksFailedError(RuntimeError):
  """A run's report checks failed: its output was not committed, its report is under
  `{output}/.failed/<run id>/`."""


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
  """Staging leftovers and failed runs' reports: in the folder, but no run's output."""
  return relative_path.split("/", 1)[0] in (STAGING_DIR, FAILED_DIR)


def output_files(output: str) -> typing.List[str]:
  """The files of earlier runs in `output` (paths relative to it), staging leftovers and failed
  runs' reports excluded."""
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


def run_id_of(staging: str) -> str:
  """The run id a staging folder (`staging_path`) is named after."""
  return FileSystems.split(staging.rstrip("/"))[1]


def failed_path(output: str, run_id: str) -> str:
  """Where the report of a run whose checks failed is committed instead of its output."""
  return FileSystems.join(output, FAILED_DIR, run_id)


def committed_run(output: str) -> str | None:
  """The run id `.committed_run` names in `output` (the run its report.json belongs to), or
  None where there is none or it cannot be read."""
  path = FileSystems.join(output, COMMITTED_RUN)
  if not FileSystems.exists(path):
    return None
  try:
    with FileSystems.open(path) as f:
      return json.loads(f.read().decode("utf-8"))["run_id"]
  except (ValueError, KeyError, TypeError):
    return None


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
  marker = FileSystems.join(staging, COMMIT_MARKER)
  if not FileSystems.exists(marker):
    check_output(output, overwrite)
    with FileSystems.create(marker) as f:
      f.write(json.dumps(relative).encode("utf-8"))
  # What is to move is settled before anything is deleted: a commit that cannot finish (a file
  # neither staged nor committed) leaves an earlier run's output as it was.
  finals, sources, destinations = _moves(staging, output, relative)
  mine = set(finals)
  old = [path for path in (FileSystems.join(output, *name.split("/"))
                           for name in output_files(output)) if path not in mine]
  old.sort(key=lambda path: not path.endswith("/" + COMPLETE_MARKER))
  if old:
    FileSystems.delete(old)
  _move(sources, destinations, output)
  _remove_stale_staging(output, staging, stale_staging_s)
  return finals


def _moves(staging: str, target: str, relative: typing.Sequence[str]):
  """(final paths, staged sources, their destinations) of moving `relative` from `staging`
  into `target`; a file already moved counts as moved, one neither staged nor moved raises."""
  finals, sources, destinations = [], [], []
  for name in relative:
    final = FileSystems.join(target, *name.split("/"))
    staged = FileSystems.join(staging, *name.split("/"))
    finals.append(final)
    if FileSystems.exists(staged):
      sources.append(staged)
      destinations.append(final)
    elif not FileSystems.exists(final):
      raise FileNotFoundError(f"{staged} was written by the run but is neither staged nor "
                              f"committed")
  return finals, sources, destinations


def _move(sources: typing.List[str], destinations: typing.List[str], target: str) -> None:
  if _is_local(target):
    for folder in sorted({os.path.dirname(path) for path in destinations}):
      if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
  if sources:
    FileSystems.rename(sources, destinations)


def _write_committed_run(output: str, run_id: str) -> None:
  with FileSystems.create(FileSystems.join(output, COMMITTED_RUN)) as f:
    f.write((json.dumps({"run_id": run_id}) + "\n").encode("utf-8"))


def commit_run(output: str, staging: str, relative_files: typing.Iterable[str], report: dict,
               write_report: typing.Callable[[dict, str], typing.List[str]], overwrite: bool,
               stale_staging_s: float = DEFAULT_STALE_STAGING_S) -> typing.List[str]:
  """The whole commit of one run (CommitOutput's): the staged files into place, then
  `.committed_run`, then the report (`write_report(report, output)`); returns the report's
  paths. A second call for a run whose commit is complete does nothing but tidy its staging
  folder. A report whose checks fail is committed by `commit_failed`, which raises."""
  relative = sorted(set(relative_files))
  if not report.get("checks_hold", True):
    commit_failed(output, staging, relative, report, write_report)
  run_id = run_id_of(staging)
  report_path = FileSystems.join(output, COMPLETE_MARKER)
  if committed_run(output) == run_id and FileSystems.exists(report_path):
    _LOG.info("run %s is already committed in %s: nothing to do", run_id, output)
    remove_staging(output, staging)
    return [report_path]
  commit_staged(output, staging, relative, overwrite, stale_staging_s)
  _write_committed_run(output, run_id)
  paths = write_report(report, output)
  remove_staging(output, staging)
  return paths


def commit_failed(output: str, staging: str, relative_files: typing.Iterable[str], report: dict,
                  write_report: typing.Callable[[dict, str], typing.List[str]]) -> None:
  """Commits a run whose checks failed without touching `output`'s files: the staged files
  under KEPT_WHEN_FAILED move to `failed_path`, the report is written there (report.json last),
  the rest of the staging folder is removed; then raises ChecksFailedError. Idempotent: a retry
  that finds the failed report there only tidies and raises again."""
  run_id = run_id_of(staging)
  failed = failed_path(output, run_id)
  if not FileSystems.exists(FileSystems.join(failed, COMPLETE_MARKER)):
    kept = [name for name in sorted(set(relative_files))
            if name.split("/", 1)[0] in KEPT_WHEN_FAILED]
    _, sources, destinations = _moves(staging, failed, kept)
    _move(sources, destinations, failed)
    write_report(report, failed)
  remove_staging(output, staging)
  failed_checks = report.get("failed_checks") or sorted(
      name for name, check in report.get("checks", {}).items()
      if isinstance(check, dict) and check.get("holds") is False)
  raise ChecksFailedError(
      f"{CHECKS_FAILED} ({', '.join(failed_checks) or 'see the report'}): nothing in "
      f"{output} was replaced; the run's report is "
      f"{FileSystems.join(failed, COMPLETE_MARKER)}")


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
    yield from commit_run(
        self._output, self._staging, [_relative(path, self._staging) for path in written],
        report, self._write_report, self._overwrite, self._stale_staging_s)


class CommitOutput(beam.PTransform):
  """The graph's last stage: commits the staged files and writes the report (see the module).

  Applied to the one-record PCollection of the report; `written` is the PCollection of every
  file path the sinks wrote under `staging`; `write_report(report, output)` writes report.json
  (and the report card) and returns their paths, which are this transform's output. A report
  whose checks fail is written under `.failed/<run id>/` instead, and the stage raises
  ChecksFailedError (`commit_run`).
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
