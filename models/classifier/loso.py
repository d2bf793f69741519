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


def head_predictions(classifier, cache: features.WindowFeatures, rows: np.ndarray,
                     bias: float = 0.0):
  """(predicted score, P(>= 3) of the deciding window) of the texts `rows`, from the cache.

  `bias` is the 2/3 threshold (`model.shift_unsafe`), as `train --unsafe_bias` records it for
  the exported graph.
  """
  subset = cache.of_texts(rows)
  columns = features.columns(classifier.feature_layers, classifier.encoder.config.hidden_size)
  with torch.no_grad():
    logits = model.shift_unsafe(
        classifier.head(torch.from_numpy(subset.features[:, columns].astype(np.float32))), bias)
    probs = torch.softmax(logits, -1).numpy()
  order = np.argsort(subset.owners, kind="stable")
  owners, probs = subset.owners[order], probs[order]
  bounds = np.flatnonzero(np.diff(owners)) + 1
  predicted, unsafe = {}, {}
  for owner, chunk in zip(owners[np.r_[0, bounds]], np.split(probs, bounds)):
    predicted[owner] = chunking.document_score(chunk)[0]
    unsafe[owner] = float(chunk[:, 3:].sum(axis=1).max())
  return (np.asarray([predicted[r] for r in rows]), np.asarray([unsafe[r] for r in rows]))


def fold(classifier, cache, examples, held_out: str, args, biases=()) -> tuple:
  """Fits the head without `held_out` and measures it on that source.

  Returns the figures at `--unsafe_bias`, the labels, P(>= 3), and the figures at each of
  `biases` (the same fitted head, other thresholds).
  """
  torch.manual_seed(args.seed)
  classifier.head = model.make_head(classifier.feature_size, args.head_hidden, args.head_dropout)
  rows = [i for i, e in enumerate(examples) if e.source != held_out and not data.is_dev(e.id)]
  train.fit_head(classifier.head, *train.head_inputs(cache, examples, rows, classifier, args),
                 args)
  test = np.asarray([i for i, e in enumerate(examples) if e.source == held_out])
  labels = np.asarray([examples[i].score for i in test])
  predicted, unsafe = head_predictions(classifier, cache, test, args.unsafe_bias)
  result = evaluate.figures(labels, predicted, unsafe)
  result["flagged_at_1"] = float((predicted >= 1).mean())
  at_bias = {}
  for bias in biases:
    shifted, _ = head_predictions(classifier, cache, test, bias)
    at_bias[bias] = evaluate.figures(labels, shifted, unsafe)
    at_bias[bias]["flagged_at_1"] = float((shifted >= 1).mean())
    at_bias[bias]["counts"] = [int(((labels >= 3) & (shifted >= 3)).sum()),
                               int((labels >= 3).sum()), int((shifted >= 3).sum())]
  return result, labels, unsafe, at_bias


def bias_table(at_bias: dict) -> list[dict]:
  """Per bias: the mean over held-out sources of Recall@3 and FPR@1, and the pooled Recall@3 and
  precision@3 (over all held-out texts: a source of unsafe texts alone has no precision of its
  own)."""
  table = []
  for bias in sorted({b for per in at_bias.values() for b in per}):
    rows = [per[bias] for per in at_bias.values()]
    def mean(key):
      values = [r[key] for r in rows if r[key] is not None]
      return float(np.mean(values)) if values else None
    hits, positives, flagged = np.asarray([r["counts"] for r in rows]).sum(axis=0)
    table.append({"unsafe_bias": bias, "mean_recall_at_3": mean("recall_at_3"),
                  "pooled_recall_at_3": float(hits / max(positives, 1)),
                  "pooled_precision_at_3": float(hits / max(flagged, 1)),
                  "mean_fpr_score0": mean("fpr_score0"), "mean_flagged_at_1": mean("flagged_at_1")})
  return table


def main(argv=None):
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  parser = train.build_parser()
  parser.prog = "python -m models.classifier.loso"
  parser.description = __doc__
  for flag, default, text in (
      ("--min_rows", 900, "hold out each source with at least this many texts"),
      ("--held_out", "", "comma-separated sources to hold out (default: every source with "
                         "--min_rows texts)"),
      ("--unsafe_bias_grid", "", "comma-separated values of --unsafe_bias to measure on every "
                                 "fold (the same fitted heads): prints the mean figures of each")):
    parser.add_argument(flag, default=default, help=text,
                        **({"type": int} if isinstance(default, int) else {}))
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  examples = data.read_labels(args.labels)
  biases = [float(b) for b in args.unsafe_bias_grid.split(",") if b.strip()]
  classifier, _ = model.with_adapters(train.feature_layers(args), args.head_hidden,
                                      args.head_dropout, args.adapters)
  cache = train.cached_features(classifier, examples, args)
  sizes = {}
  for e in examples:
    sizes[e.source] = sizes.get(e.source, 0) + 1
  held_out = sorted({s.strip() for s in args.held_out.split(",") if s.strip()}
                    or {s for s, n in sizes.items() if n >= args.min_rows})
  if not set(held_out) <= set(sizes):
    raise SystemExit(f"no rows of the sources {sorted(set(held_out) - set(sizes))}")
  per_source, pooled_labels, pooled_unsafe, at_bias = {}, [], [], {}
  for source in held_out:
    per_source[source], labels, unsafe, at_bias[source] = fold(
        classifier, cache, examples, source, args, biases)
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
      "by_unsafe_bias": bias_table(at_bias),
      "by_source_unsafe_bias": {source: {str(b): r for b, r in per.items()}
                                for source, per in at_bias.items()},
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
  if summary["by_unsafe_bias"]:
    print(f"{'unsafe bias':>12}{'recall@3':>10}{'fpr@1':>9}{'flag>=1':>9}"
          f"{'pooled r@3':>11}{'pooled p@3':>11}  (means over held-out sources)")
    for r in summary["by_unsafe_bias"]:
      cells = [r["mean_recall_at_3"], r["mean_fpr_score0"], r["mean_flagged_at_1"],
               r["pooled_recall_at_3"], r["pooled_precision_at_3"]]
      print(f"{r['unsafe_bias']:>12.2f}" + "".join(
          ("-" if v is None else f"{v:.4f}").rjust((10, 9, 9, 11, 11)[i])
          for i, v in enumerate(cells)))


if __name__ == "__main__":
  main()
