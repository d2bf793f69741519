"""Leave-one-source-out validation: how the classifier's settings hold on a source it never saw.

    python -m models.classifier.loso [--labels GLOB] [--min_rows 900] [train options] [--json]

The dev split measures texts like the training texts; the pipeline meets web text from sources
the training data does not contain. So model choices are made here: for each large source
(`--min_rows` texts or more), the head is fitted with the same settings (every option of
`models.classifier.train` applies: `--feature_layers`, `--head_hidden`, `--source_balance`,
...) on the training split of every *other* source, and the held-out source's texts (all of
them, both splits) are scored. Prints per held-out source AUROC (unsafe >= 3, where the source
has both classes), Recall@3, the false-positive rate at threshold 1 on its score-0 texts, and the
mean and the worst source.

The encoder stays as it is in every fold (frozen, with `--adapters` if given): with adapters
trained on the first labels file, the folds of that file's sources hold out the head's data only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np
import torch

from models.classifier import chunking, data, evaluate, features, model, train

LOG = logging.getLogger("models.classifier.loso")


def head_predictions(classifier, cache: features.WindowFeatures, rows: np.ndarray):
  """(predicted score, P(>= 3) of the deciding window) of the texts `rows`, from the cache."""
  subset = cache.of_texts(rows)
  columns = features.columns(classifier.feature_layers, classifier.encoder.config.hidden_size)
  with torch.no_grad():
    probs = torch.softmax(classifier.head(
        torch.from_numpy(subset.features[:, columns].astype(np.float32))), -1).numpy()
  order = np.argsort(subset.owners, kind="stable")
  owners, probs = subset.owners[order], probs[order]
  bounds = np.flatnonzero(np.diff(owners)) + 1
  predicted, unsafe = {}, {}
  for owner, chunk in zip(owners[np.r_[0, bounds]], np.split(probs, bounds)):
    predicted[owner] = chunking.document_score(chunk)[0]
    unsafe[owner] = float(chunk[:, 3:].sum(axis=1).max())
  return (np.asarray([predicted[r] for r in rows]), np.asarray([unsafe[r] for r in rows]))


def fold(classifier, cache, examples, held_out: str, args) -> dict:
  """Fits the head without `held_out` and measures it on that source."""
  torch.manual_seed(args.seed)
  classifier.head = model.make_head(classifier.feature_size, args.head_hidden, args.head_dropout)
  rows = [i for i, e in enumerate(examples) if e.source != held_out and not data.is_dev(e.id)]
  train.fit_head(classifier.head, *train.head_inputs(cache, examples, rows, classifier, args),
                 args)
  test = np.asarray([i for i, e in enumerate(examples) if e.source == held_out])
  labels = np.asarray([examples[i].score for i in test])
  predicted, unsafe = head_predictions(classifier, cache, test)
  result = evaluate.figures(labels, predicted, unsafe)
  result["flagged_at_1"] = float((predicted >= 1).mean())
  return result, labels, unsafe


def main(argv=None):
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  parser = train.build_parser()
  parser.prog = "python -m models.classifier.loso"
  parser.description = __doc__
  parser.add_argument("--min_rows", type=int, default=900,
                      help="hold out each source with at least this many texts")
  parser.add_argument("--held_out", default="",
                      help="comma-separated sources to hold out (default: every source with "
                           "--min_rows texts)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  examples = data.read_labels(args.labels)
  layers = tuple(int(x) for x in args.feature_layers.split(",") if x.strip())
  classifier = model.SafetyClassifier(model.load_encoder(), layers, args.head_hidden,
                                      args.head_dropout)
  if args.adapters:
    with open(args.adapters.rsplit("/", 1)[0] + "/classifier.json") as f:
      model.load_adapters(classifier, model.adapter_state_of(args.adapters), json.load(f),
                          merge=False)
  cache = train.cached_features(classifier, examples, args)
  sizes = {}
  for e in examples:
    sizes[e.source] = sizes.get(e.source, 0) + 1
  held_out = sorted({s.strip() for s in args.held_out.split(",") if s.strip()}
                    or {s for s, n in sizes.items() if n >= args.min_rows})
  if not set(held_out) <= set(sizes):
    raise SystemExit(f"no rows of the sources {sorted(set(held_out) - set(sizes))}")
  per_source, pooled_labels, pooled_unsafe = {}, [], []
  for source in held_out:
    per_source[source], labels, unsafe = fold(classifier, cache, examples, source, args)
    pooled_labels.append(labels)
    pooled_unsafe.append(unsafe)
    LOG.info("held out %s: %s", source, json.dumps(per_source[source]))
  aurocs = {s: r["auroc"] for s, r in per_source.items() if r["auroc"] is not None}
  fprs = {s: r["fpr_score0"] for s, r in per_source.items() if r["fpr_score0"] is not None}
  from sklearn.metrics import roc_auc_score
  summary = {
      "held_out": held_out,
      "mean_auroc": float(np.mean(list(aurocs.values()))) if aurocs else None,
      "worst_auroc_source": min(aurocs, key=aurocs.get) if aurocs else None,
      "worst_auroc": min(aurocs.values()) if aurocs else None,
      "pooled_auroc": float(roc_auc_score(np.concatenate(pooled_labels) >= 3,
                                          np.concatenate(pooled_unsafe))),
      "mean_fpr_score0": float(np.mean(list(fprs.values()))) if fprs else None,
      "worst_fpr_source": max(fprs, key=fprs.get) if fprs else None,
      "worst_fpr_score0": max(fprs.values()) if fprs else None,
      "by_source": per_source,
  }
  if args.json:
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return
  print(f"{'held-out source':<28}{'n':>7}{'auroc':>9}{'recall@3':>10}{'prec@3':>9}"
        f"{'fpr@1':>9}{'flag>=1':>9}")
  for source, r in per_source.items():
    cells = [r["auroc"], r["recall_at_3"], r["precision_at_3"], r["fpr_score0"],
             r["flagged_at_1"]]
    print(f"{source:<28}{r['n']:>7}" + "".join(
        ("-" if v is None else f"{v:.4f}").rjust(9 if i != 1 else 10) for i, v in enumerate(cells)))
  print(f"mean AUROC {summary['mean_auroc']:.4f}, worst {summary['worst_auroc']:.4f} "
        f"({summary['worst_auroc_source']}), pooled {summary['pooled_auroc']:.4f}; "
        f"mean FPR@1 {summary['mean_fpr_score0']:.4f}, worst {summary['worst_fpr_score0']:.4f} "
        f"({summary['worst_fpr_source']})")


if __name__ == "__main__":
  main()
