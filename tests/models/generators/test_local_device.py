"""--generator_device: the local backend on cpu, cuda or auto, and the accelerator hint it allows.

These run on a machine without CUDA (the real `torch.cuda.is_available()` is False there); on a
GPU machine the tests that need its absence are skipped.
"""

from __future__ import annotations

import pytest
import torch

from beam_pipeline import pipeline
from beam_pipeline.options import SafetyPretrainingOptions
from models.generators.local import LocalGeneratorHandler
from models.generators.local_decode import load_generator, model_dtype, resolve_device

ACCELERATOR = "type:nvidia-l4;count:1;install-nvidia-driver"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def _options(*flags: str) -> SafetyPretrainingOptions:
  return SafetyPretrainingOptions(["--input=x", "--output=y", *flags])


def test_cpu_is_the_default_and_the_option_reaches_the_handler():
  assert _options().generator_device == "cpu"
  for device in ("cpu", "cuda", "auto"):
    handler = pipeline.generator_handler(_options(f"--generator_device={device}"))
    assert isinstance(handler, LocalGeneratorHandler)
    assert handler._device == device  # pylint: disable=protected-access


def test_an_unknown_device_is_refused():
  with pytest.raises(SystemExit):
    _options("--generator_device=gpu").generator_device  # pylint: disable=expression-not-assigned


@no_cuda
def test_cuda_without_cuda_is_one_clear_error_at_load(tmp_path):
  handler = LocalGeneratorHandler(model_path=str(tmp_path), device="cuda")  # never read
  with pytest.raises(RuntimeError, match="sees no CUDA device.*--generator_device=cpu"):
    handler.load_model()


@no_cuda
def test_auto_is_the_cpu_here_in_float32():
  device = resolve_device("auto")
  assert device == torch.device("cpu") and model_dtype(device) == torch.float32


def test_random_weights_load_from_a_config_alone(tmp_path):
  from transformers import LlamaConfig
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "a": 2}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>").save_pretrained(tmp_path)
  LlamaConfig(vocab_size=3, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path)
  first = load_generator(str(tmp_path), "cpu", random_weights=True)
  again = load_generator(str(tmp_path), "cpu", random_weights=True)
  assert first.model.dtype == torch.float32 and first.tokenizer.padding_side == "left"
  assert first.tokenizer.pad_token == "<eos>"
  for a, b in zip(first.model.parameters(), again.model.parameters()):
    assert torch.equal(a, b)  # seeded


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_an_accelerator_is_allowed_for_the_local_backend_on_a_gpu(device):
  hints = pipeline.generation_hints(_options(
      f"--generator_device={device}", f"--generation_accelerator={ACCELERATOR}"))
  assert hints == {"accelerator": ACCELERATOR}


def test_an_accelerator_for_the_local_backend_on_cpu_is_refused():
  with pytest.raises(ValueError, match="--generator_device=cpu.*idle.*--generator_device=cuda"):
    pipeline.generation_hints(_options(f"--generation_accelerator={ACCELERATOR}"))
