"""Pipeline throughput and memory as the input grows: docs/s and peak resident memory per process.

    python benchmarks/pipeline_throughput.py [--runner flink|direct] [--docs 1000]
        [--scales 1,4,16] [--json] [pipeline options...]

The pipeline (`--generation=off`: read, validate, score with the shipped int8 classifier through
RunInference, route, tag, write TFRecords, commit) runs at each scale on `--docs` x scale
generated documents (tests/engines/generated_corpus.py: the bundled sample's sentences, shuffled,
150-1,500 characters), with `--num_shards=0` (shards sized from the data), through the engine
tests' harness: by default on a standalone Flink cluster (two task slots, SDK workers from an
EXTERNAL pool) in a private network namespace, so the same code runs as at scale. Every process
the run starts is watched for its peak resident memory (the kernel's VmHWM), grouped by role
(launcher, SDK worker, Flink's JVMs, ...).

The baseline, in this process: a bare ONNX Runtime session over the 1x documents (windows in
batches of 64 documents, the maximum per document), what a user would write without Beam. The
output gives, per scale, docs/s of the pipeline alone (the cluster's start excluded), its ratio
to the bare session and to the 1x run, and each role's peak memory and its ratio to the 1x run:
a pipeline whose memory grows with its input shows ratios above 1 at 16x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_TESTS = os.path.join(REPO, "tests", "engines")
sys.path[:0] = [REPO, ENGINE_TESTS]

import engine_harness as harness  # noqa: E402  pylint: disable=wrong-import-position
import generated_corpus  # noqa: E402  pylint: disable=wrong-import-position
from models.classifier import chunking, export  # noqa: E402  pylint: disable=wrong-import-position
from models.classifier.handler import make_session, run_windows  # noqa: E402  pylint: disable=wrong-import-position

# Process roles, by a piece of their command line (the first that matches).
ROLES = (
    ("sdk_worker_main", "sdk worker"),
    ("SdkHarness", "sdk worker"),  # what the EXTERNAL worker pool starts: python -c ...
    ("worker_pool_main", "sdk worker pool"),
    ("StandaloneSessionClusterEntrypoint", "flink jobmanager"),
    ("TaskManagerRunner", "flink taskmanager"),
    ("job-server.jar", "beam job server"),
    ("beam_pipeline.run", "launcher"),
    ("engine_harness.py", "harness"),
)


def bare_session(texts, model_path: str, batch_docs: int = 64) -> float:
  """Seconds a bare ONNX Runtime session takes to score `texts`, start-up included."""
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


def _descendants(root: int) -> list[int]:
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
          parent = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      children.setdefault(parent, []).append(int(entry))
  found, todo = [], [root]
  while todo:
    pid = todo.pop()
    found.append(pid)
    todo.extend(children.get(pid, ()))
  return found


def _role(pid: int) -> str | None:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      command = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
  except OSError:
    return None
  return next((role for piece, role in ROLES if piece in command), None)


def _peak_rss_mib(pid: int) -> float | None:
  try:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


class PeakMemory:
  """Watches every process under `root` twice a second: each one's peak resident memory."""

  def __init__(self, root: int):
    self._root = root
    self._peaks: dict[int, tuple[str, float]] = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()

  def _watch(self) -> None:
    while not self._stop.is_set():
      for pid in _descendants(self._root):
        role, peak = _role(pid), _peak_rss_mib(pid)
        if role and peak is not None:
          self._peaks[pid] = (role, max(peak, self._peaks.get(pid, (role, 0.0))[1]))
      self._stop.wait(0.5)

  def by_role(self) -> dict[str, dict]:
    """{role: {"processes": n, "peak_rss_mib": the largest process's peak}}."""
    self._stop.set()
    self._thread.join()
    roles: dict[str, dict] = {}
    for role, peak in self._peaks.values():
      entry = roles.setdefault(role, {"processes": 0, "peak_rss_mib": 0.0})
      entry["processes"] += 1
      entry["peak_rss_mib"] = round(max(entry["peak_rss_mib"], peak), 1)
    return roles


def pipeline_run(runner: str, documents: int, work: str, model_path: str, extra) -> dict:
  """One run of the pipeline on `documents` generated documents; its time and memory."""
  pattern = generated_corpus.write(os.path.join(work, f"input-{documents}"), documents, files=8)
  output = os.path.join(work, f"out-{documents}")
  command = harness.private_network_command([
      sys.executable, os.path.join(ENGINE_TESTS, "engine_harness.py"), runner, output,
      f"--input={pattern}", "--generation=off", "--num_shards=0",
      f"--classifier_model={model_path}", *extra])
  started = time.monotonic()
  with subprocess.Popen(command, cwd=REPO, env=harness.child_environment(),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
    memory = PeakMemory(process.pid)
    log, _ = process.communicate()
  wall = time.monotonic() - started
  roles = memory.by_role()
  if process.returncode != 0:
    raise SystemExit(f"{runner} run of {documents} documents exited with {process.returncode}:\n"
                     f"{log.decode('utf-8', 'replace')[-6000:]}")
  with open(os.path.join(output, "report.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert report["checks_hold"], report["checks"]
  timing = os.path.join(output + ".logs", f"{runner}.seconds")
  seconds = wall
  if os.path.exists(timing):  # the pipeline alone, without the cluster's start
    with open(timing, encoding="utf-8") as f:
      seconds = float(f.read())
  shards = len([n for n in os.listdir(os.path.join(output, "raw")) if n.startswith("part-")])
  shutil.rmtree(os.path.dirname(pattern), ignore_errors=True)
  shutil.rmtree(output, ignore_errors=True)
  return {"documents": documents, "seconds": round(seconds, 2), "wall_seconds": round(wall, 2),
          "docs_per_s": round(documents / seconds, 2), "raw_shards": shards, "memory": roles}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runner", choices=("flink", "direct"), default="flink",
                      help="the engine harness's runner (direct: DirectRunner, one process)")
  parser.add_argument("--docs", type=int, default=1000, help="documents at scale 1")
  parser.add_argument("--scales", default="1,4,16", help="input sizes, as multiples of --docs")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args, pipeline_args = parser.parse_known_args(argv)
  scales = [int(s) for s in args.scales.split(",")]

  model_path = export.ensure_exported()["int8"]
  texts = [d["text"] for d in generated_corpus.documents(args.docs)]
  bare_docs_per_s = len(texts) / bare_session(texts, model_path)
  work = tempfile.mkdtemp(prefix="pipeline-throughput-")
  try:
    runs = [pipeline_run(args.runner, args.docs * scale, work, model_path, pipeline_args)
            for scale in scales]
  finally:
    shutil.rmtree(work, ignore_errors=True)
  first = runs[0]
  for scale, run in zip(scales, runs):
    run["scale"] = scale
    run["ratio_vs_bare_session"] = round(run["docs_per_s"] / bare_docs_per_s, 3)
    run["docs_per_s_ratio_vs_first"] = round(run["docs_per_s"] / first["docs_per_s"], 3)
    for role, entry in run["memory"].items():
      base = first["memory"].get(role, {}).get("peak_rss_mib")
      entry["ratio_vs_first"] = round(entry["peak_rss_mib"] / base, 3) if base else None
  result = {"runner": args.runner, "bare_session_docs_per_s": round(bare_docs_per_s, 2),
            "runs": runs}
  if args.json:
    print(json.dumps(result, indent=2, sort_keys=True))
    return
  print(f"baseline: bare ONNX Runtime session, {len(texts)} documents: "
        f"{bare_docs_per_s:.1f} docs/s")
  for run in runs:
    print(f"{run['scale']:>3}x {run['documents']:>7} documents on {args.runner}: "
          f"{run['docs_per_s']:.1f} docs/s (pipeline {run['seconds']:.1f}s, wall "
          f"{run['wall_seconds']:.1f}s, {run['raw_shards']} raw shards), "
          f"{run['ratio_vs_bare_session']:.2f}x the bare session, "
          f"{run['docs_per_s_ratio_vs_first']:.2f}x the {scales[0]}x run")
    for role, entry in sorted(run["memory"].items()):
      print(f"       {role:<18} {entry['processes']:>2} processes, peak "
            f"{entry['peak_rss_mib']:7.1f} MiB ({entry['ratio_vs_first']}x the first run)")


if __name__ == "__main__":
  main()
