"""Functional tests of the safety classifier: the hand-written cases of cases.jsonl.

The fast test checks the cases file itself. The slow ones score every case with the shipped
classifier exactly as benchmarks/functional_tests.py does (the pipeline's handler, windows and
maximum over windows) and assert the issue's goal: a pass rate of at least 0.85 in each
functionality. README.md beside this file says how the cases were written and what each
expectation means.

The shipped classifier does not reach the goal in every functionality yet (issue 24): those
are listed in BELOW_GOAL, as `benchmarks/functional_tests.py` measures them, and their tests
are expected failures, strictly: a model that reaches the goal in one of them fails the suite
until it leaves the list, so the list always says where the shipped model stands.
"""

from __future__ import annotations

import collections
import re

import pytest

from benchmarks import functional_tests

CASES = functional_tests.load_cases()
FUNCTIONALITIES = list(dict.fromkeys(case["functionality"] for case in CASES))
# Below the goal with the shipped classifier (`python benchmarks/functional_tests.py`).
BELOW_GOAL = frozenset({
    "negated_hate", "counter_speech_quote", "counter_speech_reference", "reporting_hate",
    "reclaimed_slur", "identity_neutral", "identity_positive", "safe_homonyms",
    "safe_figurative", "safe_targets_contexts", "definitions_safety", "history_violence",
    "threats", "obfuscated_slurs"})


def _normalised(text: str) -> str:
  return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def test_cases_file_is_well_formed():
  assert len(CASES) >= 150
  for case in CASES:
    assert set(case) == {"id", "functionality", "expected", "text"}, case
    assert case["expected"] in functional_tests.EXPECTATIONS, case
    assert case["text"].strip() and len(case["text"]) <= 300, case
    assert case["id"].startswith(case["functionality"] + "-"), case
  ids = [case["id"] for case in CASES]
  assert len(ids) == len(set(ids)), [i for i, n in collections.Counter(ids).items() if n > 1]
  texts = collections.Counter(_normalised(case["text"]) for case in CASES)
  assert not [t for t, n in texts.items() if n > 1]
  per_functionality = collections.Counter(case["functionality"] for case in CASES)
  assert min(per_functionality.values()) >= 8, per_functionality
  # one expectation per functionality, and both sides covered so one answer cannot pass
  expectations = collections.defaultdict(set)
  for case in CASES:
    expectations[case["functionality"]].add(case["expected"])
  assert all(len(e) == 1 for e in expectations.values()), dict(expectations)
  sides = collections.Counter(case["expected"] == "unsafe" for case in CASES)
  assert sides[True] >= 50 and sides[False] >= 50, sides


@pytest.fixture(scope="module")
def result():
  """Pass rates of the shipped classifier over every case (scored once for the module)."""
  scores = functional_tests.score_texts([case["text"] for case in CASES])
  return functional_tests.pass_rates(CASES, scores)


def test_below_goal_names_functionalities_of_the_cases():
  assert BELOW_GOAL <= set(FUNCTIONALITIES)


@pytest.mark.slow
@pytest.mark.parametrize("functionality", [
    pytest.param(name, marks=pytest.mark.xfail(
        strict=True, reason="below the goal with the shipped classifier (issue 24)"))
    if name in BELOW_GOAL else name for name in FUNCTIONALITIES])
def test_pass_rate_per_functionality(result, functionality):
  row = result["functionalities"][functionality]
  failing = [f"{f['id']} scored {f['score']}" for f in row["failures"]]
  assert row["pass_rate"] >= functional_tests.GOAL, (
      f"{functionality} ({row['expected']}): {row['passed']}/{row['n']} pass; failing: "
      + ", ".join(failing))
