"""Every generated text the pipeline writes passes every quality check: on the bundled sample and
on real web text.

One DirectRunner run, with the shipped classifier and the embedded SmolLM2 generator at the
pipeline's defaults for the gate, reads the bundled sample plus real web texts from
`../shared/data` (the web sources of benchmarks/generation_quality.py: pages, posts, comments
and tweets, none written for this project), three of each score band. Then every text in
`safeweb/`, `refuseweb/` and `moral_education/` is read back from the TFRecords and run through
its branch's quality gate again, built from the same options, against its source: none fails a
check. What the gate rejected is in `dead_letter/` with a `quality_<check>` reason and the
reviews of its attempts; the counts reconcile; no tag is in any branch but `tagged/`.

The truncation check decides on how the generator stopped, which the output does not carry: it
is re-run with no finish reason, so only the gate's own verdict covers it (a text trimmed back to
its last sentence passes it there).
"""

from __future__ import annotations

import collections
import json

import pytest

from beam_pipeline import pipeline as graph
from beam_pipeline import run as entry
from beam_pipeline.options import SAMPLE_INPUT, SafetyPretrainingOptions
from benchmarks import generation_quality
from corpus.records import MORAL_EDUCATION, REFUSEWEB, SAFEWEB
from models.classifier import artifacts
from models.generators.prompts import MAX_DOCUMENT_CHARS, defuse, excerpt
from transforms.quality_checks import BRANCH_KINDS, REASON_PREFIX, REASONS
from transforms.tagging import count_tags

from .conftest import BRANCHES, read_dead_letters, read_documents

pytestmark = pytest.mark.slow

WEB_PER_BAND = 3
GENERATED = (SAFEWEB, REFUSEWEB, MORAL_EDUCATION)


def _web_texts() -> list[dict]:
  """Real web texts of every score band, short enough to be quoted whole."""
  rows = generation_quality.pick_documents(
      generation_quality.DATA, 4 * WEB_PER_BAND, sources=generation_quality.WEB_SOURCES)
  if not rows:
    pytest.fail(f"No labelled web texts match {generation_quality.DATA}: this test reads the "
                "real web texts of ../shared/data beside the checkout.")
  by_band = collections.defaultdict(list)
  for row in rows:
    if len(row["text"].strip()) <= MAX_DOCUMENT_CHARS and len(by_band[row["score_0_5"]]) < \
        WEB_PER_BAND:
      by_band[row["score_0_5"]].append(row)
  return [row for band in sorted(by_band) for row in by_band[band]]


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("quality")
  inputs = base / "in"
  inputs.mkdir()
  sources = {}
  with open(SAMPLE_INPUT, encoding="utf-8") as f:
    sample = f.read()
  (inputs / "sample.jsonl").write_text(sample, encoding="utf-8")
  sources.update((row["id"], row["text"]) for row in map(json.loads, sample.splitlines()))
  lines = []
  for row in _web_texts():
    doc_id = f"web-{row['source']}-{row['id']}"
    lines.append(json.dumps({"id": doc_id, "text": row["text"]}, ensure_ascii=False))
    sources[doc_id] = row["text"]
  (inputs / "web.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  output = str(base / "out")
  args = [f"--input={inputs}/*.jsonl", f"--output={output}", "--num_shards=1",
          "--max_new_tokens=96"]
  report = entry.run(["--runner=DirectRunner", *args])
  # the model the run settled at launch, which the gates' encoder reads again here
  model = f"--classifier_model={artifacts.settle_model(None)}"
  return output, report, sources, SafetyPretrainingOptions(args + [model])


def test_every_generated_text_passes_every_check(quality_run):
  output, report, sources, options = quality_run
  assert report["checks_hold"], report["failed_checks"]
  gates = {branch: graph.quality_gate(kind, options) for branch, kind in BRANCH_KINDS.items()}
  documents = {branch: read_documents(output, (branch,)) for branch in GENERATED}
  dialogues = {d.id: d.text for d in documents[REFUSEWEB]}
  checked = collections.Counter()
  for branch in GENERATED:
    for document in documents[branch]:
      source = dialogues[document.parent_id] if branch == MORAL_EDUCATION else sources[
          document.parent_id]
      review = gates[branch].review(defuse(excerpt(source)), document.text)
      assert not review.failed, (branch, document.id, review.failed, document.text)
      checked[branch, document.parent_id.startswith("web-")] += 1
  # texts from both inputs were checked, the web's and the sample's
  assert checked[SAFEWEB, True] and checked[SAFEWEB, False], checked
  print(f"re-checked: {dict(checked)}")


def test_what_the_gate_rejected_is_dead_lettered_with_its_reason(quality_run):
  output, report, _, _ = quality_run
  dead = read_dead_letters(output)
  rejected = [d for d in dead if d["reason"].startswith(REASON_PREFIX)]
  assert rejected, "the embedded model's texts failed no check: the gate was not exercised"
  for letter in rejected:
    assert letter["reason"] in REASONS, letter["reason"]
    detail = letter["detail"]
    assert detail["reviews"] and detail["attempts"] == len(detail["reviews"]), detail
    # the last attempt failed the check the reason names
    assert letter["reason"][len(REASON_PREFIX):] in detail["reviews"][-1]["failed"], detail
  assert len(dead) == report["dead_letters_total"]
  by_reason = collections.Counter(d["reason"] for d in rejected)
  for reason, n in by_reason.items():
    stages = [stage for stage, reasons in report["dead_letters"].items() if reason in reasons]
    assert sum(report["dead_letters"][stage][reason] for stage in stages) == n, reason


def test_no_tag_outside_tagged(quality_run):
  output, _, _, _ = quality_run
  for branch in BRANCHES:
    if branch != "tagged":
      for document in read_documents(output, (branch,)):
        assert count_tags(document.text) == 0, (branch, document.id)
