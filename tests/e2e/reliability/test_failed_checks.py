"""Checks that cover every failure, through the whole pipeline: a run that read nothing, and a
run whose every scoring batch failed, fail their checks (exit status 1, the report under
<output>/.failed/<run id>/) instead of committing an empty corpus as a success."""

from __future__ import annotations

import glob
import gzip
import json
import os

import pytest

from beam_pipeline import run as entry
from tests.models.classifier.mismatched import mismatched_model

pytestmark = pytest.mark.slow


def _failed_report(output: str) -> tuple[str, dict]:
  """(folder, report) of the one failed run under `output`; the output holds no report."""
  assert not os.path.exists(os.path.join(output, "report.json"))
  (folder,) = glob.glob(os.path.join(output, ".failed", "*"))
  with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
    return folder, json.load(f)


def _empty_input(tmp_path, case: str) -> str:
  """The --input of each way to read nothing."""
  folder = tmp_path / "in"
  folder.mkdir()
  if case == "a glob that matches no file":
    return str(folder / "*.jsonl")
  if case == "a path that matches no file":
    return str(folder / "crawl.jsonl")
  (folder / "empty.jsonl").write_bytes(b"")
  (folder / "blank.jsonl").write_bytes(b"\n   \n\n")
  with gzip.open(folder / "empty.jsonl.gz", "wb") as f:
    f.write(b"")
  return str(folder / "*")


@pytest.mark.parametrize("case", ["a glob that matches no file", "a path that matches no file",
                                  "files that hold no record"])
def test_a_run_that_reads_nothing_fails_its_empty_input_check(tmp_path, case):
  output = str(tmp_path / "out")
  report = entry.run(["--runner=DirectRunner", f"--input={_empty_input(tmp_path, case)}",
                      f"--output={output}", "--generation=off", "--num_shards=1"])
  assert not report["checks_hold"]
  assert report["failed_checks"] == ["empty_input"]
  expected_files = 3 if case == "files that hold no record" else 0
  assert report["checks"]["input"] == {"files_matched": expected_files, "documents_read": 0,
                                       "documents_valid": 0, "allow_empty_input": False,
                                       "holds": False}
  folder, committed = _failed_report(output)
  assert committed == report
  assert os.path.isfile(os.path.join(folder, "report.html"))
  assert not glob.glob(os.path.join(output, "*", "part-*"))  # no empty corpus committed


def test_a_run_whose_every_record_is_invalid_fails_its_empty_input_check(tmp_path):
  """Records are read, but none is a document (a wrong --text_field): each is a dead letter of
  the validate stage, which read_failures does not count, so only empty_input stops an empty
  corpus from being committed as a success."""
  crawl = tmp_path / "crawl.jsonl"
  crawl.write_text("".join(json.dumps({"id": f"d{i}", "text": f"page {i} about gardens"}) + "\n"
                           for i in range(5)), encoding="utf-8")
  output = str(tmp_path / "out")
  report = entry.run(["--runner=DirectRunner", f"--input={crawl}", f"--output={output}",
                      "--generation=off", "--num_shards=1", "--text_field=body"])
  assert not report["checks_hold"]
  assert report["failed_checks"] == ["empty_input"]
  assert report["checks"]["input"] == {"files_matched": 1, "documents_read": 5,
                                       "documents_valid": 0, "allow_empty_input": False,
                                       "holds": False}
  reason = entry.run_report.failed_check_reason(report, "empty_input")
  assert "none of the 5 records read is a valid document" in reason and "--text_field" in reason
  folder, _ = _failed_report(output)
  assert glob.glob(os.path.join(folder, "dead_letter", "part-*"))  # why, for a person to read


def test_an_empty_input_is_allowed_with_allow_empty_input(tmp_path):
  output = str(tmp_path / "out")
  report = entry.run(["--runner=DirectRunner", f"--input={tmp_path}/nothing/*.jsonl",
                      f"--output={output}", "--generation=off", "--num_shards=1",
                      "--allow_empty_input"])
  assert report["checks_hold"], report["failed_checks"]
  assert report["checks"]["input"]["allow_empty_input"] and report["documents_read"] == 0
  assert os.path.isfile(os.path.join(output, "report.json"))
  assert len(glob.glob(os.path.join(output, "raw", "part-*"))) == 1  # the empty corpus


def test_a_run_whose_every_scoring_batch_fails_fails_its_score_failures_check(tmp_path):
  """A classifier model whose graph does not fit its tokenizer (tests/models/classifier/
  mismatched.py): it loads, and ONNX Runtime fails every batch. Every document is a dead letter
  inference_error and, over --max_failure_fraction of them, the run fails."""
  model = mismatched_model(str(tmp_path / "model"))
  output = str(tmp_path / "out")
  report = entry.run(["--runner=DirectRunner", f"--output={output}", "--generation=off",
                      "--num_shards=1", f"--classifier_model={model}"])
  assert not report["checks_hold"]
  assert report["failed_checks"] == ["score_failures"]
  scoring = report["checks"]["scoring"]
  assert scoring["documents"] > 0 and report["documents_scored"] == 0
  assert scoring["failures"] == scoring["documents"] and scoring["fraction"] == 1.0
  assert report["dead_letters"]["score"] == {"inference_error": scoring["documents"]}
  assert report["checks"]["originals"]["holds"]  # nothing lost: each failure is a dead letter
  folder, _ = _failed_report(output)
  dead = []
  for path in glob.glob(os.path.join(folder, "dead_letter", "part-*.jsonl.gz")):
    with gzip.open(path, "rt", encoding="utf-8") as f:
      dead.extend(json.loads(line) for line in f)
  assert sum(1 for d in dead if d["reason"] == "inference_error") == scoring["failures"]
  with open(os.path.join(folder, "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert "a check FAILS" in page and 'data-figure="checks/scoring/failures"' in page
