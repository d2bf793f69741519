"""The gate measured against texts a person judged: its precision and recall, per branch and check.

    python benchmarks/gate_precision.py [--json] [--examples 10] [pipeline options]
    cd /work/base && python /work/main/benchmarks/gate_precision.py   # another tree's gate

Every row of benchmarks/judged/judged.jsonl (RUBRIC.md there says how each was labelled) goes
through what the pipeline runs on a reply of its branch: the reply check
(`generation.check_reply`: empty, not a dialogue), the quality gate as
`beam_pipeline.pipeline.quality_gate` builds it from the options (its cuts, then every check of
the branch; `off_topic` embeds with the classifier's encoder) against the source as the prompt
quotes it, and the safety gate (the classifier's score of the written text, of the assistant's
turns for RefuseWeb, below `--gate_max_score`). A text passes when all three keep it.

Printed per branch: the confusion against the labels (TP: usable and passed, FP: unusable and
passed, FN: usable and rejected, TN: unusable and rejected), the precision (TP / passed: the
share of what the gate writes that is usable) and the recall (TP / usable: the share of usable
texts it keeps); per check: how many usable texts it rejects, how many unusable ones it
catches, and how many of those no other check catches; and the whole gate's figures at each
safety threshold. The issue's goal is precision >= 0.90 at recall >= 0.70.

The gate is imported from `--tree` (default: the current directory when it holds the pipeline,
else this script's repository), so the same judged set measures the gate of another commit:
`cd /work/base && python /work/main/benchmarks/gate_precision.py` measures abc53c1's. Every
pipeline option (`--quality_*`, `--gate_max_score`, `--classifier_model`, ...) is accepted and
means what it means in `beam_pipeline.run`. A generated row keeps the `--max_new_tokens` it was
generated with (the length checks read the budget); the others take the option's value.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OWN_ROOT = os.path.dirname(HERE)
JUDGED = os.path.join(HERE, "judged", "judged.jsonl")
GOAL_PRECISION, GOAL_RECALL = 0.90, 0.70
REPLY = "reply"  # the reply check (generation.check_reply) as a check of its own
SAFETY = "safety"  # the safety gate as a check of its own
BRANCHES = ("safeweb", "refuseweb", "moral_education")


def tree_of(requested: str | None) -> str:
  """The repository whose gate is measured: `requested`, else the current directory when it
  holds the pipeline, else this script's own repository."""
  if requested:
    return os.path.abspath(requested)
  if os.path.isfile(os.path.join(os.getcwd(), "beam_pipeline", "pipeline.py")):
    return os.getcwd()
  return OWN_ROOT


def load_build():
  """benchmarks/judged/build.py beside this script (it reads the references back)."""
  spec = importlib.util.spec_from_file_location("judged_build",
                                                os.path.join(HERE, "judged", "build.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Scorer:
  """The classifier's document score, as the pipeline's SafetyGate computes it."""

  def __init__(self, model_path, window: int, overlap: int):
    from models.classifier import chunking
    from models.classifier.handler import OnnxSafetyModelHandler, make_session
    files = OnnxSafetyModelHandler(model_path).model_files()
    self._session = make_session(files.onnx)
    self._windower = chunking.Windower(window, overlap, tokenizer_path=files.tokenizer_folder)

  def __call__(self, text: str) -> int:
    from models.classifier.chunking import document_score
    from models.classifier.handler import run_windows
    return document_score(run_windows(self._session, self._windower.windows([text])[0]))[0]


def settled_model(options):
  """The classifier model location, settled as the tree's launch settles it."""
  from models.classifier import artifacts
  if hasattr(artifacts, "settle_model"):
    return artifacts.settle_model(options.classifier_model, window=options.window,
                                  overlap=options.overlap)
  return artifacts.model_or_default(options.classifier_model)


def judge_rows(rows, options, build):
  """One verdict per judged row (the reply check, the quality review, the safety score), and
  the checks each branch's gate runs, in its order."""
  from beam_pipeline import pipeline as graph
  from corpus.records import Document
  from models.generators.prompts import KIND_REFUSEWEB, KIND_REPHRASE, build_prompt
  from transforms.dialogue import assistant_turns, parse_dialogue, render_dialogue
  from transforms.generation import _without_quote_markers, check_reply
  from transforms.quality import quoted_source

  options.classifier_model = settled_model(options)
  scorer = Scorer(options.classifier_model, options.window, options.overlap)
  default_budget = options.max_new_tokens
  gates = {}
  data = build.data_rows()
  verdicts, branch_checks, started = [], {}, time.monotonic()
  for number, row in enumerate(rows, 1):
    source, text = build.resolve(row, data)
    kind = row["kind"]
    budget = row.get("max_new_tokens") or default_budget
    if (kind, budget) not in gates:
      options.max_new_tokens = budget
      gates[(kind, budget)] = graph.quality_gate(kind, options)
      options.max_new_tokens = default_budget
      # a budget's gate may run checks another's does not (the rows of a branch come with
      # their own budgets): the branch lists every check any of its gates runs
      listed = branch_checks.setdefault(row["branch"], [])
      listed.extend(c for c in gates[(kind, budget)].checks if c not in listed)
    style = row["style"] if kind == KIND_REPHRASE else None
    quoted = quoted_source(build_prompt(kind, source, style))
    reply_error = check_reply(kind, text)
    review = gates[(kind, budget)].review(quoted, text, row.get("finish_reason", ""))
    written = _without_quote_markers(review.text)
    if kind == KIND_REFUSEWEB:
      speakers = row["speakers"]
      written = render_dialogue(parse_dialogue(written), tuple(speakers.split("/")))
      scored = assistant_turns(Document(id=row["id"], text=written, style=speakers))
    else:
      scored = written
    score = scorer(scored)
    failed = list(review.failed) + ([REPLY] if reply_error else [])
    listed = branch_checks[row["branch"]]
    listed.extend(c for c in review.failed if c not in listed)
    verdicts.append({
        "id": row["id"], "branch": row["branch"], "origin": row["origin"],
        "usable": bool(row["usable"]), "label": row["reason"],
        "reply_error": reply_error or "", "failed": failed,
        # the quality gate decides (with --quality=off it reports and rejects nothing)
        "quality_pass": not reply_error and not review.reason, "cuts": list(review.cuts),
        "similarity": review.similarity, "score": score})
    if number % 50 == 0:
      print(f"  {number}/{len(rows)} judged texts through the gate, "
            f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
  return verdicts, branch_checks


def confusion(verdicts, max_score: int) -> dict:
  """TP/FP/FN/TN, precision and recall of the whole gate with a safety threshold."""
  counts = collections.Counter()
  for v in verdicts:
    passed = v["quality_pass"] and v["score"] < max_score
    counts[("T" if passed == v["usable"] else "F") + ("P" if passed else "N")] += 1
  tp, fp, fn, tn = (counts[k] for k in ("TP", "FP", "FN", "TN"))
  return {"n": len(verdicts), "usable": tp + fn, "passed": tp + fp, "TP": tp, "FP": fp,
          "FN": fn, "TN": tn,
          "precision": round(tp / (tp + fp), 4) if tp + fp else None,
          "recall": round(tp / (tp + fn), 4) if tp + fn else None}


def check_figures(verdicts, checks, max_score: int) -> dict:
  """Per check: the usable texts it rejects, the unusable ones it catches, and those it alone
  catches (no other check, nor the safety gate, rejects them)."""
  table = {}
  for check in checks:
    entry = {"rejects_usable": 0, "catches_unusable": 0, "only_catch": 0}
    for v in verdicts:
      failing = set(v["failed"]) | ({SAFETY} if v["score"] >= max_score else set())
      if check not in failing:
        continue
      if v["usable"]:
        entry["rejects_usable"] += 1
      else:
        entry["catches_unusable"] += 1
        entry["only_catch"] += failing == {check}
    table[check] = entry
  return table


def summarise(verdicts, max_score: int, branch_checks: dict) -> dict:
  """The figures of each branch and of all texts together."""
  result = {}
  every = [c for checks in branch_checks.values() for c in checks]
  for branch in BRANCHES + ("all",):
    chosen = [v for v in verdicts if branch in ("all", v["branch"])]
    if not chosen:
      continue
    checks = branch_checks.get(branch, list(dict.fromkeys(every)))
    checks = [REPLY] + checks + [SAFETY]
    origins = collections.defaultdict(list)
    for v in chosen:
      origins[v["origin"]].append(v)
    result[branch] = {
        "gate": confusion(chosen, max_score),
        "goal_met": None,
        "checks": check_figures(chosen, checks, max_score),
        "safety_threshold": {t: confusion(chosen, t) for t in range(1, 7)},
        "origins": {o: confusion(vs, max_score) for o, vs in sorted(origins.items())},
    }
    gate = result[branch]["gate"]
    result[branch]["goal_met"] = bool(gate["precision"] is not None and gate["recall"] is not None
                                      and gate["precision"] >= GOAL_PRECISION
                                      and gate["recall"] >= GOAL_RECALL)
  return result


def markdown(summary: dict, verdicts, max_score: int, examples: int) -> str:
  pct = lambda v: "-" if v is None else f"{v:.2f}"
  lines = [f"Safety gate: score < {max_score}. Goal: precision >= {GOAL_PRECISION} at recall >= "
           f"{GOAL_RECALL}.", "",
           "| branch | n | usable | passed | TP | FP | FN | TN | precision | recall | goal |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for branch, entry in summary.items():
    g = entry["gate"]
    lines.append(f"| {branch} | {g['n']} | {g['usable']} | {g['passed']} | {g['TP']} | "
                 f"{g['FP']} | {g['FN']} | {g['TN']} | {pct(g['precision'])} | "
                 f"{pct(g['recall'])} | {'met' if entry['goal_met'] else 'not met'} |")
  for branch, entry in summary.items():
    if branch == "all":
      continue
    lines += ["", f"**{branch}**: per check (a text may fail several)", "",
              "| check | rejects usable | catches unusable | only it catches |",
              "|---|---|---|---|"]
    for check, c in entry["checks"].items():
      lines.append(f"| {check} | {c['rejects_usable']} | {c['catches_unusable']} | "
                   f"{c['only_catch']} |")
    lines += ["", "| origin | n | usable | passed | TP | FP | precision | recall |",
              "|---|---|---|---|---|---|---|---|"]
    for origin, g in entry["origins"].items():
      lines.append(f"| {origin} | {g['n']} | {g['usable']} | {g['passed']} | {g['TP']} | "
                   f"{g['FP']} | {pct(g['precision'])} | {pct(g['recall'])} |")
    lines += ["", "| safety gate: score < | passed | precision | recall |", "|---|---|---|---|"]
    for threshold, g in entry["safety_threshold"].items():
      lines.append(f"| {threshold} | {g['passed']} | {pct(g['precision'])} | "
                   f"{pct(g['recall'])} |")
    if examples:
      missed = [v for v in verdicts if v["branch"] == branch and not v["usable"]
                and v["quality_pass"] and v["score"] < max_score]
      lines += ["", f"Unusable texts it passes ({len(missed)}; first {examples}, by label):"]
      for v in sorted(missed, key=lambda v: (v["label"], v["id"]))[:examples]:
        lines.append(f"- `{v['id']}`: {v['label']} (score {v['score']})")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--judged", default=JUDGED, help="the judged set (JSONL)")
  parser.add_argument("--tree", default=None,
                      help="the repository whose gate is measured (default: the current "
                           "directory when it holds the pipeline, else this script's)")
  parser.add_argument("--json", action="store_true", help="print the figures as JSON")
  parser.add_argument("--examples", type=int, default=0,
                      help="list this many unusable texts each branch's gate passes")
  parser.add_argument("--verdicts", default=None,
                      help="also write every row's verdict (checks failed, score) as JSONL")
  args, pipeline_args = parser.parse_known_args(argv)
  tree = tree_of(args.tree)
  sys.path.insert(0, tree)
  # pylint: disable=import-outside-toplevel
  from beam_pipeline.options import SafetyPretrainingOptions
  options = SafetyPretrainingOptions(pipeline_args)
  build = load_build()
  with open(args.judged, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  unlabelled = [row["id"] for row in rows if row.get("usable") is None]
  if unlabelled:
    raise SystemExit(f"{len(unlabelled)} rows of {args.judged} have no label (first: "
                     f"{unlabelled[0]}): label them before measuring the gate")
  from beam_pipeline import pipeline as graph
  print(f"gate of {os.path.dirname(os.path.dirname(graph.__file__))}, {len(rows)} judged texts",
        file=sys.stderr, flush=True)
  max_score = options.gate_max_score
  verdicts, branch_checks = judge_rows(rows, options, build)
  summary = summarise(verdicts, max_score, branch_checks)
  if args.verdicts:
    with open(args.verdicts, "w", encoding="utf-8") as f:
      for verdict in verdicts:
        f.write(json.dumps(verdict, ensure_ascii=False) + "\n")
  if args.json:
    print(json.dumps({"tree": tree, "judged": args.judged, "gate_max_score": max_score,
                      "summary": summary}, indent=2))
  else:
    print(markdown(summary, verdicts, max_score, args.examples))


if __name__ == "__main__":
  main()
