"""Measures the safety classifier on labelled JSONL.

    python -m models.classifier.evaluate --labels FILE.jsonl [--model PATH] [--split dev]
        [--sources a,b] [--json]

Reads any JSONL with `text` and `score_0_5` (optional `source`, `id`), scores every text as the
pipeline does (windows, maximum over windows) and prints, overall and per source:
- macro_f1 over the 6 classes;
- recall_at_1 / precision_at_1 and recall_at_3 / precision_at_3: a text counts as flagged at
  threshold t when its predicted score >= t; recall is over texts whose label is >= t,
  precision over flagged texts (the paper's Table 4);
- auroc / auprc for unsafe := label >= 3, ranked by the highest window probability of >= 3;
- fpr_score0: the share of score-0 texts predicted >= 1, i.e. safe texts the pipeline would
  rewrite or tag.
A figure that a group cannot define (no positives, say) is null.

Beside those keys, `--json` always carries:
- by_threshold: for each threshold t = 1..5, precision and recall of "predicted >= t" against
  "label >= t", and the share of texts flagged (the public audit of the paper's classifier
  found precision 2.7% at score 5: this is where to see ours);
- calibration: texts binned by P(score >= 3) of their deciding window, each bin's mean
  predicted probability against its observed share of unsafe labels, and the expected
  calibration error (the bin-size-weighted mean gap);
- by_kind: for each kind of unsafe content (hate, self_harm, sexual, harmful_instructions,
  violence, and toxicity: insults and profanity; from each row's `category`), the number of unsafe (>= 3) texts and the
  share of them predicted >= 3 and >= 4;
- confusion: the 0-5 confusion matrix, `counts[label][predicted]`;
- by_band: for each predicted score 0..5 and for the band 4-5, how many texts are predicted
  in it and how often their label is in it too (`precision`: how often a predicted 4-5 is
  really 4-5), or at least its lowest score (`precision_at_least`);
- long_pages: the two false-positive figures of long safe text (MODEL_CARD.md): `long_benign`,
  the score-0 texts of the long safe sources (LONG_BENIGN_SOURCES), and their share predicted
  >= 1 (`fpr_score0`, FPR@1); `raw_pages`, every text of the raw web page sources (`rawpage_*`),
  and the shares predicted >= 1 and >= 4 (`flagged_at_1`, `flagged_at_4`).
`--by_threshold`, `--calibration`, `--by_kind` and `--confusion` print these as tables.

Scoring is the pipeline's (`chunking.SENTENCE_RESCORING`); `--sentence_rescoring` measures
another setting of the sentence re-scoring of uncertain windows (`chunking.SentenceRescoring`).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys

import numpy as np

from models.classifier import chunking, data
from models.classifier.handler import make_session, run_windows


def score_texts(texts, model_path: str, window: int, overlap: int, batch_texts: int = 256,
                max_batch_tokens: int = 0,
                sentence_rescoring: chunking.SentenceRescoring | None = (
                    chunking.SENTENCE_RESCORING)):
  """(predicted scores, P(score >= 3) of the most unsafe window) for each text.

  `model_path` is a model location as the pipeline takes it (folder, or .onnx file with its
  tokenizer.json beside it; local or gs://), windowed with the model's own tokenizer, so a
  checkpoint exported with another vocabulary is measured as the pipeline scores with it."""
  from models.classifier import artifacts
  files = artifacts.local_files(model_path)
  session = make_session(files.onnx, sentence_rescoring=sentence_rescoring)
  windower = chunking.Windower(window, overlap, tokenizer_path=files.tokenizer_folder)
  scores, unsafe_probs = [], []
  for start in range(0, len(texts), batch_texts):
    per_text = windower.windows(texts[start:start + batch_texts])
    flat = [w for windows in per_text for w in windows]
    probs = run_windows(session, flat, max_batch_tokens)
    offset = 0
    for windows in per_text:
      text_probs = probs[offset:offset + len(windows)]
      offset += len(windows)
      scores.append(chunking.document_score(text_probs)[0])
      unsafe_probs.append(float(text_probs[:, 3:].sum(axis=1).max()))
  return np.asarray(scores), np.asarray(unsafe_probs)


def _ratio(numerator: int, denominator: int):
  return None if denominator == 0 else numerator / denominator


def figures(labels: np.ndarray, predicted: np.ndarray, unsafe_prob: np.ndarray) -> dict:
  """The evaluation figures for one group of texts."""
  from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
  result = {"n": int(len(labels)), "n_score0": int((labels == 0).sum())}
  result["macro_f1"] = float(f1_score(labels, predicted, labels=list(range(6)), average="macro",
                                      zero_division=0))
  for t in (1, 3):
    positive, flagged = labels >= t, predicted >= t
    result[f"recall_at_{t}"] = _ratio(int((positive & flagged).sum()), int(positive.sum()))
    result[f"precision_at_{t}"] = _ratio(int((positive & flagged).sum()), int(flagged.sum()))
  unsafe = labels >= 3
  both_classes = 0 < unsafe.sum() < len(unsafe)
  result["auroc"] = float(roc_auc_score(unsafe, unsafe_prob)) if both_classes else None
  result["auprc"] = float(average_precision_score(unsafe, unsafe_prob)) if both_classes else None
  safe = labels == 0
  result["fpr_score0"] = _ratio(int((safe & (predicted >= 1)).sum()), int(safe.sum()))
  return result


# Kinds of unsafe content, by the label families (`category`) of the labelled data's sources.
KINDS = {  # the first pattern that matches decides
    "hate": re.compile(r"hate|stereotype|harassment|discriminat|representational"),
    "self_harm": re.compile(r"self_harm|suicide|eating_disorder"),
    "sexual": re.compile(r"(^|[^i])sexual|lewd|erotic|porn"),
    "harmful_instructions": re.compile(
        r"harmful_(request|instruction)|malicious|illegal|cybercrime|chemical|exploit|crime|"
        r"unsafe_advice|model_response|harm_privacy|misinformation|disinformation|"
        r"information_integrity"),
    "violence": re.compile(r"violen|weapon|threat"),
    "toxicity": re.compile(r"toxic|offensive|web_sentence"),
}


def kind_of(category: str) -> str | None:
  """The kind of unsafe content a category names (the first that matches), or None."""
  category = category.lower()
  return next((kind for kind, pattern in KINDS.items() if pattern.search(category)), None)


def by_threshold(labels: np.ndarray, predicted: np.ndarray) -> dict:
  """Precision, recall and flagged share of `predicted >= t` for t = 1..5."""
  rows = {}
  for t in range(1, 6):
    positive, flagged = labels >= t, predicted >= t
    hits = int((positive & flagged).sum())
    rows[str(t)] = {"precision": _ratio(hits, int(flagged.sum())),
                    "recall": _ratio(hits, int(positive.sum())),
                    "flagged": _ratio(int(flagged.sum()), len(labels)),
                    "n_positive": int(positive.sum()), "n_flagged": int(flagged.sum())}
  return rows


def calibration(labels: np.ndarray, unsafe_prob: np.ndarray, bins: int = 10) -> dict:
  """Reliability of P(score >= 3): per equal-width bin, mean prediction vs observed rate."""
  unsafe = (labels >= 3).astype(np.float64)
  edges = np.linspace(0.0, 1.0, bins + 1)
  which = np.clip(np.digitize(unsafe_prob, edges[1:-1]), 0, bins - 1)
  table, gap = [], 0.0
  for b in range(bins):
    rows = which == b
    if not rows.any():
      continue
    mean_prob, observed = float(unsafe_prob[rows].mean()), float(unsafe[rows].mean())
    gap += rows.sum() * abs(mean_prob - observed)
    table.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "n": int(rows.sum()),
                  "mean_predicted": mean_prob, "observed_unsafe": observed})
  return {"bins": table, "ece": float(gap / max(len(labels), 1))}


def by_kind(examples, labels: np.ndarray, predicted: np.ndarray) -> dict:
  """Recall of unsafe (>= 3) texts per kind of content."""
  kinds = np.asarray([kind_of(e.category) or "" for e in examples])
  result = {}
  for kind in KINDS:
    rows = (kinds == kind) & (labels >= 3)
    result[kind] = {"n_unsafe": int(rows.sum()),
                    "recall_at_3": _ratio(int((predicted[rows] >= 3).sum()), int(rows.sum())),
                    "recall_at_4": _ratio(int((predicted[rows] >= 4).sum()), int(rows.sum()))}
  return result


def confusion(labels: np.ndarray, predicted: np.ndarray) -> dict:
  """The 0-5 confusion matrix: counts[label][predicted]."""
  counts = np.zeros((6, 6), dtype=np.int64)
  np.add.at(counts, (labels, predicted), 1)
  return {"rows": "label", "columns": "predicted", "counts": counts.tolist()}


BANDS = {**{str(score): (score, score) for score in range(6)}, "4-5": (4, 5)}


def by_band(labels: np.ndarray, predicted: np.ndarray) -> dict:
  """For each band of predicted scores, how often a text predicted in it is labelled in it."""
  rows = {}
  for name, (low, high) in BANDS.items():
    flagged = (predicted >= low) & (predicted <= high)
    n_flagged = int(flagged.sum())
    rows[name] = {
        "n_predicted": n_flagged, "n_label": int(((labels >= low) & (labels <= high)).sum()),
        "precision": _ratio(int((flagged & (labels >= low) & (labels <= high)).sum()), n_flagged),
        "precision_at_least": _ratio(int((flagged & (labels >= low)).sum()), n_flagged)}
  return rows


# The long safe sources of the three labelled files (ethics_aita excluded: short posts), whose
# score-0 texts give the long-benign FPR@1 of MODEL_CARD.md; and the raw web pages' prefix.
LONG_BENIGN_SOURCES = (
    "movie_reviews", "brown_corpus", "state_union", "reuters21578", "gutenberg", "wikitext2",
    "cnn_dailymail", "dragnet_web", "scrapinghub_aeb", "trafilatura_eval", "ag_news")
RAW_PAGE_PREFIX = "rawpage_"


def long_pages(examples, labels: np.ndarray, predicted: np.ndarray) -> dict:
  """False positives on long safe text: the long benign sources' FPR@1, the raw pages' shares
  predicted >= 1 and >= 4 (null where the texts have none of them)."""
  benign = np.asarray([e.source in LONG_BENIGN_SOURCES for e in examples], dtype=bool)
  benign &= labels == 0
  raw = np.asarray([e.source.startswith(RAW_PAGE_PREFIX) for e in examples], dtype=bool)
  return {
      "long_benign": {"n_score0": int(benign.sum()),
                      "fpr_score0": _ratio(int((predicted[benign] >= 1).sum()), int(benign.sum()))},
      "raw_pages": {"n": int(raw.sum()),
                    "flagged_at_1": _ratio(int((predicted[raw] >= 1).sum()), int(raw.sum())),
                    "flagged_at_4": _ratio(int((predicted[raw] >= 4).sum()), int(raw.sum())),
                    "fpr_score0": _ratio(int((predicted[raw & (labels == 0)] >= 1).sum()),
                                         int((raw & (labels == 0)).sum()))},
  }


def evaluate(examples, model_path: str, window: int, overlap: int,
             sentence_rescoring: chunking.SentenceRescoring | None = (
                 chunking.SENTENCE_RESCORING)) -> dict:
  labels = np.asarray([e.score for e in examples])
  predicted, unsafe_prob = score_texts([e.text for e in examples], model_path, window, overlap,
                                       sentence_rescoring=sentence_rescoring)
  return evaluation(examples, labels, predicted, unsafe_prob)


def evaluation(examples, labels, predicted, unsafe_prob) -> dict:
  """Every figure of the module's docstring, from the texts' predictions."""
  by_source = collections.defaultdict(list)
  for index, example in enumerate(examples):
    by_source[example.source].append(index)
  return {
      "overall": figures(labels, predicted, unsafe_prob),
      "by_source": {
          source: figures(labels[rows], predicted[rows], unsafe_prob[rows])
          for source, rows in sorted(by_source.items())
      },
      "by_threshold": by_threshold(labels, predicted),
      "calibration": calibration(labels, unsafe_prob),
      "by_kind": by_kind(examples, labels, predicted),
      "confusion": confusion(labels, predicted),
      "by_band": by_band(labels, predicted),
      "long_pages": long_pages(examples, labels, predicted),
  }


def format_extra_tables(result: dict, thresholds: bool, calibrated: bool, kinds: bool,
                        confused: bool = False) -> str:
  """The --by_threshold, --calibration, --by_kind and --confusion tables."""
  def cell(value):
    return "-" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}"
  lines = []
  if thresholds:
    lines += ["", "threshold   precision    recall   flagged  n_positive  n_flagged"]
    for t, row in result["by_threshold"].items():
      lines.append(f">= {t:<8}" + "".join(cell(row[k]).rjust(10) for k in (
          "precision", "recall", "flagged")) + f"{row['n_positive']:>12}{row['n_flagged']:>11}")
  if calibrated:
    lines += ["", "P(>=3) bin        n  mean_predicted  observed_unsafe"]
    for row in result["calibration"]["bins"]:
      lines.append(f"{row['bin']:<12}{row['n']:>7}{row['mean_predicted']:>16.4f}"
                   f"{row['observed_unsafe']:>17.4f}")
    lines.append(f"expected calibration error: {result['calibration']['ece']:.4f}")
  if kinds:
    lines += ["", "kind                    n_unsafe  recall_at_3  recall_at_4"]
    for kind, row in result["by_kind"].items():
      lines.append(f"{kind:<22}{row['n_unsafe']:>10}{cell(row['recall_at_3']):>13}"
                   f"{cell(row['recall_at_4']):>13}")
  if confused:
    lines += ["", "label \\ predicted" + "".join(f"{p:>8}" for p in range(6))]
    for label, counts in enumerate(result["confusion"]["counts"]):
      lines.append(f"{label:<18}" + "".join(f"{c:>8}" for c in counts))
    lines += ["", "predicted band  n_predicted  n_label  precision  precision_at_least"]
    for band, row in result["by_band"].items():
      lines.append(f"{band:<16}{row['n_predicted']:>11}{row['n_label']:>9}"
                   f"{cell(row['precision']):>11}{cell(row['precision_at_least']):>20}")
  return "\n".join(lines)


def format_table(result: dict) -> str:
  columns = ["n", "macro_f1", "recall_at_1", "precision_at_1", "recall_at_3", "precision_at_3",
             "auroc", "auprc", "fpr_score0"]
  lines = ["group".ljust(28) + "".join(c.rjust(15) for c in columns)]
  rows = [("overall", result["overall"]), *result["by_source"].items()]
  for name, values in rows:
    cells = []
    for column in columns:
      value = values[column]
      cells.append(("-" if value is None else
                    str(value) if isinstance(value, int) else f"{value:.4f}").rjust(15))
    lines.append(name.ljust(28) + "".join(cells))
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m models.classifier.evaluate", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--labels", required=True, help="JSONL with text and score_0_5")
  parser.add_argument("--model", default=None,
                      help="model folder or ONNX file with tokenizer.json beside it, as "
                           "--classifier_model takes it (default: the shipped int8 classifier)")
  parser.add_argument("--split", choices=["all", "dev", "train"], default="all",
                      help="rows to use: all, or the dev/train split by the stable id hash")
  parser.add_argument("--sources", default="",
                      help="comma-separated sources to keep (default: every row), e.g. "
                           "movie_reviews,brown_corpus,state_union for the long benign texts")
  parser.add_argument("--window", type=int, default=chunking.DEFAULT_WINDOW,
                      help="window length in tokens")
  parser.add_argument("--overlap", type=int, default=chunking.DEFAULT_OVERLAP,
                      help="tokens shared by consecutive windows")
  parser.add_argument("--by_threshold", action="store_true",
                      help="also print precision and recall at each threshold 1-5")
  parser.add_argument("--calibration", action="store_true",
                      help="also print the calibration table of P(score >= 3)")
  parser.add_argument("--by_kind", "--by_category", dest="by_kind", action="store_true",
                      help="also print Recall@3 per kind of unsafe content")
  parser.add_argument("--confusion", action="store_true",
                      help="also print the 0-5 confusion matrix and the precision per band")
  parser.add_argument("--sentence_rescoring", default=None,
                      help="re-score uncertain windows sentence by sentence: "
                           "LOW,HIGH[,ACCEPT[,MAX_TOKENS[,MIN_TOKENS]]] "
                           "(chunking.SentenceRescoring), or 'off'; default: the pipeline's "
                           "setting (chunking.SENTENCE_RESCORING, now off)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  return parser


def main(argv=None):
  args = build_parser().parse_args(argv)
  examples = data.read_labels(args.labels)
  if args.split != "all":
    train, dev = data.split(examples)
    examples = dev if args.split == "dev" else train
  if args.sources:
    keep = {source.strip() for source in args.sources.split(",") if source.strip()}
    examples = [e for e in examples if e.source in keep]
    if not examples:
      raise SystemExit(f"no rows of the sources {sorted(keep)} in {args.labels}")
  model_path = args.model
  if model_path is None:
    from models.classifier.export import default_model_path
    model_path = default_model_path()
  rescoring = chunking.SENTENCE_RESCORING
  if args.sentence_rescoring is not None:
    rescoring = (None if args.sentence_rescoring == "off"
                 else chunking.SentenceRescoring.parse(args.sentence_rescoring))
  result = evaluate(examples, model_path, args.window, args.overlap, rescoring)
  if args.json:
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
  else:
    print(format_table(result))
    extra = format_extra_tables(result, args.by_threshold, args.calibration, args.by_kind,
                                args.confusion)
    if extra:
      print(extra)


if __name__ == "__main__":
  main()
