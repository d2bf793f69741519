"""The local backend's model and decoding, without Beam: torch, transformers and this package's
prompt helpers only.

`LocalGeneratorHandler` (local.py) is a Beam ModelHandler around these functions; the throughput
benchmark (`benchmarks/generation_throughput.py --device cuda`) runs the same functions on a bare
GPU machine that has no Beam.

Devices (`--generator_device`): `cpu` loads the model in float32, as it always has; `cuda` loads
it in bfloat16 (float16 on GPUs before Ampere, which have no fast bfloat16); `auto` is `cuda`
when `torch.cuda.is_available()`, else `cpu`. `cuda` on a machine where torch sees no CUDA device
is an error at load time, never a silent CPU run.
"""

from __future__ import annotations

import threading
import typing
from collections.abc import Callable, Sequence

from models.generators.prompts import chat_messages, defuse_control_tokens
from models.tool_logs import quiet_tools

DEVICES = ("cpu", "cuda", "auto")

# One generation at a time per process: an SDK worker runs bundles on several threads, and
# sampled retries seed torch's process-wide random state, which threads would reseed under
# each other (seen on Flink: the same seed gave different text than on DirectRunner).
_GENERATE_LOCK = threading.Lock()


class LocalGenerator:
  """A loaded model and its tokenizer, as `load_model` returns them.

  A plain class, not a tuple: Beam's shared-model cache keeps a weak reference to it.
  """

  def __init__(self, model: typing.Any, tokenizer: typing.Any):
    self.model = model
    self.tokenizer = tokenizer


class Decoded(typing.NamedTuple):
  """One prompt's reply: its text (the prescribed opening included; "" when the model added
  nothing to it), "stop" or "length", and the new tokens it took."""
  text: str
  finish_reason: str
  tokens: int


def resolve_device(device: str):
  """The torch device that `device` (cpu, cuda, cuda:N or auto) means on this machine."""
  import torch
  if device == "auto":
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
  resolved = torch.device(device)
  if resolved.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError(
        f"generator device {device!r} (--generator_device={device}): torch {torch.__version__} "
        f"sees no CUDA device (CUDA build: {torch.version.cuda or 'none'}); run the generation "
        "steps on GPU workers with a CUDA build of torch, or pass --generator_device=cpu (or auto)")
  return resolved


def model_dtype(device):
  """float32 on CPU; on a GPU bfloat16 (compute capability 8 and later), else float16."""
  import torch
  if device.type != "cuda":
    return torch.float32
  return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def load_generator(folder: str, device: str = "cpu", random_weights: bool = False,
                   seed: int = 0) -> LocalGenerator:
  """The model folder's tokenizer (left padding) and model, on `device`, in `model_dtype`.

  `random_weights`: only the folder's config.json and tokenizer are read, and the weights are
  initialized at random (seeded by `seed`), for throughput figures where no weights can travel.
  """
  quiet_tools()  # before transformers is imported: no weight-loading bar per loaded model
  import torch
  from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

  target = resolve_device(device)
  dtype = model_dtype(target)
  tokenizer = AutoTokenizer.from_pretrained(folder)
  tokenizer.padding_side = "left"
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
  if random_weights:
    with torch.random.fork_rng(devices=[]):
      torch.manual_seed(seed)
      model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
  else:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
  model.to(device=target, dtype=dtype)
  model.eval()
  return LocalGenerator(model, tokenizer)


def special_token_texts(tokenizer) -> tuple[str, ...]:
  """The texts that the tokenizer turns into control tokens (`<|im_start|>`, `<file_sep>`, ...)."""
  texts = set(getattr(tokenizer, "all_special_tokens", []))
  for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
    if getattr(token, "special", False):
      texts.add(token.content)
  return tuple(sorted((text for text in texts if len(text) > 1), key=len, reverse=True))


def defuse_messages(prompt, specials: Sequence[str]) -> list[dict[str, str]]:
  """The messages with every control-token text in their content broken by a zero-width space:
  those of the common template families (`prompts.CONTROL_TOKEN`) and this tokenizer's own.

  Tokenizing a rendered chat template maps those texts to control tokens wherever they appear, so
  a document quoting `<|im_start|>system` would otherwise open a new turn.
  """
  messages = chat_messages(prompt)
  for message in messages:
    content = defuse_control_tokens(message["content"])
    for special in specials:
      if special in content:
        content = content.replace(special, special[0] + "\u200b" + special[1:])
    message["content"] = content
  return messages


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> tuple[str, str]:
  """(the prompt text for the model, the opening of the reply it continues, if any).

  The chat template with the generation prompt added, or, when the last message is the
  assistant's, with that message left open for the model to continue.
  """
  if messages and messages[-1]["role"] == "assistant":
    text = tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    return text, messages[-1]["content"]
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), ""


def render_prompts(tokenizer, prompts: Sequence[typing.Any]) -> list[tuple[str, str]]:
  """`render_prompt` of each prompt, its control tokens defused first."""
  specials = special_token_texts(tokenizer)
  return [render_prompt(tokenizer, defuse_messages(prompt, specials)) for prompt in prompts]


def generation_settings(max_new_tokens: int, repetition_penalty: float,
                        temperature: float = 0.0, top_p: float = 0.9) -> dict[str, typing.Any]:
  """The `generate` keywords of the local backend: greedy at temperature 0, else nucleus
  sampling (the seed is set per call, see `decode_prompts`)."""
  settings = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty)
  if temperature <= 0:
    settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
  else:
    settings.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
  return settings


def new_token_counts(new_tokens, pad_token_id: int) -> list[int]:
  """The tokens each row of a `generate` output's new part holds, padding left out."""
  return (new_tokens != pad_token_id).sum(dim=1).tolist()


def generate_texts(generator: LocalGenerator, texts: list[str], settings: dict[str, typing.Any],
                   seed: int | None = None) -> list[tuple[str, str, int]]:
  """(reply, finish reason, new tokens) per text, decoded as one padded batch: "stop" when it
  ended with the end-of-text token, "length" when it ran out of new tokens (what the truncation
  check rejects). With `seed`, sampling is seeded in a forked RNG state, so the global random
  state is left as it was."""
  import torch

  tokenizer = generator.tokenizer
  device = generator.model.device
  inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
  settings = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
              **settings}
  devices = [] if device.type == "cpu" else None
  with _GENERATE_LOCK, torch.inference_mode(), torch.random.fork_rng(devices=devices):
    if seed is not None:
      torch.manual_seed(seed)
    generated = generator.model.generate(**inputs, **settings)
  new_tokens = generated[:, inputs["input_ids"].shape[1]:]
  counts = new_token_counts(new_tokens, tokenizer.pad_token_id)
  ended = (new_tokens == tokenizer.eos_token_id).any(dim=1).tolist()
  replies = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
  return [(reply, "stop" if stop else "length", count)
          for reply, stop, count in zip(replies, ended, counts)]


def decode_prompts(generator: LocalGenerator, prompts: Sequence[typing.Any], batch_size: int,
                   settings: dict[str, typing.Any],
                   seed_of: Callable[[typing.Any], int] | None = None) -> list[Decoded]:
  """One `Decoded` per chat prompt, in order: rendered with the tokenizer's chat template,
  sorted by length (longest first, so each padded batch holds prompts of similar length) and
  generated `batch_size` at a time; with `seed_of` (sampling), one prompt at a time, seeded by
  `seed_of(prompt)`, so a sampled reply does not depend on its batch."""
  rendered = render_prompts(generator.tokenizer, prompts)
  texts = [text for text, _ in rendered]
  lengths = [len(generator.tokenizer(text, add_special_tokens=False).input_ids) for text in texts]
  order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], texts[i]))
  step = batch_size if seed_of is None else 1
  decoded: list[Decoded] = [Decoded("", "", 0)] * len(prompts)
  for start in range(0, len(order), step):
    indices = order[start:start + step]
    seed = None if seed_of is None else seed_of(prompts[indices[0]])
    outputs = generate_texts(generator, [texts[i] for i in indices], settings, seed)
    for i, (reply, finish, tokens) in zip(indices, outputs):
      # the opening alone is no reply: an empty generation, retried as one
      text = (rendered[i][1] + reply).strip() if reply.strip() else ""
      decoded[i] = Decoded(text, finish, tokens)
  return decoded
