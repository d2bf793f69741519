"""RefuseWeb's dialogues: the speakers, parsing a generated dialogue into turns, rendering it.

The generation step (`transforms.generation`) renders each reply with seeded speaker names; the
quality check `refuseweb_structure` (`transforms.quality_checks`) and the safety gate (which
scores the assistant's turns) read the turns back.
"""

from __future__ import annotations

import re
import typing

from corpus.records import Document
from models.generators.prompts import seeded_index

# Speaker names of RefuseWeb dialogues, varied per document so a model does not learn to refuse
# only as "Assistant".
SPEAKER_PAIRS = (
    ("User", "Assistant"),
    ("Student", "Teacher"),
    ("Visitor", "Guide"),
    ("Customer", "Support agent"),
    ("Learner", "Tutor"),
    ("Reader", "Librarian"),
)

USER = "User"
ASSISTANT = "Assistant"
# Speaker labels a generator may use, by role (lowercase, inner spaces collapsed).
# The names of SPEAKER_PAIRS are among them, so a rendered dialogue parses back into its turns.
_ROLE_OF_LABEL = {
    **{name: USER for name in ("user", "human", "person", "customer", "student", "visitor")},
    **{name: ASSISTANT for name in ("assistant", "ai", "ai assistant", "bot", "chatbot", "helper")},
    **{" ".join(user.lower().split()): USER for user, _ in SPEAKER_PAIRS},
    **{" ".join(assistant.lower().split()): ASSISTANT for _, assistant in SPEAKER_PAIRS},
}
# A turn opens a line: optional markdown decoration, a short label, a colon, the text.
_TURN_LINE = re.compile(
    r"^[\s>*_#-]*(?P<label>[A-Za-z][A-Za-z ]{0,19}?)[\s*_]*:[\s*_]*(?P<text>.*)$")


def pick_speakers(doc_id: str, seed: int = 0) -> tuple[str, str]:
  """The (user, assistant) names of a RefuseWeb dialogue, from a seeded hash of the source id."""
  return SPEAKER_PAIRS[seeded_index(doc_id, seed, "speakers", len(SPEAKER_PAIRS))]


def parse_dialogue(text: str) -> list[tuple[str, str]]:
  """The (USER | ASSISTANT, text) turns of a generated dialogue.

  Lines before the first recognised speaker label are dropped (a preamble such as "Here is the
  dialogue:"); other lines continue the current turn, except that the last turn ends at its first
  blank line (what follows is commentary such as "In this dialogue, ..."). Empty turns are dropped.
  """
  turns: list[list[str]] = []
  for line in text.splitlines():
    match = _TURN_LINE.match(line)
    label = " ".join(match.group("label").lower().split()) if match else ""
    label = label[4:] if label.startswith("the ") else label
    if label in _ROLE_OF_LABEL:
      turns.append([_ROLE_OF_LABEL[label], match.group("text")])
    elif turns:
      turns[-1][1] += "\n" + line
  turns = [[role, body.strip()] for role, body in turns if body.strip()]
  if turns:
    turns[-1][1] = re.split(r"\n\s*\n", turns[-1][1], maxsplit=1)[0]
  return [(role, _unquoted(body)) for role, body in turns]


def _unquoted(text: str) -> str:
  """A turn without the quotation marks a generator may put around all of it."""
  if len(text) > 1 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
    return text[1:-1].strip()
  return text


def render_dialogue(turns: typing.Sequence[tuple[str, str]], speakers: tuple[str, str]) -> str:
  """The turns as `Name: text` paragraphs, with `speakers` as the (user, assistant) names."""
  names = {USER: speakers[0], ASSISTANT: speakers[1]}
  return "\n\n".join(f"{names[role]}: {body}" for role, body in turns)


def assistant_turns(document: Document) -> str:
  """The assistant's turns of a rendered RefuseWeb dialogue (its `style` names the speakers).

  The safety gate scores these: the user's turn asks for the harmful thing by design, what
  must be safe is what the assistant says.
  """
  user, _, assistant = document.style.partition("/")
  spoken, current = [], None
  for paragraph in document.text.split("\n\n"):
    if assistant and paragraph.startswith(f"{assistant}: "):
      current = ASSISTANT
      paragraph = paragraph[len(assistant) + 2:]
    elif user and paragraph.startswith(f"{user}: "):
      current = USER
    if current == ASSISTANT:
      spoken.append(paragraph)
  return "\n\n".join(spoken) if spoken else document.text
