"""Safe Beam Search: decoding that steers a model trained on tagged data away from unsafe text.

A model pretrained on the tagged corpus learns to emit the harmfulness tag before unsafe text, so
the probability of the tag as the next token says how likely the text is heading somewhere
unsafe. Safe Beam Search (Maini et al. 2025) uses that at inference time. At each step:

1. for each beam, take the `candidates_per_beam` most likely next tokens;
2. for each candidate, look one token ahead: the probability that the model emits the tag right
   after it (a candidate that is the tag itself counts as probability 1);
3. drop the `drop_fraction` (the paper: half) of all candidates with the highest tag
   probability;
4. keep the `num_beams` remaining candidates with the highest cumulative log-probability.

One guard goes beyond the paper's description: a candidate whose tag probability is below
`min_tag_probability` (default 0.01) is never dropped. Without it a confident model, whose top
candidates after the first are near-impossible tokens, could lose its one fluent candidate to
nonsense whose tag probability is lower only by noise. Set it to 0 for the literal rule.

The look-ahead forward pass of a kept candidate is also its next step's forward pass, so a step
costs one batched forward of `num_beams * candidates_per_beam` single tokens on the KV cache.
With `drop_fraction=0` it is plain beam search (the tests compare it with transformers'
`generate(num_beams=...)`).

Works with any transformers causal LM whose tokenizer holds the tag as one token:

    from models.generators.safe_beam_search import safe_beam_search, tag_token_id
    result = safe_beam_search(model, input_ids, tag_token_id(tokenizer), num_beams=4)
    text = tokenizer.decode(result.sequence)

or over many prompts at once, batched (`safe_beam_search_batch`), from the command line:

    python -m models.generators.safe_beam_search --model DIR --prompts FILE.jsonl
"""

from __future__ import annotations

import dataclasses
import math
import typing

import torch

# The tag that tagging inserts into unsafe training text.
from corpus.records import HARMFULNESS_TAG


@dataclasses.dataclass
class SafeBeamSearchResult:
  """The best sequence and what the search saw.

  sequence: the prompt's ids followed by the generated ids (1-D tensor).
  generated: the generated ids alone.
  log_probability: the model's total log-probability of the generated ids.
  tag_probabilities: per generated token, the probability of the tag right after it.
  dropped: candidates dropped for their tag probability, per step.
  """
  sequence: torch.Tensor
  generated: torch.Tensor
  log_probability: float
  tag_probabilities: typing.List[float]
  dropped: typing.List[int]


def tag_token_id(tokenizer, tag: str = HARMFULNESS_TAG) -> int:
  """The tag's token id; raises ValueError when the tokenizer splits the tag into pieces."""
  ids = tokenizer.encode(tag, add_special_tokens=False)
  if len(ids) != 1:
    raise ValueError(
        f"the tokenizer splits {tag!r} into {len(ids)} tokens; Safe Beam Search needs a model "
        "trained with the tag as one token")
  return ids[0]


@torch.no_grad()
def safe_beam_search(
    model, input_ids: torch.Tensor, tag_id: int, num_beams: int = 4,
    candidates_per_beam: int | None = None, drop_fraction: float = 0.5,
    max_new_tokens: int = 64, eos_token_id: int | None = None,
    length_penalty: float = 1.0, min_tag_probability: float = 0.01) -> SafeBeamSearchResult:
  """Decodes one prompt with Safe Beam Search (see the module docstring).

  Args:
    model: a transformers causal LM (`model(input_ids, cache=..., use_cache=True)`).
    input_ids: the prompt's ids, shape [1, length] or [length].
    tag_id: the harmfulness tag's token id (`tag_token_id(tokenizer)`).
    num_beams: beams kept per step (k).
    candidates_per_beam: next tokens considered per beam (N); default 2 * num_beams.
    drop_fraction: the share of candidates dropped for the highest tag probability (0.5 in the
      paper; 0 gives plain beam search).
    max_new_tokens: most tokens generated.
    eos_token_id: a candidate with this id ends its hypothesis (None: generate max_new_tokens).
    length_penalty: finished hypotheses are ranked by log-probability / length ** this.
    min_tag_probability: candidates with a lower tag probability are never dropped.
  """
  return safe_beam_search_batch(
      model, [input_ids], tag_id, num_beams=num_beams, candidates_per_beam=candidates_per_beam,
      drop_fraction=drop_fraction, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
      length_penalty=length_penalty, min_tag_probability=min_tag_probability)[0]


class _Search:
  """The beams of one prompt: its rows of the shared batch and its finished hypotheses."""

  def __init__(self, prompt: torch.Tensor):
    self.prompt = prompt
    self.beams = torch.zeros((1, 0), dtype=torch.long, device=prompt.device)
    self.scores = torch.zeros(1, device=prompt.device)
    self.tag_probs: typing.List[typing.List[float]] = [[]]
    self.finished: typing.List[tuple] = []
    self.dropped: typing.List[int] = []
    self.exhausted = True  # False when enough hypotheses finished before max_new_tokens
    self.done = False

  def result(self, length_penalty: float) -> SafeBeamSearchResult:
    hypotheses = list(self.finished)
    if self.exhausted or not self.finished:  # the beams still alive compete with the finished
      for i in range(self.beams.shape[0]):
        score = float(self.scores[i])
        hypotheses.append((score / (max(self.beams.shape[1], 1) ** length_penalty),
                           self.beams[i], score, self.tag_probs[i]))
    _, generated, log_probability, tag_probabilities = max(hypotheses, key=lambda h: h[0])
    return SafeBeamSearchResult(
        sequence=torch.cat([self.prompt, generated]), generated=generated,
        log_probability=log_probability, tag_probabilities=tag_probabilities,
        dropped=self.dropped)


@torch.no_grad()
def safe_beam_search_batch(
    model, prompts: typing.Sequence[torch.Tensor], tag_id: int, num_beams: int = 4,
    candidates_per_beam: int | None = None, drop_fraction: float = 0.5,
    max_new_tokens: int = 64, eos_token_id: int | None = None,
    length_penalty: float = 1.0, min_tag_probability: float = 0.01,
    pad_token_id: int = 0) -> typing.List[SafeBeamSearchResult]:
  """Decodes several prompts together with Safe Beam Search; one result per prompt, in order.

  The prompts are left-padded into one batch, and every step runs one forward pass over the
  candidates of every prompt still searching (the look-ahead), with each row's own attention
  mask and positions, so a prompt decodes as it would alone; a prompt that has finished leaves
  the batch. Arguments as `safe_beam_search`; `pad_token_id` fills the left padding.
  """
  if not 0.0 <= drop_fraction < 1.0:
    raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
  if not prompts:
    return []
  candidates_per_beam = candidates_per_beam or 2 * num_beams
  device = model.device
  prompts = [p.reshape(-1).to(device) for p in prompts]
  width = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
  prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
  for row, prompt in enumerate(prompts):
    ids[row, width - len(prompt):] = prompt
    prompt_mask[row, width - len(prompt):] = 1
  positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
  outputs = model(input_ids=ids, attention_mask=prompt_mask, position_ids=positions,
                  use_cache=True)
  cache = outputs.cache
  searches = [_Search(prompt) for prompt in prompts]
  # The rows of the batch: for each, the prompt it belongs to, and the next-token logits.
  row_prompt = torch.arange(len(prompts), device=device)
  next_logits = outputs.logits[:, -1, :].float()

  for step in range(max_new_tokens):
    active = [i for i, search in enumerate(searches) if not search.done]
    if not active:
      break
    log_probs = torch.log_softmax(next_logits, dim=-1)
    top_log_probs, top_tokens = log_probs.topk(candidates_per_beam, dim=-1)
    # Candidates of all rows, row-major: the candidates of one prompt are contiguous.
    candidate_tokens = top_tokens.reshape(-1)
    parents = torch.arange(len(row_prompt), device=device).repeat_interleave(
        candidates_per_beam)
    scores_by_prompt, offset = {}, 0
    for i in active:
      rows = searches[i].beams.shape[0]
      scores_by_prompt[i] = (searches[i].scores[:, None]
                             + top_log_probs[offset:offset + rows]).reshape(-1)
      offset += rows

    # One step of look-ahead for every candidate, on its parent row's cache.
    cache.reorder_cache(parents)
    candidate_prompt = row_prompt[parents]
    attention_mask = torch.cat(
        [prompt_mask[candidate_prompt],
         torch.ones((len(candidate_tokens), step + 1), dtype=torch.long, device=device)], dim=1)
    position_ids = (prompt_mask[candidate_prompt].sum(-1) + step)[:, None]
    outputs = model(input_ids=candidate_tokens[:, None], cache=cache,
                    attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
    cache = outputs.cache
    look_ahead_logits = outputs.logits[:, -1, :].float()
    tag_probs = torch.softmax(look_ahead_logits, dim=-1)[:, tag_id]
    tag_probs = torch.where(candidate_tokens == tag_id, torch.ones_like(tag_probs), tag_probs)

    selected_rows, start = [], 0
    for i in active:
      search = searches[i]
      count = search.beams.shape[0] * candidates_per_beam
      span = slice(start, start + count)
      start += count
      kept = _select(search, candidate_tokens[span], parents[span] - int(parents[span][0]),
                     scores_by_prompt[i], tag_probs[span], num_beams, drop_fraction,
                     min_tag_probability, eos_token_id, length_penalty)
      if kept is None:
        continue
      selected_rows.extend(span.start + index for index in kept)
    if not selected_rows:
      break
    selected = torch.tensor(selected_rows, device=device)
    cache.reorder_cache(selected)
    row_prompt = candidate_prompt[selected]
    next_logits = look_ahead_logits[selected]
  return [search.result(length_penalty) for search in searches]


def _select(search: _Search, tokens, parents, scores, tag_probs, num_beams, drop_fraction,
            min_tag_probability, eos_token_id, length_penalty):
  """One prompt's step: drop the candidates most likely to be followed by the tag (a stable
  sort keeps ties in candidate order), rank the rest by cumulative log-probability, end the
  hypotheses that emit `eos_token_id`, and keep `num_beams`. Updates `search`; returns the kept
  candidates' indices (into this prompt's candidates), or None when its search is over."""
  n_dropped = min(math.floor(len(tokens) * drop_fraction),
                  int((tag_probs >= min_tag_probability).sum()))
  safe = torch.argsort(tag_probs, stable=True)[:len(tokens) - n_dropped]
  safe = safe[torch.argsort(scores[safe], descending=True, stable=True)]
  search.dropped.append(n_dropped)
  kept = []
  for index in safe.tolist():
    token = int(tokens[index])
    parent = int(parents[index])
    if eos_token_id is not None and token == eos_token_id:
      sequence = torch.cat([search.beams[parent], tokens[index:index + 1]])
      score = float(scores[index])
      search.finished.append((score / (sequence.shape[0] ** length_penalty), sequence, score,
                              search.tag_probs[parent] + [float(tag_probs[index])]))
      continue
    kept.append(index)
    if len(kept) == num_beams:
      break
  if len(search.finished) >= num_beams or not kept:
    search.exhausted = not kept and len(search.finished) < num_beams
    search.done = True
    return None
  chosen = torch.tensor(kept, device=tokens.device)
  search.beams = torch.cat([search.beams[parents[chosen]], tokens[chosen, None]], dim=1)
  search.tag_probs = [search.tag_probs[int(parents[i])] + [float(tag_probs[i])] for i in kept]
  search.scores = scores[chosen]
  return kept


@torch.no_grad()
def sequence_log_probability(model, prompt_ids: torch.Tensor, generated: torch.Tensor) -> float:
  """The model's log-probability of `generated` after `prompt_ids` (to compare decodings)."""
  prompt = prompt_ids.reshape(-1).to(model.device)
  sequence = torch.cat([prompt, generated.reshape(-1).to(model.device)])[None, :]
  log_probs = torch.log_softmax(model(input_ids=sequence).logits[0, :-1].float(), dim=-1)
  targets = sequence[0, 1:]
  token_log_probs = log_probs.gather(1, targets[:, None])[:, 0]
  return float(token_log_probs[prompt.shape[0] - 1:].sum())


def read_prompts(path: str) -> typing.List[dict]:
  """The prompts of a JSONL file: one object a line, with `prompt` (plain text) or `messages`
  (a chat, rendered with the tokenizer's chat template); other fields are passed through."""
  import json
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  for number, row in enumerate(rows, 1):
    if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
      raise SystemExit(f"{path}:{number}: each line needs a 'prompt' or a 'messages' field")
  return rows


def encode_prompt(tokenizer, row: dict) -> torch.Tensor:
  if "messages" in row:
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
  return torch.tensor(tokenizer(row["prompt"]).input_ids)


def main(argv=None) -> None:
  """`python -m models.generators.safe_beam_search --model DIR --prompts FILE.jsonl`."""
  import argparse
  import json
  import sys
  parser = argparse.ArgumentParser(
      prog="python -m models.generators.safe_beam_search",
      description="Decode prompts with Safe Beam Search, in batches. Needs a causal LM whose "
                  "tokenizer holds the harmfulness tag as one token (a model pretrained on the "
                  "tagged corpus). Writes one JSON line per prompt: its fields, `text`, "
                  "`log_probability`, `max_tag_probability`, `dropped`.")
  parser.add_argument("--model", required=True, help="a transformers model folder")
  parser.add_argument("--prompts", required=True, help="JSONL: `prompt` or `messages` a line")
  parser.add_argument("--output", default="-", help="JSONL file (default: standard output)")
  parser.add_argument("--num_beams", type=int, default=4)
  parser.add_argument("--candidates_per_beam", type=int, default=None,
                      help="next tokens considered per beam (default 2 x num_beams)")
  parser.add_argument("--drop_fraction", type=float, default=0.5,
                      help="share of candidates dropped for their tag probability (0: beam search)")
  parser.add_argument("--min_tag_probability", type=float, default=0.01)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--length_penalty", type=float, default=1.0)
  parser.add_argument("--batch_size", type=int, default=8, help="prompts decoded together")
  parser.add_argument("--tag", default=HARMFULNESS_TAG)
  parser.add_argument("--device", default="cpu")
  args = parser.parse_args(argv)

  from transformers import AutoModelForCausalLM, AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(args.model)
  model = AutoModelForCausalLM.from_pretrained(args.model).to(args.device).eval()
  tag = tag_token_id(tokenizer, args.tag)
  rows = read_prompts(args.prompts)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
  try:
    for start in range(0, len(rows), args.batch_size):
      batch = rows[start:start + args.batch_size]
      results = safe_beam_search_batch(
          model, [encode_prompt(tokenizer, row) for row in batch], tag,
          num_beams=args.num_beams, candidates_per_beam=args.candidates_per_beam,
          drop_fraction=args.drop_fraction, max_new_tokens=args.max_new_tokens,
          eos_token_id=tokenizer.eos_token_id, length_penalty=args.length_penalty,
          min_tag_probability=args.min_tag_probability, pad_token_id=pad)
      for row, result in zip(batch, results):
        out.write(json.dumps(dict(
            row, text=tokenizer.decode(result.generated, skip_special_tokens=False),
            log_probability=round(result.log_probability, 6),
            max_tag_probability=round(max(result.tag_probabilities, default=0.0), 6),
            dropped=sum(result.dropped)), ensure_ascii=False) + "\n")
      out.flush()
  finally:
    if out is not sys.stdout:
      out.close()


if __name__ == "__main__":
  main()
