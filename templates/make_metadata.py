"""Writes templates/metadata.json, the Flex Template's parameters, from the pipeline's options.

    python templates/make_metadata.py           # rewrite metadata.json
    python templates/make_metadata.py --check   # exit 1 if metadata.json is not up to date

One parameter per option of beam_pipeline.options.SafetyPretrainingOptions: its name, a label,
its help text and a regex that Dataflow checks the value against before it launches anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from beam_pipeline.options import SafetyPretrainingOptions  # noqa: E402  pylint: disable=wrong-import-position

METADATA = os.path.join(HERE, "metadata.json")
TEMPLATE_NAME = "Safety Pretraining data pipeline"
TEMPLATE_DESCRIPTION = (
    "Scores web documents for harmfulness with an ONNX classifier, rephrases scores 1-3 into "
    "SafeWeb, turns scores 4-5 into RefuseWeb dialogues and Moral Education texts, tags unsafe "
    "originals, and writes sharded gzip TFRecords (Maini et al., 2025).")

# Values that are not free text. Paths on Dataflow are Cloud Storage paths.
GCS_PATH = r"^gs://[a-z0-9][-_.a-z0-9]*[a-z0-9](/[^\n\r]*)?$"
REGEX_BY_NAME = {
    "input": GCS_PATH,
    "output": GCS_PATH,
    "classifier_model": GCS_PATH,
    "generator_model": GCS_PATH,
    "generator_cache": r"^(/|gs://)[^\n\r]*$",
    "vllm_chat_template": GCS_PATH,
    "run_date": r"^([0-9]{4}-[0-9]{2}-[0-9]{2}|today|yesterday)$",
    "openai_base_url": r"^https?://[^\s]+$",
    "openai_api_key_env": r"^[A-Za-z_][A-Za-z0-9_]*$",
    "openai_api_key_secret": r"^projects/[^/\s]+/secrets/[^/\s]+/versions/[^/\s]+$",
    "generation_accelerator": r"^[^\s]+$",
    "classifier_accelerator": r"^[^\s]+$",
    "generation_min_ram": r"^[0-9]+(\.[0-9]+)?\s*([KMGTP]i?B)?$",
}
INTEGER = r"^-?[0-9]+$"
NUMBER = r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?$"
SWITCH = r"^(true|false)$"
TEXT = r"^[^\n\r]*$"
# Labels that the name alone would spell badly.
LABELS = {"openai_base_url": "OpenAI base URL", "openai_api_key_env": "OpenAI API key variable",
          "openai_api_key_secret": "OpenAI API key secret",
          "openai_model": "OpenAI model", "openai_prefill": "OpenAI prefill",
          "top_p": "Top-p", "vllm_model": "vLLM model", "vllm_server_arg": "vLLM server arguments",
          "vllm_chat_template": "vLLM chat template"}


def option_actions() -> list[argparse.Action]:
  """The options of SafetyPretrainingOptions, in the order --help lists them."""
  parser = argparse.ArgumentParser()
  SafetyPretrainingOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  return [action for action in parser._actions  # pylint: disable=protected-access
          if action.option_strings and action.dest != "help"]


def regex_for(action: argparse.Action) -> str:
  if action.dest in REGEX_BY_NAME:
    return REGEX_BY_NAME[action.dest]
  if action.choices:
    return "^(" + "|".join(str(choice) for choice in action.choices) + ")$"
  if isinstance(action, argparse._StoreTrueAction):  # pylint: disable=protected-access
    return SWITCH
  if action.type is int:
    return INTEGER
  if action.type is float:
    return NUMBER
  return TEXT


def help_text(action: argparse.Action) -> str:
  text = " ".join((action.help or "").split()).replace("%%", "%")
  text = text.replace("%(default)s", str(action.default))
  if isinstance(action, argparse._StoreTrueAction):  # pylint: disable=protected-access
    text += " (true or false)"
  elif action.default not in (None, "", []) and "default" not in text.lower():
    text += f" (default: {action.default})"
  repeated = isinstance(action, argparse._AppendAction)  # pylint: disable=protected-access
  if repeated and "separated by" not in text:
    # a template parameter is given once; an option that splits one value says how in its help
    text += "; one value per launch"
  return text


def parameter(action: argparse.Action) -> dict:
  name = action.dest
  return {
      "name": name,
      "label": LABELS.get(name, name.replace("_", " ").capitalize()),
      "helpText": help_text(action),
      "isOptional": name not in ("input", "output"),
      "regexes": [regex_for(action)],
  }


def metadata() -> dict:
  return {
      "name": TEMPLATE_NAME,
      "description": TEMPLATE_DESCRIPTION,
      "streaming": False,
      "parameters": [parameter(action) for action in option_actions()],
  }


def rendered() -> str:
  return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
  if "--check" in argv:
    with open(METADATA, encoding="utf-8") as f:
      if f.read() != rendered():
        print(f"{METADATA} is out of date: run python templates/make_metadata.py")
        return 1
    return 0
  with open(METADATA, "w", encoding="utf-8") as f:
    f.write(rendered())
  print(f"wrote {METADATA}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
