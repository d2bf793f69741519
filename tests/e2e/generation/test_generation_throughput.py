"""benchmarks/generation_throughput.py --device: the local backend against plain generate.

Run here on CPU with a tiny random model (its figures mean nothing), in a process where Beam
cannot be imported: the path benchmarks/gpu_check.sh runs on a bare GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.generation_throughput import (
    SAMPLE_DOCUMENTS, copy_model_config, sample_prompts)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SCRIPT = os.path.join(REPO, "benchmarks", "generation_throughput.py")
# The benchmark as gpu_check.sh runs it, with every import of apache_beam failing.
WITHOUT_BEAM = ("import runpy, sys; sys.modules['apache_beam'] = None; "
                f"runpy.run_path({SCRIPT!r}, run_name='__main__')")


def test_the_prompts_are_the_pipeline_sample():
  from beam_pipeline.options import SAMPLE_INPUT
  assert os.path.samefile(SAMPLE_DOCUMENTS, SAMPLE_INPUT)


def test_random_weights_report_without_beam(tmp_path):
  from transformers import AutoTokenizer, LlamaConfig
  from models.generators.local import prepare_local_model
  from models.generators.local_decode import render_prompts
  folder = str(tmp_path / "generator")
  names = copy_model_config(prepare_local_model(), folder)  # what make_gpu_bundle.py copies
  assert "tokenizer.json" in names and not [n for n in names if n.endswith(".safetensors")]
  # The copy's tokenizer config, written for older transformers too, renders the same tokens.
  prompts = sample_prompts(2) + [[{"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "User:"}]]
  renders = []
  for source in (prepare_local_model(), folder):
    tokenizer = AutoTokenizer.from_pretrained(source)
    rendered = render_prompts(tokenizer, prompts)
    renders.append([(text, opening, tokenizer(text, add_special_tokens=False).input_ids)
                    for text, opening in rendered])
  assert renders[0] == renders[1]
  # SmolLM2's tokenizer, a tiny model in place of its config: quick on CPU.
  LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
              pad_token_id=2, tie_word_embeddings=True).save_pretrained(folder)
  done = subprocess.run(
      [sys.executable, "-c", WITHOUT_BEAM, "--device", "cpu", "--random_weights",
       "--model_dir", folder, "--batch_sizes", "1,3", "--batches", "2", "--max_new_tokens", "5",
       "--json"],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
      env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout)
  assert (report["mode"], report["device"], report["dtype"]) == (
      "handler_vs_generate", "cpu", "float32")
  assert report["fixed_length"] and "random" in report["weights"]
  assert set(report["rows"]) == {"1", "3"}
  for size, row in report["rows"].items():
    assert row["prompts"] == 2 * int(size) and row["prompt_tokens_mean"] > 100
    for side in ("handler", "generate"):
      # fixed length: every reply decodes exactly max_new_tokens tokens, on both sides
      assert row[side]["tokens"] == row["prompts"] * 5, (size, side, row)
      assert row[side]["tokens_per_s"] > 0
    assert row["handler_vs_generate"] > 0
