"""Which documents of the bundled sample the classifier scores outside the band they were
written for (the `# score N` / `# score N-M` comments of beam_pipeline/sample/make_sample.py).

    python benchmarks/sample_bands.py [--model FILE.onnx]
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "beam_pipeline", "sample"))

import make_sample  # noqa: E402

from models.classifier import chunking, export  # noqa: E402
from models.classifier.handler import make_session, run_windows  # noqa: E402


def bands() -> dict[str, tuple[int, int]]:
  """Each sample id's intended band, from the comment above it in make_sample.py."""
  with open(make_sample.__file__, encoding="utf-8") as f:
    source = f.read()
  result, band = {}, None
  for line in source.splitlines():
    found = re.search(r"# score (\d)(?:-(\d))?", line)
    if found:
      band = (int(found.group(1)), int(found.group(2) or found.group(1)))
    found = re.search(r'"id": "(sample-\d+)"', line)
    if found and band:
      result[found.group(1)] = band
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=None, help="ONNX file (default: the shipped int8 one)")
  args = parser.parse_args(argv)
  session = make_session(args.model or export.default_model_path())
  windower = chunking.Windower()
  intended, outside = bands(), 0
  for document in make_sample.DOCUMENTS:
    if document["id"] not in intended or not document["text"].strip():
      continue
    score = chunking.document_score(run_windows(session, windower.windows([document["text"]])[0]))[0]
    low, high = intended[document["id"]]
    miss = not low <= score <= high
    outside += miss
    print(f"{document['id']}  band {low}-{high}  score {score}{'  <- outside' if miss else ''}  "
          f"{document['text'][:80]!r}")
  print(f"{outside} of {sum(1 for d in make_sample.DOCUMENTS if d['id'] in intended and d['text'].strip())} "
        "texts outside their band")


if __name__ == "__main__":
  main()
