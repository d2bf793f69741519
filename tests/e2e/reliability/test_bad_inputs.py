"""Every kind of broken input through the whole pipeline: it finishes, nothing is lost.

One run reads the corpus of `corpus.py` (generation off: this is about input), then each kind is
found in the output by its files' names: its documents out and its dead letters, by reason. The
table of records in, out and dead-lettered per kind is printed (and repeated at the end of the
pytest run).
"""

from __future__ import annotations

import collections
import json
import os

from . import conftest
from .conftest import read_dead_letters, read_documents, run_pipeline


def _table(rows) -> str:
  header = ("kind of bad input", "records in", "out", "dead-lettered", "reasons")
  widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
  lines = []
  for row in [header, *rows]:
    cells = [str(row[0]).ljust(widths[0])] + [str(row[i]).rjust(widths[i]) for i in (1, 2, 3)]
    lines.append("  ".join(cells + [str(row[4])]))
  return "\n".join(lines)


def test_every_kind_of_bad_input_is_accounted_for(bad_input_run, capsys):
  kinds, output, report = bad_input_run
  documents = read_documents(output)
  dead_letters = read_dead_letters(output)
  rows, problems = [], []
  for kind in kinds:
    out = sum(1 for d in documents if d.source in kind.files)
    dead = dict(collections.Counter(d["reason"] for d in dead_letters if d["source"] in kind.files))
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(dead.items())) or "-"
    rows.append((kind.name, kind.records_in, out, sum(dead.values()),
                 reasons + (f" ({kind.note})" if kind.note else "")))
    if out != kind.out or dead != kind.dead:
      problems.append(f"{kind.name}: out {out}, dead letters {dead}; expected out {kind.out}, "
                      f"dead letters {kind.dead}")
  table = _table(rows)
  with capsys.disabled():
    print("\n" + table)
  conftest.SUMMARY_LINES.extend(["bad inputs: records in, out, dead-lettered", table])
  assert not problems, "\n".join(problems) + "\n" + table

  # Every output and every dead letter belongs to a kind: nothing else came out.
  files = {name for kind in kinds for name in kind.files}
  assert {d.source for d in documents} <= files
  assert {d["source"] for d in dead_letters} <= files
  # Counts reconcile: per kind (a truncated file's or an unreadable file's rest is one entry)...
  for kind, row in zip(kinds, rows):
    _, records_in, out, dead, _ = row
    if "unreadable_file" in kind.dead or "unknown_format" in kind.dead:
      whole_files = kind.dead.get("unreadable_file", 0) + kind.dead.get("unknown_format", 0)
      assert out + dead - whole_files <= records_in, kind.name
    else:
      assert records_in == out + dead, kind.name
  # ...and in the run's report, from Beam's counters.
  assert report["checks_hold"], json.dumps(report["checks"], indent=2)
  assert report["dead_letters_total"] == report["dead_letters_written"] == len(dead_letters)
  assert sum(report["per_branch"].values()) == len(documents)
  assert report["documents_scored"] == sum(report["per_score"].values()) == len(documents)


def test_dead_letters_say_what_went_wrong(bad_input_run):
  _, output, _ = bad_input_run
  dead_letters = read_dead_letters(output)
  dead = {(d["source"], d["id"]): d for d in dead_letters}
  assert all(d["stage"] and d["reason"] for d in dead.values())
  big = dead[("big.jsonl", "big-20mb")]
  assert big["reason"] == "text_too_long" and big["detail"]["length"] == 20 * 1024 * 1024
  assert len(json.loads(big["text"])["text"]) == 20 * 1024 * 1024  # the record is kept whole
  cut = [d for d in dead.values() if d["source"] == "cut.jsonl.gz"][0]
  assert "EOFError" in cut["detail"]["error"] and cut["detail"]["records_read"] > 0
  assert cut["id"] == f"cut.jsonl.gz:{cut['detail']['records_read']}"
  fake = dead[("fake.parquet", "fake.parquet")]
  assert fake["detail"]["records_read"] == 0 and fake["detail"]["path"].endswith("fake.parquet")
  zipped = dead[("zipped.jsonl", "zipped.jsonl")]
  assert "gzip-compressed data, not JSON lines" in zipped["detail"]["error"]
  no_text = dead[("no_text.parquet", "pq-0")]
  assert no_text["reason"] == "missing_text"
  assert no_text["detail"]["fields"] == ["body", "id", "lang"]
  duplicates = [d for d in dead_letters if d["id"] == "dup-b"]
  assert [d["stage"] for d in duplicates] == ["deduplicate"] * 2
  assert {d["text"] for d in duplicates} == {"Second text of b.", "Third text of b."}
  assert all(d["detail"]["kept_source"] == "duplicates.jsonl" for d in duplicates)


def test_an_unreadable_file_stops_the_run_with_one_clear_error(tmp_path):
  """Without --unreadable_files=dead_letter: one error line that names the file, no output."""
  corpus = tmp_path / "in"
  corpus.mkdir()
  (corpus / "good.jsonl").write_text('{"id": "a", "text": "A fine document."}\n')
  (corpus / "table.parquet").write_text('{"id": "b", "text": "JSON, not Parquet"}\n')
  output = tmp_path / "out"
  result = run_pipeline(f"--input={corpus}/*", f"--output={output}", "--generation=off")
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert errors[0].startswith(f"error: cannot read input file {corpus / 'table.parquet'}: ")
  assert "--unreadable_files=dead_letter" in errors[0]
  # A failed run leaves nothing in the output folder, not even its staging folder.
  leftovers = [os.path.join(root, name) for root, _, names in os.walk(output) for name in names]
  assert leftovers == []
