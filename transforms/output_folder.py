"""Safe outputs: a run writes into a staging folder and moves its files into place only at the end.

    {output}/.staging/<run id>/raw/part-...   while the pipeline runs
    {output}/raw/part-...                      after `StagedOutput.commit()`

A run that fails or is killed leaves no file under a final name: only its hidden staging folder,
which the next run into the same folder removes when it commits. A run into a folder that holds
another run's output is refused unless `overwrite` is set; then the old output is replaced at
commit time, so it stays whole until the new run has succeeded. Everything goes through Beam's
FileSystems (a rename is a copy and delete on gs://), so it works the same locally and on Cloud
Storage. The report is written after the commit: a folder with report.json holds a complete run.
"""

from __future__ import annotations

import os
import typing
import uuid

from apache_beam.io.filesystems import FileSystems

STAGING_DIR = ".staging"
COMPLETE_MARKER = "report.json"


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


class StagedOutput:
  """The staging folder of one run into `output`, and the commit that moves it into place.

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
    self.path = FileSystems.join(output, STAGING_DIR, run_id or uuid.uuid4().hex)

  def abort(self) -> None:
    """Removes what this run staged (best effort: a killed run cannot, the next commit does)."""
    staged = _files_under(self.path)
    if staged:
      FileSystems.delete(staged)
    _remove_empty_folders(FileSystems.join(self.output, STAGING_DIR))

  def commit(self) -> typing.List[str]:
    """Moves the staged files into place, replacing any earlier output; returns their paths.

    Leftovers of earlier unfinished runs are removed. Checks again that no other run has
    committed into the folder meanwhile, unless `overwrite` is set.
    """
    check_output(self.output, self.overwrite)
    staged = _files_under(self.path)
    relative = [_relative(path, self.path) for path in staged]
    mine = self.path.rstrip("/") + "/"
    old = [path for path in _files_under(self.output) if not path.startswith(mine)]
    if old:
      FileSystems.delete(old)
    finals = [FileSystems.join(self.output, *name.split("/")) for name in relative]
    if _is_local(self.output):
      for folder in sorted({os.path.dirname(path) for path in finals}):
        if not FileSystems.exists(folder):
          FileSystems.mkdirs(folder)
    if staged:
      FileSystems.rename(staged, finals)
    _remove_empty_folders(FileSystems.join(self.output, STAGING_DIR))
    _remove_empty_folders(self.output)
    return finals
