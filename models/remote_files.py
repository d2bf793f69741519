"""Model files on a filesystem other than this machine's (gs://), brought to it safely.

Both the classifier (`models.classifier.artifacts`) and the local generator
(`models.generators.local`) read their models from local files, and both may be given a
Cloud Storage path. What they share is here, on Beam's FileSystems and the standard library
only (workers have no torch):

- `download`: files copied once per machine into a folder named by a key of their paths, sizes
  and modification times (a model replaced in place is fetched again);
- `download_file`: one file to a temporary name of its own (mkstemp) beside its target, then
  renamed into place (atomic on POSIX), so the SDK processes of one machine never write the
  same file and a reader never sees half a file;
- `list_folder`, `upload_folder` and `read_listing`: a folder on a remote filesystem, written
  with a listing object last, so a reader knows the folder is whole before it copies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import typing

from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

LOG = logging.getLogger("models.remote_files")
_BLOCK = 1 << 20
# The object an uploaded folder is complete with: {relative path: size}, written last.
LISTING_NAME = ".complete.json"


def is_local(path: str) -> bool:
  """True for a path on this machine's filesystem (no scheme, or file://)."""
  return FileSystems.get_scheme(path) in (None, "file")


def metadata(path: str) -> FileMetadata:
  """A file's path, size and modification time, without reading it."""
  return FileSystems.get_filesystem(path).metadata(path)


def download(sources: typing.Sequence[str], root: str, prefix: str,
             names: typing.Sequence[str] | None = None) -> list[str]:
  """Copies `sources` into `<root>/<prefix>-<key>/` (each under its name in `names`, a path
  relative to that folder; default: its base name) and returns the local paths, in order.

  The key is a digest of each source's path, size and modification time, so a model replaced
  at the same path is a new folder. A file already there with the right size is kept, so a
  second call on the machine only asks for the sources' metadata. Each file is written through
  `download_file`: processes that download at once each write their own temporary file, and
  the last rename wins with the same bytes; each returns only once every file is whole.
  """
  names = list(names) if names is not None else [FileSystems.split(s)[1] for s in sources]
  return _download([metadata(source) for source in sources], names, root, prefix)[1]


def _download(found: list[FileMetadata], names: list[str], root: str,
              prefix: str) -> tuple[str, list[str]]:
  """`download` of files whose metadata is known: (the keyed folder, the local paths)."""
  key = hashlib.sha256("\n".join(
      f"{m.path}\t{m.size_in_bytes}\t{m.last_updated_in_seconds}" for m in found).encode())
  folder = os.path.join(root, f"{prefix}-{key.hexdigest()[:16]}")
  targets = [os.path.join(folder, *name.split("/")) for name in names]
  for source, target in zip(found, targets):
    if os.path.exists(target) and os.path.getsize(target) == source.size_in_bytes:
      continue
    os.makedirs(os.path.dirname(target), exist_ok=True)
    download_file(source.path, target, source.size_in_bytes)
  return folder, targets


def download_file(source: str, target: str, size: int | None = None) -> None:
  """Copies `source` to `target` through a temporary name of its own in the same folder and a
  rename; with `size`, a copy of another length is an error, not a file."""
  folder, name = os.path.split(target)
  handle, partial = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
  try:
    with os.fdopen(handle, "wb") as out, FileSystems.open(
        source, compression_type=CompressionTypes.UNCOMPRESSED) as src:
      shutil.copyfileobj(src, out, _BLOCK)
    if size is not None and os.path.getsize(partial) != size:
      raise IOError(f"downloading {source}: got {os.path.getsize(partial)} bytes of {size}")
    os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from the machine's other users
    os.replace(partial, target)
    LOG.info("%s downloaded to %s", source, target)
  except BaseException:
    if os.path.exists(partial):
      os.unlink(partial)
    raise


def list_folder(folder: str) -> list[tuple[str, FileMetadata]]:
  """Every file under a folder (on Cloud Storage: every object under the prefix), as (path
  relative to the folder with '/' separators, metadata), sorted; the listing object left out."""
  prefix = folder.rstrip("/") + "/"
  matched = FileSystems.match([prefix + "**"])[0].metadata_list
  files = sorted((m.path[len(prefix):], m) for m in matched
                 if m.path.startswith(prefix) and not m.path.endswith("/"))
  return [(name, m) for name, m in files if name != LISTING_NAME]


def download_folder(folder: str, root: str, prefix: str) -> str:
  """Copies every file under the remote `folder` as `download` does; returns the local folder.
  An empty or missing folder is FileNotFoundError."""
  files = list_folder(folder)
  if not files:
    raise FileNotFoundError(f"no files under {folder}")
  return _download([m for _, m in files], [name for name, _ in files], root, prefix)[0]


def read_listing(folder: str) -> dict[str, int] | None:
  """The listing an upload finished `folder` with ({relative path: size}); None while there is
  none (never uploaded, or an upload still under way)."""
  listing = FileSystems.join(folder, LISTING_NAME)
  if not FileSystems.exists(listing):
    return None
  with FileSystems.open(listing, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    return json.loads(f.read().decode("utf-8"))


def upload_folder(local: str, folder: str) -> dict[str, int]:
  """Copies every file under the local folder `local` to `folder` (any FileSystems path), then
  writes the listing last: a reader that finds the listing finds every file whole (Cloud Storage
  makes an object visible only once its upload completes). Returns the listing."""
  listing = {}
  for base, _, names in os.walk(local):
    for name in sorted(names):
      path = os.path.join(base, name)
      relative = os.path.relpath(path, local).replace(os.sep, "/")
      destination = FileSystems.join(folder, *relative.split("/"))
      with open(path, "rb") as src, FileSystems.create(
          destination, compression_type=CompressionTypes.UNCOMPRESSED) as out:
        shutil.copyfileobj(src, out, _BLOCK)
      listing[relative] = os.path.getsize(path)
  with FileSystems.create(FileSystems.join(folder, LISTING_NAME),
                          compression_type=CompressionTypes.UNCOMPRESSED) as out:
    out.write(json.dumps(listing, sort_keys=True).encode("utf-8"))
  LOG.info("%s uploaded to %s (%d files)", local, folder, len(listing))
  return listing


def download_listed(folder: str, listing: dict[str, int], target: str) -> str:
  """Copies the files of an uploaded `folder` (its `listing`) into the local folder `target`,
  whole or not at all: into a temporary folder beside it, renamed into place; a process that
  loses the race to another keeps the other's copy. Returns `target`."""
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=parent)
  try:
    for relative, size in sorted(listing.items()):
      local = os.path.join(staging, *relative.split("/"))
      os.makedirs(os.path.dirname(local), exist_ok=True)
      download_file(FileSystems.join(folder, *relative.split("/")), local, size)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is shared by the machine
    try:
      os.rename(staging, target)
    except OSError:
      if not os.path.isdir(target):  # not put there by a concurrent process
        raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return target
