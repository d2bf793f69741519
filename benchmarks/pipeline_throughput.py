"""Pipeline throughput: the scoring-only pipeline vs a bare ONNX Runtime session, same documents.

    python benchmarks/pipeline_throughput.py [--docs 4000] [--chars 1500] [--json]

The baseline is what a user would write without Beam: tokenize into windows, run the shipped
int8 classifier in length-sorted batches, take the maximum per document. The pipeline is
`beam_pipeline.run --generation=off` on DirectRunner over the same documents as JSONL: read,
validate, score through RunInference, route, tag, write TFRecords and the report. Both are
timed wall-clock, start-up included, in the same process; the ratio is printed (target: the
pipeline keeps at least 80% of the bare session's documents/s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.classifier_throughput import real_documents  # noqa: E402
from models.classifier import chunking, data, export  # noqa: E402
from models.classifier.handler import make_session, run_windows  # noqa: E402


def bare_session(texts, model_path: str, batch_docs: int = 64) -> float:
  started = time.perf_counter()
  session = make_session(model_path)
  windower = chunking.Windower()
  for start in range(0, len(texts), batch_docs):
    per_text = windower.windows(texts[start:start + batch_docs])
    probs = run_windows(session, [w for ws in per_text for w in ws])
    offset = 0
    for windows in per_text:
      chunking.document_score(probs[offset:offset + len(windows)])
      offset += len(windows)
  return time.perf_counter() - started


def pipeline(input_path: str, output: str, model_path: str, extra) -> float:
  from beam_pipeline import run as entry
  started = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # the run's summary; stdout is the result
    report = entry.run(["--runner=DirectRunner", f"--input={input_path}", f"--output={output}",
                       "--generation=off", f"--classifier_model={model_path}", *extra])
  seconds = time.perf_counter() - started
  assert report["checks_hold"], report["checks"]
  return seconds


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--labels", default=data.DEFAULT_LABELS, help="labelled JSONL")
  parser.add_argument("--docs", type=int, default=4000, help="documents scored")
  parser.add_argument("--chars", type=int, default=1500, help="characters per document")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args, pipeline_args = parser.parse_known_args(argv)

  texts = real_documents(args.labels, args.docs, args.chars)
  model_path = export.ensure_exported()["int8"]
  work = tempfile.mkdtemp(prefix="pipeline-throughput-")
  try:
    input_path = os.path.join(work, "docs.jsonl")
    with open(input_path, "w") as f:
      for index, text in enumerate(texts):
        f.write(json.dumps({"id": f"bench-{index}", "text": text}) + "\n")
    bare = bare_session(texts, model_path)
    beam_seconds = pipeline(input_path, os.path.join(work, "out"), model_path, pipeline_args)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  result = {
      "documents": len(texts),
      "bare_session_docs_per_s": len(texts) / bare,
      "pipeline_docs_per_s": len(texts) / beam_seconds,
      "ratio_pipeline_vs_bare": bare / beam_seconds,
  }
  if args.json:
    print(json.dumps(result, indent=2, sort_keys=True))
  else:
    print(f"{len(texts)} documents: bare session {result['bare_session_docs_per_s']:.1f} docs/s, "
          f"pipeline {result['pipeline_docs_per_s']:.1f} docs/s, "
          f"ratio {result['ratio_pipeline_vs_bare']:.2f} (target >= 0.80)")


if __name__ == "__main__":
  main()
