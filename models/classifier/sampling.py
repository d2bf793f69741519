"""Source-balanced sampling of training windows, an epoch at a time, reproducible from its seed.

The labelled data is 41 sources of very different sizes (25k tweets, 71 portal pages). Trained
on the windows as they come, the adapters learn what the big sources' "unsafe" looks like; a
source of n windows is instead drawn with a share proportional to n**exponent (1: as in the
data, 0: every source alike), times a factor per source glob (`--source_weight`), and groups of
sources can be given a fixed share (the templated augmentation: a few percent, whatever its
size). Within a source every window is equally likely. An epoch is as many draws (with
replacement) as there are distinct windows.

Every epoch's draws and batches follow from (seed, epoch) alone, so a resumed run rebuilds the
epoch it stopped in and skips the batches already trained: the sampler's position is two
integers.
"""

from __future__ import annotations

import collections
import fnmatch
import typing

import numpy as np


def parse_factors(entries: typing.Sequence[str]) -> list[tuple[str, float]]:
  """`GLOB=VALUE` entries as (glob, value) pairs, in order."""
  pairs = []
  for entry in entries:
    pattern, _, value = entry.rpartition("=")
    if not pattern:
      raise ValueError(f"expected GLOB=VALUE, got {entry!r}")
    pairs.append((pattern, float(value)))
  return pairs


def _first_match(source: str, pairs, default=None):
  return next((value for pattern, value in pairs if fnmatch.fnmatchcase(source, pattern)), default)


def source_shares(sources: typing.Sequence[str], exponent: float,
                  factors: typing.Sequence[tuple[str, float]] = (),
                  fixed: typing.Sequence[tuple[str, float]] = ()) -> dict[str, float]:
  """The share of the draws each source gets, summing to 1.

  `sources` has one entry per window. A source of n windows weighs n**exponent times the value
  of the first `factors` glob it matches (1 when none). The sources matching a `fixed` glob
  together get that glob's share (split among them by the same weights); the others share the
  rest.
  """
  if not 0 <= exponent <= 1:
    raise ValueError(f"the sampling exponent must be in [0, 1], got {exponent}")
  sizes = collections.Counter(sources)
  weight = {s: n ** exponent * _first_match(s, factors, 1.0) for s, n in sizes.items()}
  groups: dict[str | None, list[str]] = collections.defaultdict(list)
  for source in sizes:
    groups[_first_match(source, [(p, p) for p, _ in fixed])].append(source)
  fixed_share = dict(fixed)
  rest = 1.0 - sum(fixed_share[g] for g in groups if g is not None)
  if rest < 0:
    raise ValueError(f"the fixed shares {dict(fixed)} add up to more than 1")
  shares = {}
  for group, members in groups.items():
    total = fixed_share[group] if group is not None else rest
    group_weight = sum(weight[s] for s in members)
    for source in members:
      shares[source] = total * weight[source] / group_weight
  norm = sum(shares.values())  # below 1 when every source is in a fixed group
  return {s: v / norm for s, v in shares.items()}


def window_probabilities(sources: typing.Sequence[str], shares: dict[str, float]) -> np.ndarray:
  """Per window: its source's share over the source's window count (sums to 1)."""
  sizes = collections.Counter(sources)
  probs = np.asarray([shares[s] / sizes[s] for s in sources], dtype=np.float64)
  return probs / probs.sum()


def epoch_draws(probabilities: np.ndarray, seed: int, epoch: int,
                size: int | None = None) -> np.ndarray:
  """The window indices drawn for one epoch (`size`, default as many as there are windows)."""
  rng = np.random.default_rng([seed, epoch])
  n = len(probabilities) if size is None else size
  return rng.choice(len(probabilities), size=n, replace=True, p=probabilities)
