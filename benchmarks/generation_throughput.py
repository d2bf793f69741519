"""Generation throughput: generated tokens/s of each backend, two settings each, one process.

    python benchmarks/generation_throughput.py [--prompts 16] [--max_new_tokens 64] [--json]

- `local` (transformers, SmolLM2-135M-Instruct on CPU): prompts decoded in batches of
  `--batch_size` vs one prompt at a time. Ratio: batched / one at a time.
- `openai` (llama.cpp's OpenAI-compatible server on 127.0.0.1 serving the same GGUF, started
  here from `.venv-llama`, see `make llama-server`): 8 requests in flight vs 1. Ratio: 8 / 1.

The prompts are the pipeline's own rephrasing prompts over the bundled sample documents, cycled to
`--prompts`. Generated tokens are counted with the model's tokenizer on each reply (without the
reply's prescribed opening), so all four runs are counted alike. Runs are timed wall-clock after
the model is loaded; each setting runs once after one warm-up prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_pipeline.options import SAMPLE_INPUT  # noqa: E402
from models.generators.backend import as_generation, chat_messages, reply_opening  # noqa: E402
from models.generators.prompts import KIND_REPHRASE, build_prompt, pick_style  # noqa: E402


def sample_prompts(count: int) -> list:
  texts = []
  with open(SAMPLE_INPUT, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if isinstance(row.get("text"), str) and row["text"].strip():
        texts.append((row["id"], row["text"]))
  return [build_prompt(KIND_REPHRASE, text, pick_style(doc_id))
          for doc_id, text in (texts[i % len(texts)] for i in range(count))]


def generated_tokens(tokenizer, prompts, replies) -> int:
  total = 0
  for prompt, reply in zip(prompts, replies):
    opening = reply_opening(chat_messages(prompt))
    body = reply[len(opening):] if opening and reply.startswith(opening) else reply
    total += len(tokenizer(body, add_special_tokens=False).input_ids)
  return total


def timed(handler, model, prompts, per_call: int):
  """(seconds, replies): the prompts through `handler.run_inference`, `per_call` at a time."""
  started = time.perf_counter()
  replies = []
  for start in range(0, len(prompts), per_call):
    results = handler.run_inference(prompts[start:start + per_call], model)
    replies.extend(as_generation(r.inference).text for r in results)
  return time.perf_counter() - started, replies


def bench_local(prompts, max_new_tokens: int, batch_size: int, tokenizer) -> dict:
  from models.generators.local import LocalGeneratorHandler
  rows = {}
  for name, size in (("local_one_at_a_time", 1), (f"local_batch_{batch_size}", batch_size)):
    handler = LocalGeneratorHandler(max_new_tokens=max_new_tokens, batch_size=size)
    model = handler.load_model()
    handler.run_inference(prompts[:1], model)  # warm-up
    seconds, replies = timed(handler, model, prompts, size)
    tokens = generated_tokens(tokenizer, prompts, replies)
    rows[name] = {"seconds": round(seconds, 2), "tokens": tokens,
                  "tokens_per_s": round(tokens / seconds, 1)}
  return rows


def bench_openai(prompts, max_new_tokens: int, in_flight: int, tokenizer) -> dict:
  from models.generators.local import default_model_path
  from models.generators.openai_endpoint import OpenAIEndpointHandler
  from tests.e2e.generation.servers import MODEL_ALIAS, LlamaServer, llama_python
  if llama_python() is None:
    raise SystemExit("The llama.cpp server is not installed: run `make llama-server` first.")
  rows = {}
  with tempfile.TemporaryDirectory() as work, LlamaServer(
      default_model_path(), os.path.join(work, "server.log")) as server:
    for name, flight in (("openai_1_in_flight", 1), (f"openai_{in_flight}_in_flight", in_flight)):
      handler = OpenAIEndpointHandler(
          base_url=server.base_url, model=MODEL_ALIAS, api_key_env="none", max_in_flight=flight,
          max_new_tokens=max_new_tokens, timeout_s=600)
      model = handler.load_model()
      handler.run_inference(prompts[:1], model)  # warm-up
      seconds, replies = timed(handler, model, prompts, len(prompts))
      tokens = generated_tokens(tokenizer, prompts, replies)
      rows[name] = {"seconds": round(seconds, 2), "tokens": tokens,
                    "tokens_per_s": round(tokens / seconds, 1)}
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--prompts", type=int, default=16, help="prompts per setting")
  parser.add_argument("--max_new_tokens", type=int, default=64, help="tokens per reply at most")
  parser.add_argument("--batch_size", type=int, default=8, help="local backend's batch")
  parser.add_argument("--in_flight", type=int, default=8, help="openai backend's concurrency")
  parser.add_argument("--skip", choices=["local", "openai"], default=None,
                      help="leave one backend out")
  parser.add_argument("--json", action="store_true", help="print the result as JSON only")
  args = parser.parse_args(argv)

  from transformers import AutoTokenizer
  from models.generators.local import prepare_local_model
  tokenizer = AutoTokenizer.from_pretrained(prepare_local_model())
  prompts = sample_prompts(args.prompts)
  rows, ratios = {}, {}
  with contextlib.redirect_stdout(sys.stderr):
    if args.skip != "local":
      rows.update(bench_local(prompts, args.max_new_tokens, args.batch_size, tokenizer))
      ratios[f"local batch {args.batch_size} / one at a time"] = round(
          rows[f"local_batch_{args.batch_size}"]["tokens_per_s"]
          / rows["local_one_at_a_time"]["tokens_per_s"], 2)
    if args.skip != "openai":
      rows.update(bench_openai(prompts, args.max_new_tokens, args.in_flight, tokenizer))
      ratios[f"openai {args.in_flight} in flight / 1"] = round(
          rows[f"openai_{args.in_flight}_in_flight"]["tokens_per_s"]
          / rows["openai_1_in_flight"]["tokens_per_s"], 2)
  result = {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
            "cpu_count": os.cpu_count(), "rows": rows, "ratios": ratios}
  if args.json:
    print(json.dumps(result, indent=2))
    return
  print(f"{args.prompts} rephrasing prompts, at most {args.max_new_tokens} new tokens each, "
        f"{os.cpu_count()} CPUs")
  print(f"{'setting':<26}{'seconds':>10}{'tokens':>10}{'tokens/s':>12}")
  for name, row in rows.items():
    print(f"{name:<26}{row['seconds']:>10}{row['tokens']:>10}{row['tokens_per_s']:>12}")
  for name, ratio in ratios.items():
    print(f"ratio {name}: {ratio}x")


if __name__ == "__main__":
  main()
