"""The chat prompts of the generation steps, and the seeded choice of a rephrasing style.

Each prompt is a text file in `prompts/`: a `[system]` section and a `[user]` section, the user
section holding one `{document}` placeholder, and optionally an `[assistant]` section: the opening
of the reply (e.g. `User:`), given to the model as the start of its answer so that a small model
keeps the asked-for format. The document goes only into the user turn, quoted between fixed
markers, with every marker or chat-control token inside it defused, so a web page cannot close the
quote or open a new chat turn. The control tokens are those of the common chat-template families,
whatever model serves the prompt: remote backends cannot ask the server's tokenizer which texts
it treats as control tokens, so the spellings are listed here (`CONTROL_TOKEN`).

A document longer than the prompt budget (MAX_DOCUMENT_CHARS) is cut to an excerpt: around the
classifier window that decided its score when the document carries one (`deciding_span`), so a
refusal is written about the passage that made the page unsafe, not about its first page.
"""

from __future__ import annotations

import functools
import hashlib
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

KIND_REPHRASE = "rephrase"
KIND_REFUSEWEB = "refuseweb"
KIND_MORAL_EDUCATION = "moral_education"
KIND_JUDGE = "judge"  # the LLM-judge labeller: the paper's rubric, a JSON answer
KINDS = (KIND_REPHRASE, KIND_REFUSEWEB, KIND_MORAL_EDUCATION, KIND_JUDGE)

# The rephrasing styles; the file of style S is `prompts/rephrase_S.txt`.
STYLES = (
    "podcast",
    "textbook",
    "teacher_script",
    "talk",
    "parent_child",
    "friends_conversation",
    "children_video",
)

QUOTE_BEGIN = "<<<BEGIN QUOTED TEXT>>>"
QUOTE_END = "<<<END QUOTED TEXT>>>"
PLACEHOLDER = "{document}"
# Longer documents are cut (at a space) before quoting: a small model loses the instructions
# behind a very long quote, and the prompt must fit its context window.
MAX_DOCUMENT_CHARS = 6000

_PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
_ZERO_WIDTH_SPACE = "\u200b"
_ELLIPSIS = " ..."
# Chat-control token spellings of the common template families, matched case-insensitively:
# `<|...|>` (ChatML `<|im_start|>`, Llama 3 `<|start_header_id|>` `<|eot_id|>`, Phi, Command R,
# Granite, GPT-OSS, `<|endoftext|>`), DeepSeek's full-width `<｜...｜>`, Llama 2 and Mistral
# `[INST]` `[/INST]` `<<SYS>>`, Mistral's `[SYSTEM_PROMPT]` `[AVAILABLE_TOOLS]` `[TOOL_CALLS]`
# `[TOOL_RESULTS]` `[THINK]`, SentencePiece `<s>` `</s>` `<unk>` `<pad>`, Gemma `<bos>` `<eos>`
# `<start_of_turn>` `<end_of_turn>`, GLM `[gMASK]` `<sop>`, and `<think>` reasoning tags.
CONTROL_TOKEN = re.compile(
    r"<\||<\uff5c"
    r"|\[/?(?:INST|SYS|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS|TOOL_CONTENT|THINK)\]"
    r"|<</?SYS>>"
    r"|</?(?:s|bos|eos|pad|unk|mask|start_of_turn|end_of_turn|start_of_image|end_of_image|sop|eop"
    r"|think)>"
    r"|\[(?:gMASK|sMASK)\]",
    re.IGNORECASE)
_MARKER = re.compile(r"<<<\s*(BEGIN|END)", re.IGNORECASE)


class PromptTemplate:
  """A system text, a user text with one `{document}` placeholder, an optional reply opening."""

  def __init__(self, system: str, user: str, reply_prefix: str = ""):
    if PLACEHOLDER in system or PLACEHOLDER in reply_prefix:
      raise ValueError("The document placeholder belongs in the user part only.")
    if user.count(PLACEHOLDER) != 1:
      raise ValueError("The user part needs exactly one document placeholder.")
    self.system = system
    self.user = user
    self.reply_prefix = reply_prefix

  @classmethod
  def parse(cls, text: str) -> "PromptTemplate":
    """Reads the `[system]` / `[user]` / optional `[assistant]` file format."""
    match = re.fullmatch(
        r"\s*\[system\]\n(.*?)\n\[user\]\n(.*?)(?:\n\[assistant\]\n(.*))?", text, re.DOTALL)
    if not match:
      raise ValueError("A prompt file is a [system] section followed by a [user] section.")
    return cls(match.group(1).strip(), match.group(2).strip(), (match.group(3) or "").strip())

  def messages(self, document_text: str,
               focus: typing.Sequence[int] = ()) -> list[dict[str, str]]:
    """[system, user] messages, plus the opening of the assistant's reply if there is one;
    `focus` is the (start, end) span a long document's excerpt is centred on."""
    user = self.user.replace(PLACEHOLDER, quote(document_text, focus))
    messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
    if self.reply_prefix:
      messages.append({"role": "assistant", "content": self.reply_prefix})
    return messages


def chat_messages(prompt) -> list[dict[str, str]]:
  """The prompt (`backend.Prompt`: {"role", "content"} mappings or (role, content) pairs) as a
  list of {"role", "content"} dicts."""
  return [
      dict(message) if isinstance(message, Mapping) else {
          "role": message[0], "content": message[1]
      } for message in prompt
  ]


def reply_opening(messages: Sequence[Mapping[str, str]]) -> str:
  """The opening of the reply that a prompt's final assistant message prescribes, or ""."""
  return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""


def defuse_control_tokens(text: str) -> str:
  """Breaks every chat-control token spelling (CONTROL_TOKEN) with a zero-width space after its
  first character, so no tokenizer maps it to a control token; idempotent."""
  return CONTROL_TOKEN.sub(lambda m: m.group(0)[0] + _ZERO_WIDTH_SPACE + m.group(0)[1:], text)


def defuse(text: str) -> str:
  """Breaks quote markers and chat-control tokens in untrusted text with a zero-width space."""
  text = defuse_control_tokens(text)
  return _MARKER.sub(lambda m: "<<" + _ZERO_WIDTH_SPACE + m.group(0)[2:], text)


def excerpt(text: str, focus: typing.Sequence[int] = (), limit: int = MAX_DOCUMENT_CHARS) -> str:
  """`text` if it fits in `limit` characters; else `limit` characters of it, cut at spaces and
  marked with "..." where cut: centred on `focus`, a (start, end) span of `text` (the window
  that decided its score, with as much context on each side), or, without one, its beginning."""
  if len(text.strip()) <= limit:
    return text.strip()
  if len(focus) == 2 and 0 <= focus[0] < focus[1] <= len(text):
    start, end = int(focus[0]), int(min(focus[1], focus[0] + limit))
    low = max(0, start - (limit - (end - start)) // 2)
    high = min(len(text), low + limit)
    low = max(0, high - limit)
  else:
    start, end, low, high = 0, 0, 0, limit
  if low > 0:  # begin after a space, but never inside the focus
    cut = text.find(" ", low, max(start, low + 1))
    low = cut + 1 if cut != -1 else low
  if high < len(text):  # end at a space, keeping the focus and at least half the budget
    cut = text.rfind(" ", max(end, low + limit // 2), high)
    high = cut if cut != -1 else high
  body = text[low:high].strip()
  return ("..." + " " if low > 0 else "") + body + (_ELLIPSIS if high < len(text) else "")


def quote(document_text: str, focus: typing.Sequence[int] = ()) -> str:
  """The document as a quoted block: cut to MAX_DOCUMENT_CHARS around `focus` (see `excerpt`),
  defused, between the markers."""
  return f"{QUOTE_BEGIN}\n{defuse(excerpt(document_text, focus))}\n{QUOTE_END}"


@functools.lru_cache(maxsize=None)
def load_template(name: str) -> PromptTemplate:
  """The template in `prompts/<name>.txt`."""
  return PromptTemplate.parse((_PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8"))


def template_name(kind: str, style: str | None = None) -> str:
  if kind == KIND_REPHRASE:
    if style not in STYLES:
      raise ValueError(f"A rephrase prompt needs a style from {STYLES}, got {style!r}.")
    return f"{KIND_REPHRASE}_{style}"
  if kind not in KINDS:
    raise ValueError(f"Unknown prompt kind {kind!r}; expected one of {KINDS}.")
  return kind


def build_prompt(kind: str, document_text: str, style: str | None = None,
                 focus: typing.Sequence[int] = ()) -> list[dict[str, str]]:
  """The chat messages asking for `kind` of generation from the document.

  System, then user; then, for prompts that have one, an assistant message holding the opening of
  the reply, which a generator continues (and includes in its output). `focus` is the span of
  the document's deciding window, the centre of the excerpt of a document over the budget.
  """
  return load_template(template_name(kind, style)).messages(document_text, focus)


def seeded_index(key: str, seed: int, salt: str, size: int) -> int:
  """A stable index in range(size) from a hash of (seed, salt, key); no global random state."""
  digest = hashlib.sha256(f"{seed}\0{salt}\0{key}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % size


def pick_style(doc_id: str, seed: int = 0) -> str:
  """The rephrasing style of a document: the same for the same id and seed on every runner."""
  return STYLES[seeded_index(doc_id, seed, "style", len(STYLES))]
