"""The chat prompts of the generation steps, and the seeded choice of a rephrasing style.

Each prompt is a text file in `prompts/`: a `[system]` section and a `[user]` section, the user
section holding one `{document}` placeholder, and optionally an `[assistant]` section: the opening
of the reply (e.g. `User:`), given to the model as the start of its answer so that a small model
keeps the asked-for format. The document goes only into the user turn, quoted between fixed
markers, with every marker or chat-control token inside it defused, so a web page cannot close the
quote or open a new chat turn.
"""

from __future__ import annotations

import functools
import hashlib
import re
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
# `<|name|>` is how most chat templates spell their control tokens.
_CONTROL_TOKEN = re.compile(r"<\|")
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

  def messages(self, document_text: str) -> list[dict[str, str]]:
    """[system, user] messages, plus the opening of the assistant's reply if there is one."""
    user = self.user.replace(PLACEHOLDER, quote(document_text))
    messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
    if self.reply_prefix:
      messages.append({"role": "assistant", "content": self.reply_prefix})
    return messages


def defuse(text: str) -> str:
  """Breaks quote markers and `<|...|>` control tokens in untrusted text with a zero-width space."""
  text = _CONTROL_TOKEN.sub("<" + _ZERO_WIDTH_SPACE + "|", text)
  return _MARKER.sub(lambda m: "<<" + _ZERO_WIDTH_SPACE + m.group(0)[2:], text)


def quote(document_text: str) -> str:
  """The document as a quoted block: defused, cut to MAX_DOCUMENT_CHARS, between the markers."""
  text = document_text.strip()
  if len(text) > MAX_DOCUMENT_CHARS:
    cut = text.rfind(" ", 0, MAX_DOCUMENT_CHARS)
    text = text[:cut if cut > MAX_DOCUMENT_CHARS // 2 else MAX_DOCUMENT_CHARS].rstrip() + " ..."
  return f"{QUOTE_BEGIN}\n{defuse(text)}\n{QUOTE_END}"


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


def build_prompt(kind: str, document_text: str, style: str | None = None) -> list[dict[str, str]]:
  """The chat messages asking for `kind` of generation from the document.

  System, then user; then, for prompts that have one, an assistant message holding the opening of
  the reply, which a generator continues (and includes in its output).
  """
  return load_template(template_name(kind, style)).messages(document_text)


def seeded_index(key: str, seed: int, salt: str, size: int) -> int:
  """A stable index in range(size) from a hash of (seed, salt, key); no global random state."""
  digest = hashlib.sha256(f"{seed}\0{salt}\0{key}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % size


def pick_style(doc_id: str, seed: int = 0) -> str:
  """The rephrasing style of a document: the same for the same id and seed on every runner."""
  return STYLES[seeded_index(doc_id, seed, "style", len(STYLES))]
