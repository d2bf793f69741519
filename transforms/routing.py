"""Route: score bands -> branches, with the paper's bands as defaults.

Every scored document is kept once as an original: in `raw` below the tag threshold, in
`to_tag` at or above it (tagged later, so unsafe originals stay in the corpus, marked).
Independently, documents in the rephrase band go to `rephrase` and those in the refusal band to
`refuse`, for generation.
"""

from __future__ import annotations

import apache_beam as beam

from corpus.records import RAW, STAGE_ROUTE, Document
from transforms.deadletter import count

# The outputs of Route: RAW (the branch of that name) and these three.
TO_TAG = "to_tag"
REPHRASE = "rephrase"
REFUSE = "refuse"


class Bands:
  """Score bands (inclusive) of the routing decision."""

  def __init__(self, rephrase=(1, 3), refuse=(4, 5), tag_min_score: int = 1):
    for name, (low, high) in (("rephrase", rephrase), ("refuse", refuse)):
      if not 0 <= low <= high <= 5:
        raise ValueError(f"{name} band must satisfy 0 <= low <= high <= 5, got {low}-{high}")
    if not 0 <= tag_min_score <= 6:
      raise ValueError(f"tag_min_score must be 0-6 (6: never tag), got {tag_min_score}")
    self.rephrase = tuple(rephrase)
    self.refuse = tuple(refuse)
    self.tag_min_score = tag_min_score

  def branches(self, score: int) -> list[str]:
    """The outputs that a document with this score goes to."""
    outputs = [TO_TAG if score >= self.tag_min_score else RAW]
    if self.rephrase[0] <= score <= self.rephrase[1]:
      outputs.append(REPHRASE)
    if self.refuse[0] <= score <= self.refuse[1]:
      outputs.append(REFUSE)
    return outputs


class _RouteDoFn(beam.DoFn):

  def __init__(self, bands: Bands):
    self._bands = bands

  def process(self, document: Document):
    for branch in self._bands.branches(document.safety_score):
      count(STAGE_ROUTE, branch)
      yield beam.pvalue.TaggedOutput(branch, document)


class Route(beam.PTransform):
  """Splits scored Documents into RAW, TO_TAG, REPHRASE and REFUSE outputs."""

  def __init__(self, bands: Bands):
    super().__init__()
    self._bands = bands

  def expand(self, documents):
    outputs = documents | beam.ParDo(_RouteDoFn(self._bands)).with_outputs(
        RAW, TO_TAG, REPHRASE, REFUSE)
    return {name: outputs[name] for name in (RAW, TO_TAG, REPHRASE, REFUSE)}
