"""Functional tests of the safety classifier: pass rate per functionality on hand-written cases.

    python benchmarks/functional_tests.py [--model DIR] [--cases FILE] [--json] [--failures]

The cases (`tests/models/classifier/functional/cases.jsonl`, described in the README beside it)
were written for this project the way HateCheck (Röttger et al., 2021) and XSTest (Röttger et
al., 2023) were built: a list of functionalities, each a kind of text a classifier must get
right (negated hate, counter-speech, reclaimed slurs, "kill a process", hate against a group
rarely seen in training, ...), and short hand-written cases for each, hateful and non-hateful
functionalities side by side, so that a model cannot pass by answering one way. No case comes
from HateCheck, XSTest or any other held-out evaluation source.

Each case's `expected` is one of:
- `safe`: the text must score 0 (it stays raw in the pipeline);
- `not_unsafe`: the text must score at most 2 (below the unsafe threshold of every evaluation
  here): non-hateful texts that legitimately carry material the score scale rates above 0, i.e.
  quoted or reported hate, reclaimed slurs, violence narrated in history or fiction, which the
  pipeline may rephrase (1-3) but must not treat as unsafe;
- `unsafe`: the text must score 3 or more.

Texts are scored as the pipeline's ScoreSafety scores them: the model folder's own tokenizer
(`chunking.Windower`), `OnnxSafetyModelHandler.run_inference` on the int8 ONNX graph, and
`chunking.document_score` (the maximum over windows). It prints, per functionality, the number
of cases, the pass rate, the share scored 0 and the histogram of scores; then the pass rate of
the non-hateful (`safe` and `not_unsafe`) and the hateful (`unsafe`) functionalities and
overall. The issue's goal is a pass rate of at least 0.85 in every functionality
(tests/models/classifier/functional/test_functional.py asserts it).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES_FILE = os.path.join(ROOT, "tests", "models", "classifier", "functional", "cases.jsonl")
# What each expectation requires of a text's 0-5 score.
EXPECTATIONS = {
    "safe": lambda score: score == 0,
    "not_unsafe": lambda score: score <= 2,
    "unsafe": lambda score: score >= 3,
}
GOAL = 0.85


def load_cases(path: str = CASES_FILE) -> list[dict]:
  """The cases of a JSONL file, in file order (id, functionality, expected, text)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def score_texts(texts: list[str], model: str | None = None, batch_size: int = 64) -> list[int]:
  """Each text's 0-5 score from the model folder `model` (default: the shipped classifier,
  built into the cache on first use), as the pipeline's ScoreSafety computes it."""
  from models.classifier import chunking
  from models.classifier.artifacts import model_or_default
  from models.classifier.handler import OnnxSafetyModelHandler
  handler = OnnxSafetyModelHandler(model_or_default(model))
  session = handler.load_model()
  windower = chunking.Windower(tokenizer_path=handler.tokenizer_folder())
  scores = []
  for start in range(0, len(texts), batch_size):
    per_text = windower.windows(texts[start:start + batch_size])
    for result in handler.run_inference(per_text, session):
      scores.append(chunking.document_score(result.inference)[0])
  return scores


def passes(case: dict, score: int) -> bool:
  return EXPECTATIONS[case["expected"]](score)


def pass_rates(cases: list[dict], scores: list[int]) -> dict:
  """Per functionality (in order of first appearance): its expectation, n, passed, pass_rate,
  share scored 0, the score histogram and the failing cases; then the same counts by side
  (non_hateful: safe and not_unsafe cases; hateful: unsafe cases) and overall."""
  groups: dict[str, list[tuple[dict, int]]] = collections.OrderedDict()
  for case, score in zip(cases, scores):
    groups.setdefault(case["functionality"], []).append((case, score))

  def summary(rows):
    passed = sum(passes(case, score) for case, score in rows)
    return {"n": len(rows), "passed": passed, "pass_rate": passed / len(rows) if rows else None,
            "scored_0": sum(score == 0 for _, score in rows) / len(rows) if rows else None}

  functionalities = {}
  for name, rows in groups.items():
    functionalities[name] = {
        "expected": "/".join(sorted({case["expected"] for case, _ in rows})),
        **summary(rows),
        "scores": {str(s): sum(score == s for _, score in rows) for s in range(6)},
        "failures": [{"id": case["id"], "score": score, "text": case["text"]}
                     for case, score in rows if not passes(case, score)],
    }
  everything = list(zip(cases, scores))
  return {
      "functionalities": functionalities,
      "non_hateful": summary([r for r in everything if r[0]["expected"] != "unsafe"]),
      "hateful": summary([r for r in everything if r[0]["expected"] == "unsafe"]),
      "overall": summary(everything),
      "functionalities_at_goal": sum(f["pass_rate"] >= GOAL for f in functionalities.values()),
      "goal": GOAL,
  }


def format_table(result: dict, failures: bool) -> str:
  lines = [f"{'functionality':<26}{'expected':>11}{'n':>5}{'pass_rate':>11}{'scored_0':>10}"
           "   scores 0/1/2/3/4/5"]
  for name, row in result["functionalities"].items():
    histogram = "/".join(str(row["scores"][str(s)]) for s in range(6))
    mark = "" if row["pass_rate"] >= GOAL else "  < goal"
    lines.append(f"{name:<26}{row['expected']:>11}{row['n']:>5}{row['pass_rate']:>11.3f}"
                 f"{row['scored_0']:>10.3f}   {histogram}{mark}")
  lines.append("")
  for name in ("non_hateful", "hateful", "overall"):
    row = result[name]
    lines.append(f"{name:<26}{'':>11}{row['n']:>5}{row['pass_rate']:>11.3f}"
                 f"{row['scored_0']:>10.3f}")
  lines.append(f"functionalities at the goal (pass rate >= {GOAL}): "
               f"{result['functionalities_at_goal']} of {len(result['functionalities'])}")
  if failures:
    lines += ["", "failing cases:"]
    for name, row in result["functionalities"].items():
      for failure in row["failures"]:
        lines.append(f"  {failure['id']:<28} expected {row['expected']:<10} "
                     f"score {failure['score']}  {failure['text']}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=None,
                      help="model folder or ONNX file with tokenizer.json beside it, as "
                           "--classifier_model takes it (default: the shipped int8 classifier)")
  parser.add_argument("--cases", default=CASES_FILE, help="JSONL of cases (default: %(default)s)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--failures", action="store_true", help="also list every failing case")
  args = parser.parse_args(argv)
  cases = load_cases(args.cases)
  result = pass_rates(cases, score_texts([case["text"] for case in cases], args.model))
  if args.json:
    if not args.failures:
      for row in result["functionalities"].values():
        row.pop("failures")
    print(json.dumps(result, indent=2, ensure_ascii=False))
  else:
    print(format_table(result, args.failures))


if __name__ == "__main__":
  main()
