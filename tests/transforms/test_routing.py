"""Routing: the paper's bands by default, every original kept once."""

import pytest

from transforms.routing import RAW, REFUSE, REPHRASE, TO_TAG, Bands


def test_default_bands_follow_the_paper():
  bands = Bands()
  assert bands.branches(0) == [RAW]
  for score in (1, 2, 3):
    assert bands.branches(score) == [TO_TAG, REPHRASE]
  for score in (4, 5):
    assert bands.branches(score) == [TO_TAG, REFUSE]


def test_every_original_goes_to_exactly_one_of_raw_and_tagged():
  for tag_min in range(0, 7):
    bands = Bands(tag_min_score=tag_min)
    for score in range(6):
      kept = [b for b in bands.branches(score) if b in (RAW, TO_TAG)]
      assert kept == ([TO_TAG] if score >= tag_min else [RAW])


def test_invalid_bands_are_refused():
  with pytest.raises(ValueError):
    Bands(rephrase=(3, 1))
  with pytest.raises(ValueError):
    Bands(refuse=(4, 6))
