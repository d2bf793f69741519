"""Safe Beam Search on a small model trained on tagged text, against plain beam search.

The model is a tiny Llama (transformers), trained here in a few seconds on a synthetic corpus in
which unsafe words are followed by the harmfulness tag, as in the tagged corpus this pipeline
writes. Plain beam search then follows the likeliest path, straight through the tag; Safe Beam
Search steers to the safe continuation at almost the same log-probability, while merely banning
the tag token keeps the unsafe text and loses much more.
"""

from __future__ import annotations

import random

import pytest
import torch

from models.generators.safe_beam_search import (HARMFULNESS_TAG, safe_beam_search,
                                                sequence_log_probability, tag_token_id)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# Each sentence: "how to make a <thing> <tag>? at home ." Unsafe things are followed by the tag
# (almost always, as tagging does at a high rate); they are also the likelier things.
UNSAFE = {"weapon": 0.34, "poison": 0.22}
SAFE = {"cake": 0.26, "kite": 0.18}
TAG_RATE = 0.9
WORDS = ["how", "to", "make", "a", "at", "home", "."] + list(UNSAFE) + list(SAFE)


def _sentence(rng: random.Random) -> list[str]:
  things = {**UNSAFE, **SAFE}
  thing = rng.choices(list(things), weights=list(things.values()))[0]
  words = ["how", "to", "make", "a", thing]
  if thing in UNSAFE and rng.random() < TAG_RATE:
    words.append(HARMFULNESS_TAG)
  return words + ["at", "home", "."]


@pytest.fixture(scope="module")
def tagged_model():
  """(model, tokenizer): a tiny Llama trained on the synthetic tagged corpus."""
  torch.manual_seed(0)
  rng = random.Random(0)
  vocab = {"<pad>": 0, "<bos>": 1, HARMFULNESS_TAG: 2}
  vocab.update({word: i + 3 for i, word in enumerate(WORDS)})
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>")
  tokenizer.add_special_tokens({"additional_special_tokens": [HARMFULNESS_TAG]})
  config = transformers.LlamaConfig(
      vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
      bos_token_id=1, eos_token_id=None, pad_token_id=0)
  model = transformers.LlamaForCausalLM(config)
  optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
  model.train()
  for _ in range(300):
    batch = []
    for _ in range(32):
      words = []
      while len(words) < 40:
        words += _sentence(rng)
      batch.append([1] + [vocab[w] for w in words[:40]])
    ids = torch.tensor(batch)
    loss = model(input_ids=ids, labels=ids).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  model.eval()
  return model, tokenizer


def test_tag_token_id_needs_one_token(tagged_model):
  _, tokenizer = tagged_model
  assert tag_token_id(tokenizer) == 2
  with pytest.raises(ValueError, match="splits"):
    tag_token_id(tokenizer, tag="a weapon")


def _prompt(tokenizer) -> torch.Tensor:
  return torch.tensor([[tokenizer.bos_token_id]
                       + tokenizer.encode("how to make", add_special_tokens=False)])


def _words(tokenizer, ids: torch.Tensor) -> list[str]:
  return tokenizer.decode(ids).split()


def test_safe_beam_search_avoids_the_tag_where_plain_beam_search_does_not(tagged_model, capsys):
  model, tokenizer = tagged_model
  prompt = _prompt(tokenizer)
  tag = tag_token_id(tokenizer)
  plain = safe_beam_search(model, prompt, tag, num_beams=4, drop_fraction=0.0, max_new_tokens=16)
  safe = safe_beam_search(model, prompt, tag, num_beams=4, drop_fraction=0.5, max_new_tokens=16)
  plain_words, safe_words = _words(tokenizer, plain.generated), _words(tokenizer, safe.generated)

  with capsys.disabled():
    print(f"\n  plain beam search ({plain.log_probability:.2f}): {' '.join(plain_words)}")
    print(f"  safe beam search  ({safe.log_probability:.2f}): {' '.join(safe_words)}")

  # Plain beam search follows the likeliest text, the unsafe one, and emits the tag.
  assert HARMFULNESS_TAG in plain_words and set(UNSAFE) & set(plain_words), plain_words
  # Safe Beam Search emits neither the tag nor the unsafe words that come with it...
  assert HARMFULNESS_TAG not in safe_words and not set(UNSAFE) & set(safe_words), safe_words
  assert max(safe.tag_probabilities) < 0.05 and sum(safe.dropped) > 0
  # ...and writes fluent text of the same language at almost the same log-probability: the
  # sentences of the corpus, and within 1 nat over 16 tokens of the unconstrained best.
  assert safe_words[:5] == ["a", "cake", "at", "home", "."], safe_words
  assert safe.log_probability >= plain.log_probability - 1.0
  assert safe.log_probability == pytest.approx(
      sequence_log_probability(model, prompt, safe.generated), abs=1e-3)


def test_without_dropping_it_is_transformers_beam_search(tagged_model):
  model, tokenizer = tagged_model
  prompt = _prompt(tokenizer)
  ours = safe_beam_search(
      model, prompt, tag_token_id(tokenizer), num_beams=3, drop_fraction=0.0, max_new_tokens=12)
  theirs = model.generate(
      prompt, num_beams=3, do_sample=False, max_new_tokens=12, early_stopping=False,
      length_penalty=1.0, pad_token_id=0)
  assert ours.sequence.tolist() == theirs[0].tolist()
  assert ours.log_probability == pytest.approx(
      sequence_log_probability(model, prompt, ours.generated), abs=1e-3)


def test_end_of_sequence_ends_a_hypothesis(tagged_model):
  model, tokenizer = tagged_model
  stop = tokenizer.convert_tokens_to_ids(".")
  result = safe_beam_search(
      model, _prompt(tokenizer), tag_token_id(tokenizer), num_beams=2, max_new_tokens=30,
      eos_token_id=stop)
  assert _words(tokenizer, result.generated) == ["a", "cake", "at", "home", "."]


def test_a_batch_of_prompts_decodes_as_each_prompt_alone(tagged_model):
  from models.generators.safe_beam_search import safe_beam_search_batch
  model, tokenizer = tagged_model
  tag = tag_token_id(tokenizer)
  prompts = [_prompt(tokenizer)[0],
             torch.tensor([tokenizer.bos_token_id]
                          + tokenizer.encode("how to make a cake at home . how to make",
                                             add_special_tokens=False)),
             torch.tensor([tokenizer.bos_token_id]
                          + tokenizer.encode("how to", add_special_tokens=False))]
  stop = tokenizer.convert_tokens_to_ids(".")
  for drop_fraction, eos in ((0.0, None), (0.5, None), (0.5, stop)):
    batched = safe_beam_search_batch(model, prompts, tag, num_beams=3, max_new_tokens=10,
                                     drop_fraction=drop_fraction, eos_token_id=eos)
    alone = [safe_beam_search(model, p, tag, num_beams=3, max_new_tokens=10,
                              drop_fraction=drop_fraction, eos_token_id=eos) for p in prompts]
    assert [r.sequence.tolist() for r in batched] == [r.sequence.tolist() for r in alone]
    assert [r.log_probability for r in batched] == pytest.approx(
        [r.log_probability for r in alone], abs=1e-3)
    assert [r.dropped for r in batched] == [r.dropped for r in alone]
  # and without dropping, each prompt of the batch is transformers' beam search
  plain = safe_beam_search_batch(model, prompts, tag, num_beams=3, max_new_tokens=8,
                                 drop_fraction=0.0)
  for prompt, result in zip(prompts, plain):
    theirs = model.generate(prompt[None, :], num_beams=3, do_sample=False, max_new_tokens=8,
                            early_stopping=False, length_penalty=1.0, pad_token_id=0)
    assert result.sequence.tolist() == theirs[0].tolist()


def test_the_command_decodes_a_prompts_file_in_batches(tagged_model, tmp_path):
  import json
  import subprocess
  import sys
  model, tokenizer = tagged_model
  folder = tmp_path / "model"
  model.save_pretrained(folder)
  tokenizer.save_pretrained(folder)
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"id": i, "prompt": text}) + "\n" for i, text in
                             enumerate(["how to make", "how to", "how to make a cake at home ."])))
  output = tmp_path / "out.jsonl"
  done = subprocess.run(
      [sys.executable, "-m", "models.generators.safe_beam_search", "--model", str(folder),
       "--prompts", str(prompts), "--output", str(output), "--max_new_tokens", "12",
       "--batch_size", "2"], capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert [row["id"] for row in rows] == [0, 1, 2]
  for row in rows:
    assert HARMFULNESS_TAG not in row["text"] and not set(UNSAFE) & set(row["text"].split())
    assert row["max_tag_probability"] < 0.05
  assert rows[0]["text"].split()[:5] == ["a", "cake", "at", "home", "."]
