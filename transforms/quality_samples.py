"""The quality reviews: one record per generation request, and the sample files of them.

`transforms.generation` emits a `QualityReview` of every request beside its outputs; the report
(beam_pipeline/report.py) tallies them, and `WriteQualitySamples` writes a few of each branch to
`samples/quality_<branch>.json` for the report card.
"""

from __future__ import annotations

import hashlib
import json
import typing

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from corpus.records import SAMPLES_DIR
from transforms.sinks import write_json_file

REVIEW_CHARS = 1200  # the source and output text a review keeps
QUALITY_SAMPLES = 3  # per branch, of passing and of rejected texts
QUALITY_SAMPLES_PREFIX = "quality_"  # samples/quality_<branch>.json


class QualityReview(typing.NamedTuple):
  """One generation request as the quality gate saw it: the branch and style, the source and
  the final text (cut to REVIEW_CHARS), the final reason ("" when it passed every check), and
  the JSON list of its attempts' reviews."""
  branch: str
  style: str
  id: str
  source_text: str
  output_text: str
  reason: str
  attempts: str = "[]"


beam.coders.registry.register_coder(QualityReview, beam.coders.RowCoder)


def _sample_entry(review: QualityReview):
  """((branch, passed or rejected), (hash of the id, sample)): the smallest hashes are kept."""
  verdict = "rejected" if review.reason else "passed"
  sample = {"id": review.id, "style": review.style, "reason": review.reason,
            "source": review.source_text, "output": review.output_text}
  digest = hashlib.sha256(review.id.encode("utf-8")).hexdigest()
  return (review.branch, verdict), (digest, json.dumps(sample, ensure_ascii=False, sort_keys=True))


def _write_quality_samples(branch_entries, output_dir: str) -> str:
  branch, groups = branch_entries
  samples = {verdict: [json.loads(s) for _, s in sorted(entries)] for verdict, entries in groups}
  return write_json_file(
      samples, FileSystems.join(output_dir, SAMPLES_DIR, f"{QUALITY_SAMPLES_PREFIX}{branch}.json"))


class WriteQualitySamples(beam.PTransform):
  """Writes `samples/quality_<branch>.json`: a few passing and a few rejected requests of each
  branch, source beside output (picked by a hash of the id, so every runner picks the same);
  outputs the written paths."""

  def __init__(self, output_dir: str, samples: int = QUALITY_SAMPLES):
    super().__init__()
    self._output_dir = output_dir
    self._samples = samples

  def expand(self, reviews):
    return (
        reviews
        | "SampleEntries" >> beam.Map(_sample_entry)
        | "Smallest" >> beam.combiners.Top.SmallestPerKey(self._samples)
        | "ByBranch" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        | "GroupBranch" >> beam.GroupByKey()
        | "Write" >> beam.Map(_write_quality_samples, self._output_dir))
