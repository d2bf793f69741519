"""A GGUF file of a tiny Llama model with the default generator's real tokenizer: what the
tests that move a generator through Cloud Storage convert and load in seconds.

Every metadata field of the shipped SmolLM2-135M-Instruct GGUF (its tokenizer, merges and chat
template included) is copied; the model's sizes are cut to one layer of width 32 and its
weights are seeded random float32 tensors. transformers converts it as it converts the real
file (dequantize, save, load) and it generates text, nonsense but of real tokens.
"""

from __future__ import annotations

import numpy as np

# The sizes written in place of the real model's (llama.* fields).
TINY = {"llama.block_count": 1, "llama.embedding_length": 32, "llama.feed_forward_length": 64,
        "llama.attention.head_count": 2, "llama.attention.head_count_kv": 1,
        "llama.rope.dimension_count": 16, "llama.context_length": 512}
_SKIPPED = ("GGUF.", "general.file_type", "general.quantization_version")


def write_tiny_gguf(path: str, seed: int = 0) -> str:
  """Writes the tiny model to `path` (a .gguf name); returns it."""
  import gguf

  from models.generators.local import default_model_path

  reader = gguf.GGUFReader(default_model_path())
  writer = gguf.GGUFWriter(path, "llama")
  for name, field in reader.fields.items():
    if name.startswith(_SKIPPED) or name == "general.architecture":
      continue
    kind = field.types[0]
    if name in TINY:
      writer.add_key_value(name, TINY[name], kind)
    elif kind == gguf.GGUFValueType.ARRAY:
      writer.add_key_value(name, field.contents(), kind, field.types[-1])
    else:
      writer.add_key_value(name, field.contents(), kind)
  writer.add_file_type(gguf.LlamaFileType.ALL_F32)
  vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
  width, hidden = TINY["llama.embedding_length"], TINY["llama.feed_forward_length"]
  head = width // TINY["llama.attention.head_count"]
  kv = head * TINY["llama.attention.head_count_kv"]
  rng = np.random.default_rng(seed)

  def tensor(name, *shape):  # numpy order: (rows, columns), as gguf stores (columns, rows)
    writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

  tensor("token_embd.weight", vocab, width)
  writer.add_tensor("blk.0.attn_norm.weight", np.ones(width, dtype=np.float32))
  writer.add_tensor("blk.0.ffn_norm.weight", np.ones(width, dtype=np.float32))
  tensor("blk.0.attn_q.weight", width, width)
  tensor("blk.0.attn_k.weight", kv, width)
  tensor("blk.0.attn_v.weight", kv, width)
  tensor("blk.0.attn_output.weight", width, width)
  tensor("blk.0.ffn_gate.weight", hidden, width)
  tensor("blk.0.ffn_up.weight", hidden, width)
  tensor("blk.0.ffn_down.weight", width, hidden)
  writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path
