"""A poisoned page: web text that carries the harmfulness tag itself, and near spellings of it.

Anyone can put `<potentially_unsafe_content>` on a page. The whole pipeline runs (the shipped
classifier, the real SmolLM2 generator, short generations) on pages from the bundled sample
(a safe one, a mildly unsafe one, a highly unsafe one) with tags planted in them, and the
output must hold the tag only in `tagged/`, exactly at the positions the tagger picks for the
stripped text; every branch, safe data above all, holds none; the report counts what was
stripped; the counts reconcile.
"""

from __future__ import annotations

import json
import os

import pytest

from beam_pipeline import run as entry
from beam_pipeline.options import SAMPLE_INPUT
from corpus.records import HARMFULNESS_TAG
from transforms.tagging import count_tags, insert_tags, strip_tags

from .conftest import BRANCHES, read_dead_letters, read_documents

pytestmark = pytest.mark.slow

POISON = ("<potentially_unsafe_content>", "&lt;potentially_unsafe_content&gt;",
          "</Potentially-Unsafe-Content>", "<potent\u200bially_unsafe_content>",
          "potentially_unsafe_content")
PAGES = ("sample-0002", "sample-0005", "sample-0013")  # scores 0, 1-2 and 5 (make_sample.py)


def _poisoned_pages(folder) -> tuple[str, dict]:
  """The pages with each spelling planted between words; (input path, {id: clean text})."""
  with open(SAMPLE_INPUT, encoding="utf-8") as f:
    samples = {row["id"]: row for row in map(json.loads, f)}
  clean, lines = {}, []
  for page in PAGES:
    row = dict(samples[page])
    words = row["text"].split(" ")
    for index, spelling in enumerate(POISON):
      position = 1 + (3 * index) % (len(words) - 1)
      words[position] = spelling + words[position]
    clean[page] = row["text"]
    row["text"] = " ".join(words)
    assert count_tags(row["text"]) == len(POISON)
    lines.append(json.dumps(row, ensure_ascii=False))
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "poisoned.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(folder / "poisoned.jsonl"), clean


def test_the_tag_reaches_only_tagged_and_only_where_the_tagger_put_it(tmp_path):
  input_path, clean = _poisoned_pages(tmp_path / "in")
  output = str(tmp_path / "out")
  # --quality=off keeps the short generations, so every generation branch has texts to check
  report = entry.run([
      "--runner=DirectRunner", f"--input={input_path}", f"--output={output}", "--num_shards=1",
      "--max_new_tokens=12", "--max_attempts=1", "--quality=off", "--tag_rate=0.3"])
  assert report["checks_hold"], report["failed_checks"]
  assert report["tags_stripped"]["input"] == {"tags": len(POISON) * len(PAGES),
                                              "documents": len(PAGES)}

  written = {branch: read_documents(output, (branch,)) for branch in BRANCHES}
  assert written["raw"] and written["tagged"] and written["safeweb"] + written["refuseweb"]
  for branch, documents in written.items():
    if branch != "tagged":
      assert [d.id for d in documents if count_tags(d.text)] == [], branch
  for document in read_dead_letters(output):
    assert count_tags(document["text"]) == 0, document["id"]

  for document in written["tagged"]:
    # the stripped page, with tags exactly where the tagger's seeded hash puts them
    expected, tags = insert_tags(clean[document.id], document.id, 0.3, 0)
    assert document.text == expected and document.tag_count == tags > 0
    assert document.text.count(HARMFULNESS_TAG) == count_tags(document.text) == tags
    assert strip_tags(document.text)[0] == clean[document.id]
  for document in written["raw"]:
    assert document.text == clean[document.id]
  assert os.path.exists(os.path.join(output, "report.html"))
