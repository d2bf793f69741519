"""Generation throughput: generated tokens/s, in one process.

    python benchmarks/generation_throughput.py [--prompts 16] [--max_new_tokens 64] [--json]
    python benchmarks/generation_throughput.py --device cuda [--batch_sizes 1,16,64]
        [--max_new_tokens 128] [--random_weights --model_dir build/gpu_bundle/generator] [--json]

Without `--device`: each backend, two settings each, on CPU:

- `local` (transformers, SmolLM2-135M-Instruct on CPU): prompts decoded in batches of
  `--batch_size` vs one prompt at a time. Ratio: batched / one at a time.
- `openai` (llama.cpp's OpenAI-compatible server on 127.0.0.1 serving the same GGUF, started
  here from `.venv-llama`, see `make llama-server`): 8 requests in flight vs 1. Ratio: 8 / 1.

Generated tokens are counted with the model's tokenizer on each reply (without the reply's
prescribed opening), so all four runs are counted alike. Each setting runs once after one
warm-up prompt.

With `--device` (cpu, cuda or auto, as `--generator_device`): the local backend against plain
transformers, for each batch size B of `--batch_sizes`. `handler` is the backend's decoding,
`local_decode.decode_prompts`, the body of `LocalGeneratorHandler.run_inference` (chat template,
control tokens defused, length sort, one padded batch, `generate`, decoding), on the device and
in the dtype the pipeline uses there (bfloat16 on a GPU, float32 on CPU); `generate` is
`model.generate` of the same model on the same prompts (rendered beforehand), in the same
batches of B, with the same settings (greedy, `--repetition_penalty`, `--max_new_tokens`),
tokenization and decoding included. Each side runs `--batches` batches of B after one warm-up
batch at 2 new tokens; tokens are the new token ids that are not padding, counted alike on both
sides. Ratio: handler tokens/s / generate tokens/s.

`--random_weights`: the model is built from `--model_dir`'s config.json with seeded random
weights, the tokenizer read from its tokenizer files, and every reply decodes exactly
`--max_new_tokens` tokens (min_new_tokens = max_new_tokens, so no end-of-text token cuts a reply
short). Decoding throughput depends on the architecture, the lengths and the batch, not on the
weight values. This is what benchmarks/gpu_check.sh runs on a bare GPU machine, where the
SmolLM2 weights (500 MB) cannot travel and Beam is not installed: this path imports torch,
transformers and Beam-free modules of this package only (benchmarks/make_gpu_bundle.py copies
the config and tokenizer into the bundle).

The prompts are the pipeline's own rephrasing prompts over the bundled sample documents, cycled.
Runs are timed wall-clock after the model is loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from models.generators.prompts import (  # noqa: E402
    KIND_REPHRASE, build_prompt, chat_messages, pick_style, reply_opening)

# beam_pipeline.options.SAMPLE_INPUT, named here: importing the options would import Beam.
SAMPLE_DOCUMENTS = os.path.join(REPO, "beam_pipeline", "sample", "documents.jsonl")
# Weight files, left out of the GPU bundle's copy of a model folder.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def sample_prompts(count: int) -> list:
  texts = []
  with open(SAMPLE_DOCUMENTS, encoding="utf-8") as f:
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
  from models.generators.backend import as_generation
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


def copy_model_config(folder: str, dest: str) -> list[str]:
  """Copies a model folder without its weights (config, generation config, tokenizer, chat
  template) into `dest`: what `--random_weights` reads. Returns the names copied.

  The GPU machine's transformers may be older than this package's: the tokenizer's config there
  names the class both know (transformers 5 writes its alias `TokenizersBackend`) and holds the
  chat template (older ones do not read chat_template.jinja)."""
  os.makedirs(dest, exist_ok=True)
  names = sorted(name for name in os.listdir(folder)
                 if os.path.isfile(os.path.join(folder, name))
                 and not name.endswith(WEIGHT_SUFFIXES))
  for name in names:
    shutil.copyfile(os.path.join(folder, name), os.path.join(dest, name))
  config_path = os.path.join(dest, "tokenizer_config.json")
  template_path = os.path.join(dest, "chat_template.jinja")
  if os.path.isfile(config_path):
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
    if config.get("tokenizer_class") == "TokenizersBackend":
      config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if os.path.isfile(template_path) and "chat_template" not in config:
      with open(template_path, encoding="utf-8") as f:
        config["chat_template"] = f.read()
    with open(config_path, "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
  return names


def _sync(device) -> None:
  import torch
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def plain_generate(generator, texts: list[str], settings: dict) -> int:
  """transformers as its documentation shows it: tokenize the batch, `model.generate`, decode.
  Returns the new tokens that are not padding."""
  import torch
  from models.generators.local_decode import new_token_counts
  tokenizer, model = generator.tokenizer, generator.model
  inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
  with torch.inference_mode():
    output = model.generate(**inputs.to(model.device), pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, **settings)
  new_tokens = output[:, inputs["input_ids"].shape[1]:]
  tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
  return sum(new_token_counts(new_tokens, tokenizer.pad_token_id))


def handler_decode(generator, prompts: list, settings: dict) -> int:
  """The prompts through the local backend's decoding as one batch; its new tokens."""
  from models.generators.local_decode import decode_prompts
  return sum(reply.tokens for reply in decode_prompts(generator, prompts, len(prompts), settings))


def timed_batches(run, batches: list, settings: dict, device) -> dict:
  """`run(batch, settings)` over the batches, after a warm-up batch at 2 new tokens."""
  warm_up = {**settings, **{key: 2 for key in ("max_new_tokens", "min_new_tokens")
                            if key in settings}}
  run(batches[0], warm_up)
  _sync(device)
  started = time.perf_counter()
  tokens = sum(run(batch, settings) for batch in batches)
  _sync(device)
  seconds = time.perf_counter() - started
  return {"seconds": round(seconds, 4), "tokens": tokens,
          "tokens_per_s": round(tokens / seconds, 1)}


def bench_batch_sizes(args) -> dict:
  """The `--device` report: handler vs plain generate at each batch size."""
  import torch
  import transformers
  from models.generators.local_decode import generation_settings, load_generator, render_prompts

  folder = args.model_dir
  if folder is None:
    from models.generators.local import prepare_local_model
    folder = prepare_local_model()
  generator = load_generator(folder, args.device, random_weights=args.random_weights)
  device, dtype = generator.model.device, generator.model.dtype
  settings = generation_settings(args.max_new_tokens, args.repetition_penalty)
  if args.random_weights:
    settings["min_new_tokens"] = args.max_new_tokens
  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  rows = {}
  for size in (int(b) for b in args.batch_sizes.split(",")):
    prompts = sample_prompts(size * args.batches)
    batches = [prompts[start:start + size] for start in range(0, len(prompts), size)]
    texts = [[text for text, _ in render_prompts(generator.tokenizer, batch)]
             for batch in batches]
    prompt_tokens = [len(generator.tokenizer(text, add_special_tokens=False).input_ids)
                     for batch in texts for text in batch]
    handler = timed_batches(lambda b, s: handler_decode(generator, b, s), batches, settings,
                            device)
    generate = timed_batches(lambda b, s: plain_generate(generator, b, s), texts, settings,
                             device)
    rows[str(size)] = {
        "prompts": len(prompts), "prompt_tokens_mean": round(sum(prompt_tokens)
                                                             / len(prompt_tokens), 1),
        "handler": handler, "generate": generate,
        "handler_vs_generate": round(handler["tokens"] / handler["seconds"]
                                     / (generate["tokens"] / generate["seconds"]), 3)}
  if args.random_weights:
    weights = (f"random (seeded), from {folder}/config.json; every reply decodes exactly "
               f"{args.max_new_tokens} tokens: throughput does not depend on the weight values")
  else:
    weights = f"trained, from {folder}; replies end at end-of-text or max_new_tokens"
  report = {
      "mode": "handler_vs_generate",
      "sides": {"handler": "local_decode.decode_prompts, the body of "
                           "LocalGeneratorHandler.run_inference, one call per batch",
                "generate": "tokenizer, model.generate, batch_decode on the same rendered "
                            "prompts, batches and settings"},
      "device": str(device),
      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
      "dtype": str(dtype).replace("torch.", ""), "weights": weights,
      "max_new_tokens": args.max_new_tokens, "fixed_length": args.random_weights,
      "repetition_penalty": args.repetition_penalty, "batches_per_size": args.batches,
      "torch": torch.__version__, "transformers": transformers.__version__,
      "cpu_count": os.cpu_count(), "rows": rows}
  if device.type == "cuda":
    report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
  return report


def print_batch_sizes(report: dict) -> None:
  print(f"local backend on {report['device']} ({report['device_name']}, {report['dtype']}), "
        f"{report['max_new_tokens']} new tokens at most, {report['batches_per_size']} batches "
        f"per size; weights: {report['weights']}")
  print(f"{'batch':>6}{'prompt tok':>12}{'handler tok/s':>15}{'generate tok/s':>16}{'ratio':>8}")
  for size, row in report["rows"].items():
    print(f"{size:>6}{row['prompt_tokens_mean']:>12}{row['handler']['tokens_per_s']:>15}"
          f"{row['generate']['tokens_per_s']:>16}{row['handler_vs_generate']:>8}")


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
  parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default=None,
                      help="the local backend on this device (as --generator_device) against "
                           "plain transformers generate, at each of --batch_sizes")
  parser.add_argument("--batch_sizes", default="1,16,64", help="with --device: batch sizes")
  parser.add_argument("--batches", type=int, default=2, help="with --device: batches per size")
  parser.add_argument("--repetition_penalty", type=float, default=1.1,
                      help="with --device: generate's repetition penalty (the pipeline's default)")
  parser.add_argument("--model_dir", default=None,
                      help="with --device: the model folder (default: SmolLM2, converted once "
                           "into the cache); with --random_weights only its config and tokenizer")
  parser.add_argument("--random_weights", action="store_true",
                      help="with --device: random weights from the folder's config.json, every "
                           "reply exactly --max_new_tokens long")
  args = parser.parse_args(argv)
  if args.device:
    with contextlib.redirect_stdout(sys.stderr):
      report = bench_batch_sizes(args)
    if args.json:
      print(json.dumps(report, indent=2))
    else:
      print_batch_sizes(report)
    return
  if args.random_weights or args.model_dir:
    parser.error("--random_weights and --model_dir need --device")

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
