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
"""

from __future__ import annotations

import dataclasses
import math
import typing

import torch

# The tag that transforms.schema.HARMFULNESS_TAG inserts into unsafe training text (models never
# import transforms, so it is restated here).
HARMFULNESS_TAG = "<potentially_unsafe_content>"


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
  if not 0.0 <= drop_fraction < 1.0:
    raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
  candidates_per_beam = candidates_per_beam or 2 * num_beams
  prompt = input_ids.reshape(1, -1).to(model.device)
  outputs = model(input_ids=prompt, use_cache=True)
  cache = outputs.cache
  next_logits = outputs.logits[:, -1, :].float()
  beams = torch.zeros((1, 0), dtype=torch.long, device=prompt.device)
  beam_scores = torch.zeros(1, device=prompt.device)
  beam_tag_probs: typing.List[typing.List[float]] = [[]]
  finished: typing.List[typing.Tuple[float, torch.Tensor, float, typing.List[float]]] = []
  dropped_per_step = []
  exhausted = True  # False when enough hypotheses finished before max_new_tokens

  for step in range(max_new_tokens):
    n_beams = beams.shape[0]
    log_probs = torch.log_softmax(next_logits, dim=-1)
    top_log_probs, top_tokens = log_probs.topk(candidates_per_beam, dim=-1)
    candidate_scores = (beam_scores[:, None] + top_log_probs).reshape(-1)
    candidate_tokens = top_tokens.reshape(-1)
    parents = torch.arange(n_beams, device=prompt.device).repeat_interleave(candidates_per_beam)

    # One step of look-ahead for every candidate, on its parent beam's cache.
    cache.reorder_cache(parents)
    length = prompt.shape[1] + step + 1
    attention_mask = torch.ones((len(candidate_tokens), length), dtype=torch.long,
                                device=prompt.device)
    outputs = model(input_ids=candidate_tokens[:, None], cache=cache,
                    attention_mask=attention_mask, use_cache=True)
    cache = outputs.cache
    look_ahead_logits = outputs.logits[:, -1, :].float()
    tag_probs = torch.softmax(look_ahead_logits, dim=-1)[:, tag_id]
    tag_probs = torch.where(candidate_tokens == tag_id, torch.ones_like(tag_probs), tag_probs)

    # Drop the candidates most likely to be followed by the tag (a stable sort keeps ties in
    # candidate order), then rank the rest by cumulative log-probability.
    n_dropped = min(math.floor(len(candidate_tokens) * drop_fraction),
                    int((tag_probs >= min_tag_probability).sum()))
    safe = torch.argsort(tag_probs, stable=True)[:len(candidate_tokens) - n_dropped]
    safe = safe[torch.argsort(candidate_scores[safe], descending=True, stable=True)]
    dropped_per_step.append(n_dropped)

    kept = []
    for index in safe.tolist():
      token = int(candidate_tokens[index])
      parent = int(parents[index])
      if eos_token_id is not None and token == eos_token_id:
        sequence = torch.cat([beams[parent], candidate_tokens[index:index + 1]])
        score = float(candidate_scores[index])
        finished.append((score / (sequence.shape[0] ** length_penalty), sequence, score,
                         beam_tag_probs[parent] + [float(tag_probs[index])]))
        continue
      kept.append(index)
      if len(kept) == num_beams:
        break
    if len(finished) >= num_beams or not kept:
      exhausted = not kept and len(finished) < num_beams
      break
    selected = torch.tensor(kept, device=prompt.device)
    cache.reorder_cache(selected)
    beams = torch.cat([beams[parents[selected]], candidate_tokens[selected, None]], dim=1)
    beam_tag_probs = [beam_tag_probs[int(parents[i])] + [float(tag_probs[i])] for i in kept]
    beam_scores = candidate_scores[selected]
    next_logits = look_ahead_logits[selected]

  hypotheses = list(finished)
  if exhausted or not finished:  # the beams still alive compete with the finished ones
    for i in range(beams.shape[0]):
      score = float(beam_scores[i])
      hypotheses.append(
          (score / (max(beams.shape[1], 1) ** length_penalty), beams[i], score, beam_tag_probs[i]))
  _, generated, log_probability, tag_probabilities = max(hypotheses, key=lambda h: h[0])
  return SafeBeamSearchResult(
      sequence=torch.cat([prompt[0], generated]), generated=generated,
      log_probability=log_probability, tag_probabilities=tag_probabilities,
      dropped=dropped_per_step)


@torch.no_grad()
def sequence_log_probability(model, prompt_ids: torch.Tensor, generated: torch.Tensor) -> float:
  """The model's log-probability of `generated` after `prompt_ids` (to compare decodings)."""
  prompt = prompt_ids.reshape(-1).to(model.device)
  sequence = torch.cat([prompt, generated.reshape(-1).to(model.device)])[None, :]
  log_probs = torch.log_softmax(model(input_ids=sequence).logits[0, :-1].float(), dim=-1)
  targets = sequence[0, 1:]
  token_log_probs = log_probs.gather(1, targets[:, None])[:, 0]
  return float(token_log_probs[prompt.shape[0] - 1:].sum())
