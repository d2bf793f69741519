"""At scale on Flink: 20,000 generated documents, generation off, shards sized from the data.

A nightly crawl partition is many thousands of documents, not the sample's seventeen; this run
shows that the graph's statistics, its bounded shards (`--num_shards=0`: as many shards as it
takes to hold at most `--max_shard_records` each) and its commit hold there, on a standalone
Flink cluster with two task slots, and that the bytes are DirectRunner's. Generation is off, so
the run measures the path every document takes (read, validate, score, route, tag, write); the
sample-sized runs in test_flink.py cover generation.
"""

from __future__ import annotations

import json
import os

import pytest

import generated_corpus
from engine_runs import BROKEN_LINES, assert_same_bytes, output_files, run_engine

pytestmark = pytest.mark.slow

DOCUMENTS = 20_000
MAX_SHARD_RECORDS = 500
# Each run may take this long on a loaded 2-core machine. On an idle one each takes about 5
# minutes (Flink 261 s with the cluster's start, DirectRunner 287 s, `make test` --durations);
# at a load of 8-14, and with ONNX Runtime's threads still spin-waiting, 1,851 s and 864 s.
ENGINE_TIMEOUT_S = 3000
OPTIONS = ("--generation=off", "--num_shards=0", f"--max_shard_records={MAX_SHARD_RECORDS}",
           "--max_chars=5000")


@pytest.fixture(scope="module")
def scale_args(tmp_path_factory) -> list[str]:
  folder = tmp_path_factory.mktemp("scale_input")
  # Short documents (one window each), so that the two runs fit in CI's time on 2 cores.
  pattern = generated_corpus.write(str(folder), DOCUMENTS, files=8, min_chars=100, max_chars=600)
  with open(folder / "broken.jsonl", "wb") as f:
    f.writelines(BROKEN_LINES)
  return [f"--input={pattern}", *OPTIONS]


@pytest.fixture(scope="module")
def direct_scale(tmp_path_factory, scale_args):
  return run_engine("direct", str(tmp_path_factory.mktemp("direct_scale") / "out"), *scale_args,
                    timeout=ENGINE_TIMEOUT_S)


@pytest.fixture(scope="module")
def flink_scale(tmp_path_factory, scale_args):
  return run_engine("flink", str(tmp_path_factory.mktemp("flink_scale") / "out"), *scale_args,
                    timeout=ENGINE_TIMEOUT_S)


def _report(run) -> dict:
  with open(os.path.join(run.output, "report.json"), encoding="utf-8") as f:
    return json.load(f)


def test_every_document_is_accounted_for(flink_scale):
  """Every generated document is valid and distinct, so each is in raw or tagged; the broken
  lines are dead letters."""
  report = _report(flink_scale)
  assert report["checks_hold"], report["checks"]
  assert report["per_branch"]["raw"] + report["per_branch"]["tagged"] == DOCUMENTS
  assert report["per_branch"]["tagged"] > 0 and report["per_branch"]["raw"] > 0
  assert report["dead_letters_total"] >= len(BROKEN_LINES), report["dead_letters"]
  assert not os.path.exists(os.path.join(flink_scale.output, ".staging"))


def test_shards_are_sized_from_the_data(flink_scale):
  """At least 8 shards a large branch, none over the bound on average."""
  report = _report(flink_scale)
  files = output_files(flink_scale.output)
  raw_shards = [name for name in files if name.startswith("raw/")]
  assert len(raw_shards) >= 8, raw_shards
  assert report["per_branch"]["raw"] / len(raw_shards) <= MAX_SHARD_RECORDS
  assert all(f"-of-{len(raw_shards):05d}" in name for name in raw_shards)


def test_flink_at_scale_equals_direct_runner(flink_scale, direct_scale):
  assert _report(direct_scale)["per_branch"] == _report(flink_scale)["per_branch"]
  assert_same_bytes(direct_scale.output, flink_scale.output)
