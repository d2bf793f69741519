"""Bounded shards: a shard is sorted in one worker's memory, so the pipeline bounds each one.

By default (`--num_shards=0`) the shard count is sized from the data: 2 MB of input with a bound
of 0.2 MB a shard (`--max_shard_mb=0.2`) is written as ceil(bytes / bound) shards a branch,
counted in the serialized records' bytes. A fixed `--num_shards` that would put more in a shard
than the bounds allow fails the run with one line that names the count it takes.
"""

from __future__ import annotations

import glob
import json
import os
import random

import pytest

from beam_pipeline import run as entry
from corpus.records import DEAD_LETTER, ORIGINAL_BRANCHES, RAW

from .conftest import run_pipeline, tfrecords

pytestmark = pytest.mark.slow

WORDS = ("the a river forest bread recipe garden music lesson history city train market school "
         "library ocean mountain weather festival museum bicycle").split()
BOUND_MB = 0.2
BOUND = int(BOUND_MB * 1024 * 1024)


def _write_input(folder, documents: int, words: int) -> str:
  rng = random.Random(documents)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "docs.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for i in range(documents):
      text = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
      f.write(json.dumps({"id": f"doc-{i:05d}", "text": text}) + "\n")
  return str(path)


def _shards(output: str, branch: str):
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(output, branch, "part-*")))


def test_two_megabytes_with_a_200_kb_bound_are_sized_into_shards(tmp_path):
  """No --num_shards: the default sizes each branch from its serialized bytes."""
  input_path = _write_input(tmp_path / "in", 400, 800)  # about 5 kB a document
  assert os.path.getsize(input_path) > 2 * 10**6
  output = str(tmp_path / "out")
  report = entry.run(["--runner=DirectRunner", f"--input={input_path}", f"--output={output}",
                      "--generation=off", f"--max_shard_mb={BOUND_MB}"])
  assert report["checks_hold"], report.get("failed_checks")
  for branch in ORIGINAL_BRANCHES:
    names = _shards(output, branch)
    size = sum(len(record) for name in names
               for record in tfrecords(os.path.join(output, branch, name)))
    expected = max(1, -(-size // BOUND))
    assert names == [f"part-{s:05d}-of-{expected:05d}.tfrecord.gz" for s in range(expected)], (
        branch, size)
  raw = _shards(output, RAW)
  assert len(raw) > 1, raw
  assert report["per_branch"][RAW] > 300  # the sample's words score safe: most of it is raw
  assert _shards(output, DEAD_LETTER) == ["part-00000-of-00001.jsonl.gz"]


def test_a_fixed_shard_count_over_the_bounds_fails_with_one_line(tmp_path):
  input_path = _write_input(tmp_path / "in", 40, 50)
  output = tmp_path / "out"
  done = run_pipeline(f"--input={input_path}", f"--output={output}", "--generation=off",
                      "--num_shards=2", "--max_shard_records=5")
  assert done.returncode == 2, done.stderr[-4000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, done.stderr[-4000:]
  assert errors[0].startswith("error: shards too large: raw: "), errors
  assert "pass --num_shards=0 (sized from the data) or --num_shards=" in errors[0], errors
  assert not glob.glob(str(output / "*" / "part-*"))
  assert not os.path.exists(output / "report.json")
