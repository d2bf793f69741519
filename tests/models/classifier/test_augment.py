"""Templated counter-examples: deterministic, distinct, labelled on the 0-5 scale per kind."""

from __future__ import annotations

import collections

from models.classifier import augment


def test_generation_is_deterministic_distinct_and_split_over_the_functionalities():
  examples = augment.generate(3000, seed=24)
  assert [e.text for e in examples] == [e.text for e in augment.generate(3000, seed=24)]
  assert [e.text for e in examples] != [e.text for e in augment.generate(3000, seed=25)]
  assert len({e.text for e in examples}) == len(examples) == 3000
  assert len({e.id for e in examples}) == 3000
  per_source = collections.Counter(e.source for e in examples)
  assert set(per_source) == {f"augment_{name}" for name in augment.FUNCTIONALITIES}
  assert set(per_source.values()) == {375}


def test_safe_kinds_score_0_and_hateful_kinds_are_unsafe():
  scores = collections.defaultdict(set)
  for example in augment.generate(800):
    scores[example.category].add(example.score)
  for name in ("negated_hate", "counter_speech", "identity_neutral", "safe_unsafe_words",
               "fiction_history"):
    assert scores[name] == {0}, name
  assert scores["hate"] == {3, 4, 5}
  assert scores["obfuscated_hate"] == {4} and scores["unsafe_requests"] == {4}


def test_the_same_groups_and_verbs_appear_on_both_sides():
  examples = augment.generate(1600)
  safe = " ".join(e.text for e in examples if e.score == 0)
  unsafe = " ".join(e.text for e in examples if e.score >= 3)
  for group, _ in augment.GROUPS[:12]:
    assert group in safe and group in unsafe, group
  for verb in ("kill", "shoot", "poison", "blow up"):
    assert f"to {verb}" in safe and f"to {verb}" in unsafe, verb
