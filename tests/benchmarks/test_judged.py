"""benchmarks/judged/judged.jsonl: the judged set's rows, labels and references hold together.

The labels are a person's (benchmarks/judged/RUBRIC.md); these tests check that every row can
be measured: the fields gate_precision.py reads, a label and a reason with a code the rubric
defines, both classes in every branch, texts stored only where their licence allows, and
(where ../shared/data is present) every reference reading back as the text that was labelled.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JUDGED_DIR = os.path.join(REPO, "benchmarks", "judged")
BRANCH_KIND = {"safeweb": "rephrase", "refuseweb": "refuseweb",
               "moral_education": "moral_education"}
STYLES = {"podcast", "textbook", "teacher_script", "talk", "parent_child",
          "friends_conversation", "children_video"}
REQUIRED = ("id", "branch", "kind", "style", "origin", "source_id", "source_sha256",
            "text_sha256", "finish_reason", "usable", "reason")
# Texts of these sources may not be stored (research-only, non-commercial or share-alike
# licences): the file holds a reference and a hash (README.md beside the set).
KEPT_OUT = ("reuters21578", "ag_news", "cnn_dailymail", "dialoconan", "safety_tuned_llamas",
            "wikitext2", "decodingtrust")


def _rows():
  with open(os.path.join(JUDGED_DIR, "judged.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _rubric_codes() -> set[str]:
  with open(os.path.join(JUDGED_DIR, "RUBRIC.md"), encoding="utf-8") as f:
    return set(re.findall(r"^\| `([a-z_]+)` \|", f.read(), re.MULTILINE))


def _build():
  spec = importlib.util.spec_from_file_location("judged_build",
                                                os.path.join(JUDGED_DIR, "build.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_rubric_defines_the_reject_codes():
  codes = _rubric_codes()
  assert {"off_topic", "disfluent", "nonwords", "repetitive", "wrong_style", "unsafe_detail",
          "meta_text", "truncated", "refusal_in_rephrase", "not_a_refusal"} <= codes


def test_every_row_has_the_fields_and_a_label():
  rows = _rows()
  assert len(rows) >= 300
  assert len({row["id"] for row in rows}) == len(rows), "ids repeat"
  for row in rows:
    missing = [field for field in REQUIRED if field not in row]
    assert not missing, (row["id"], missing)
    assert ("text" in row) != ("text_ref" in row), row["id"]
    assert BRANCH_KIND[row["branch"]] == row["kind"], row["id"]
    assert isinstance(row["usable"], bool), (row["id"], row["usable"])
    if row["branch"] == "safeweb":
      assert row["style"] in STYLES, row["id"]
    if row["branch"] == "refuseweb":
      assert len(row["speakers"].split("/")) == 2, row["id"]
    assert re.fullmatch(r"[0-9a-f]{64}", row["text_sha256"]), row["id"]


def test_every_reason_is_a_rubric_code_and_a_few_words():
  codes = _rubric_codes()
  for row in _rows():
    code, colon, words = row["reason"].partition(": ")
    assert colon and len(words.split()) >= 2, (row["id"], row["reason"])
    if row["usable"]:
      assert code == "ok", (row["id"], row["reason"])
    else:
      assert code in codes, (row["id"], row["reason"])


# The least of each class per branch that a precision or recall is read from. Moral Education
# has no usable text (README.md beside the set, "Limits": the embedded model writes its
# articles and ../shared/data holds no ethics article), so only its precision (what the gate
# passes is unusable) is measured there.
LEAST = {"safeweb": (10, 40), "refuseweb": (10, 40), "moral_education": (0, 40)}


def test_both_classes_in_every_branch_and_several_origins():
  counts = collections.Counter((row["branch"], row["usable"]) for row in _rows())
  for branch, (usable, unusable) in LEAST.items():
    assert counts[(branch, True)] >= usable, (branch, counts)
    assert counts[(branch, False)] >= unusable, (branch, counts)
  origins = {row["origin"].split(":")[0].split("@")[0] for row in _rows()}
  assert {"smollm2-135m", "jbb-refusal", "human", "pyrit_manyshot", "decodingtrust"} <= origins


def test_inline_texts_match_their_hash_and_kept_out_sources_are_references():
  build = _build()
  for row in _rows():
    if "text" in row:
      assert build.sha256(row["text"]) == row["text_sha256"], row["id"]
      assert not any(source in row["origin"] for source in KEPT_OUT), row["id"]


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.path.dirname(REPO), "shared", "data")),
                    reason="../shared/data is not on this machine: the judged set's "
                           "sources and kept-out texts are read from it")
def test_every_reference_reads_back_as_labelled():
  build = _build()
  data = build.data_rows()
  for row in _rows():
    source, text = build.resolve(row, data)  # raises when a hash does not match
    assert source and text.strip(), row["id"]
