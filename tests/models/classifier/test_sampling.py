"""Source-balanced sampling of training windows: shares, fixed groups, reproducible epochs."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from models.classifier import sampling

SOURCES = ["big"] * 900 + ["small"] * 100 + ["augment_a"] * 30 + ["augment_b"] * 10


def test_the_exponent_moves_shares_from_as_in_the_data_to_every_source_alike():
  plain = ["big"] * 900 + ["small"] * 100
  assert sampling.source_shares(plain, 1.0) == pytest.approx({"big": 0.9, "small": 0.1})
  assert sampling.source_shares(plain, 0.0) == pytest.approx({"big": 0.5, "small": 0.5})
  half = sampling.source_shares(plain, 0.5)
  assert half["big"] == pytest.approx(30 / 40) and half["small"] == pytest.approx(10 / 40)
  with pytest.raises(ValueError):
    sampling.source_shares(plain, 1.5)


def test_a_fixed_group_gets_its_share_whatever_its_size_and_factors_multiply():
  shares = sampling.source_shares(SOURCES, 1.0, fixed=[("augment_*", 0.03)])
  assert shares["augment_a"] + shares["augment_b"] == pytest.approx(0.03)
  assert shares["augment_a"] == pytest.approx(3 * shares["augment_b"])  # split by size
  assert shares["big"] == pytest.approx(0.97 * 0.9) and sum(shares.values()) == pytest.approx(1)
  boosted = sampling.source_shares(SOURCES, 1.0, sampling.parse_factors(["sm*=9"]),
                                   fixed=[("augment_*", 0.03)])
  assert boosted["small"] == pytest.approx(boosted["big"])  # 100 * 9 against 900
  with pytest.raises(ValueError):
    sampling.parse_factors(["small"])
  with pytest.raises(ValueError):
    sampling.source_shares(SOURCES, 1.0, fixed=[("augment_*", 0.7), ("b*", 0.7)])


def test_an_epoch_draws_as_many_windows_as_there_are_in_the_shares_asked():
  shares = sampling.source_shares(SOURCES, 0.5, fixed=[("augment_*", 0.05)])
  probs = sampling.window_probabilities(SOURCES, shares)
  assert probs.sum() == pytest.approx(1.0)
  assert len(set(probs[:900])) == 1  # within a source every window is equally likely
  draws = np.concatenate([sampling.epoch_draws(probs, 7, epoch) for epoch in range(20)])
  assert len(draws) == 20 * len(SOURCES)
  counts = collections.Counter(SOURCES[i] for i in draws)
  for source, share in shares.items():
    assert counts[source] / len(draws) == pytest.approx(share, abs=0.01)
  small_windows = {int(i) for i in draws if SOURCES[i] == "small"}
  assert len(small_windows) > 90  # the draws cover a source's windows, not a few of them


def test_epochs_follow_from_the_seed_alone():
  probs = sampling.window_probabilities(SOURCES, sampling.source_shares(SOURCES, 0.5))
  first = sampling.epoch_draws(probs, 7, 0)
  assert np.array_equal(first, sampling.epoch_draws(probs, 7, 0))
  assert not np.array_equal(first, sampling.epoch_draws(probs, 7, 1))
  assert not np.array_equal(first, sampling.epoch_draws(probs, 8, 0))
