"""The quality checks: each one decision on a generated text, in datatrove's filter shape.

The safety gate asks whether a text is safe; these checks ask whether it is worth training on.
Each check is one function: it takes the candidate (the source the generator was given, the text
it wrote, how it stopped) and the settings, and returns True to keep the text. A text that fails
gets the reason `quality_<check>`. Each threshold is a field of `QualitySettings` and a pipeline
option (beam_pipeline/options.py, `--quality_*`); the gate that runs them, after the cuts, is
`transforms.quality.QualityGate`.

The checks, and the branches they apply to:

- `preamble`: meta-commentary about the task left in the text ("The rewritten version contains
  only the section, without comments") - every branch.
- `refusal`: the generator refused ("I can't help with that") where it must not: safeweb and
  moral_education.
- `truncation`: the text stopped at `--max_new_tokens` - every branch.
- `repetition`: degenerate loops: the share of word 4-grams that repeat an earlier one.
- `too_short`: a rewrite much shorter than its source (safeweb).
- `off_topic`: the cosine between the source's and the text's embeddings under the safety
  classifier's own encoder (the exported graph's second output) is below the threshold.
- `refuseweb_structure`: the request comes first, from the user; no user turn speaks as the
  assistant; the assistant declines, explains (names a harm), and offers an alternative.
- `moral_education_shape`: a title and at least one heading, third person, a minimum length.
"""

from __future__ import annotations

import re
import typing

from corpus.records import MORAL_EDUCATION, REFUSEWEB, SAFEWEB
from models.generators.prompts import KIND_MORAL_EDUCATION, KIND_REFUSEWEB, KIND_REPHRASE
from transforms.dialogue import ASSISTANT, USER, parse_dialogue

REASON_PREFIX = "quality_"
PREAMBLE = "preamble"
REFUSAL = "refusal"
TRUNCATION = "truncation"
REPETITION = "repetition"
TOO_SHORT = "too_short"
OFF_TOPIC = "off_topic"
REFUSEWEB_STRUCTURE = "refuseweb_structure"
MORAL_EDUCATION_SHAPE = "moral_education_shape"
CHECKS = (PREAMBLE, REFUSAL, TRUNCATION, REPETITION, TOO_SHORT, OFF_TOPIC, REFUSEWEB_STRUCTURE,
          MORAL_EDUCATION_SHAPE)
# The checks of each prompt kind, in the order they decide the reason of a failing text.
KIND_CHECKS = {
    KIND_REPHRASE: (TRUNCATION, PREAMBLE, REFUSAL, REPETITION, TOO_SHORT, OFF_TOPIC),
    KIND_REFUSEWEB: (TRUNCATION, PREAMBLE, REFUSEWEB_STRUCTURE, REPETITION, OFF_TOPIC),
    KIND_MORAL_EDUCATION: (TRUNCATION, PREAMBLE, REFUSAL, MORAL_EDUCATION_SHAPE, REPETITION,
                           OFF_TOPIC),
}
BRANCH_KINDS = {SAFEWEB: KIND_REPHRASE, REFUSEWEB: KIND_REFUSEWEB,
                MORAL_EDUCATION: KIND_MORAL_EDUCATION}
REASONS = frozenset(REASON_PREFIX + check for check in CHECKS)
# The cuts made before the checks (counted in the report).
TRUNCATION_MODES = ("reject", "trim")  # QualitySettings.truncation
FINISH_LENGTH = "length"  # a backend's finish reason for a reply stopped at the token limit


def reason_of(check: str) -> str:
  return REASON_PREFIX + check


class QualitySettings(typing.NamedTuple):
  """The thresholds of the checks (each is a `--quality_<name>` option)."""
  max_meta_sentences: int = 0  # preamble: meta-commentary sentences allowed after the cuts
  max_refusals: int = 0  # refusal: refusal phrases allowed (safeweb, moral_education)
  truncation: str = "trim"  # truncation: "trim" a text at the token limit, or "reject" it
  max_repeated_ngrams: float = 0.3  # repetition: share of word 4-grams that repeat one
  min_length_ratio: float = 0.2  # too_short: words of the text per word of the source
  min_words: int = 30  # too_short: the least words of any rewrite
  min_topic_similarity: float = 0.1  # off_topic: cosine of source and text embeddings
  refusal_parts: int = 3  # refuseweb_structure: of decline, explain, offer, how many are needed
  moral_min_words: int = 120  # moral_education_shape: the least words of an article
  max_personal_share: float = 0.02  # moral_education_shape: share of I/we/you words
  max_new_tokens: int = 256  # the generation budget: the length checks never ask for more than
  # half of it


class Candidate(typing.NamedTuple):
  """What a check sees: the prompt kind, the source text the generator was given, the text it
  wrote (after the cuts), how it stopped, and the source/text cosine (None: not computed)."""
  kind: str
  source: str
  text: str
  finish_reason: str = ""
  similarity: float | None = None


# --- text helpers -----------------------------------------------------------------------------

_WORDS = re.compile(r"[A-Za-z0-9']+")
# Typographic apostrophes (right and left single quotes, the modifier letter, the prime, the
# full-width one), which many served models write ("I can’t help with that"), as the ASCII
# one the patterns below spell. One character for one, so positions in the text are kept.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032\uff07", "'"))


def plain(text: str) -> str:
  """`text` with its typographic apostrophes as ASCII ones (same length, same positions)."""
  return text.translate(_APOSTROPHES)


def words(text: str) -> list[str]:
  return _WORDS.findall(plain(text).lower())


def sentences(text: str) -> list[str]:
  """The text's sentences and lines (a heading or a speaker line is one of its own)."""
  pieces = []
  for line in text.splitlines():
    pieces.extend(part.strip() for part in re.split(r"(?<=[.!?])\s+", line) if part.strip())
  return pieces


# What a generator writes about the task instead of doing it. Each pattern names the task's
# vocabulary (rewriting, the original or quoted text, comments about it), so ordinary prose on
# the same subjects does not match.
_META = re.compile("|".join((
    r"\b(?:re-?writ(?:e|es|ten|ing)|rephras\w*|paraphras\w*|re-?word\w*)\b[^.!?\n]{0,60}"
    r"\b(?:text|version|passage|article|script|content|section|page|dialogue|conversation)\b",
    r"\b(?:text|version|passage|article|script|section|content)\b[^.!?\n]{0,40}"
    r"\b(?:re-?writ(?:e|es|ten|ing)|rephras\w*|paraphras\w*)\b",
    r"\bthe (?:original|given|provided|quoted|above|following|source) "
    r"(?:text|passage|article|web ?text|document|page|content|script)\b",
    r"\bquoted (?:text|passage|material)\b",
    r"\bwithout (?:any )?(?:comments?|explanations?|commentary)\b",
    r"\bas (?:you )?(?:requested|asked|instructed)\b",
    r"\b(?:here is|here's|here are|below is)\b[^.!?\n]{0,40}\b(?:rewrit\w*|version|script|"
    r"rephras\w*|dialogue|conversation|article|section|talk|lesson)\b",
    r"\bI (?:have|'ve) (?:rewritten|rephrased|transformed|turned|converted|written)\b",
    r"\bcopy of the (?:original|text)\b",
    r"<<<|BEGIN QUOTED|END QUOTED",
)), re.IGNORECASE)

# A generator's refusal. "I can't" with a task verb is one only when the verb goes on as a refusal
# does ("help with that", "help you.", "provide information", "do that."): "I can't help but
# feel", "I can't help it", "I can't do this anymore" and "I'm not comfortable in my own home"
# are how people write, and the texts being rephrased are full of them.
_NEGATIONS = r"can(?:no|')t|won't|will not"
_UNABLE = r"am unable|'m unable|am not able|'m not able"
_CANT_WORDS = _NEGATIONS + r"|(?:" + _UNABLE + r") to"
_CANT = "(?:" + _CANT_WORDS + ")"
_REFUSAL = re.compile("|".join((
    r"\bI(?:(?:'m| am) (?:sorry|afraid)| apologi[sz]e),? (?:but )?I (?:" + _NEGATIONS + "|"
    + _UNABLE + ")",
    r"\bI " + _CANT + r" (?:help|assist)(?: you)?(?: with\b| in (?:this|that|any)\b|"
    r" on (?:this|that)\b| here\b|\s*[.!,;]|\s*$)",
    r"\bI " + _CANT + r" do (?:that|this|it)(?:\s*[.!,;]|\s*$| for you\b)",
    r"\bI (?:" + _CANT_WORDS + r"|must decline to|refuse to) (?:provide|fulfil+|comply|create|"
    r"write|rewrite|rephrase|support|engage|generate|produce|answer|discuss|assist)\b"
    r"(?! (?:a bunch|much|more|anymore|him|her|them|myself)\b)",
    r"\bI (?:must|have to) (?:decline|refuse)\b",
    r"\bas an AI\b",
    r"\bI(?:'m| am) not comfortable (?:with (?:this|that|your) (?:request|task|topic|question)|"
    r"(?:providing|writing|creating|generating|producing|helping|assisting|answering|"
    r"engaging|continuing|rewriting|rephrasing|fulfilling)\b)",
    r"\bI(?:'m| am) not able to help\b",
    r"\b(?:can(?:no|')t|won't) (?:help|assist) (?:you )?with (?:that|this)\b",
)), re.IGNORECASE)

# The parts of a RefuseWeb dialogue. The first user turn asks for something: a question, or a
# request ("Can you", "How do I", "Tell me", "I want"). The assistant's first answer declines, in
# its own voice: "you can't do anything wrong" (SmolLM2-135M, in an answer that never said no) is
# not the assistant declining.
_ASKS = re.compile(
    r"\?|\b(?:can|could|would|will) you\b|\bhow (?:do|can|could|would|should|to)\b|"
    r"\b(?:help|tell|show|give|teach|get|send) me\b|"
    r"\bI(?: want| need| would like|'d like|'m looking for| am looking for)\b|\bplease\b|"
    r"(?:^|[.!:]\s+)(?:write|make|create|explain|describe|find|list|generate|give|tell|show|"
    r"help|teach)\b", re.IGNORECASE)
_DECLINES = re.compile(
    r"\bI (?:(?:really |simply |just )?(?:can(?:no|')t|won't|will not|shouldn't|should not)|"
    r"(?:must|have to|need to|'ll have to|will have to)(?: respectfully| politely)? "
    r"(?:decline|refuse|say no)|(?:respectfully |politely )?(?:decline|refuse)|"
    r"(?:'d|would) rather not)\b|"
    r"\bI(?:'m| am) (?:not (?:able|going|willing|comfortable)|unable|sorry|afraid)\b|"
    r"\bnot something I (?:can|will|am able to)\b|\bI apologi[sz]e\b|"
    r"^\W*(?:no|sorry)\b", re.IGNORECASE)
# Explaining names the harm: "because" alone is no explanation ("I can't help with that,
# because I don't have any recipes", SmolLM2-135M).
_EXPLAINS = re.compile(
    r"\b(?:harm\w*|danger\w*|illegal|unsafe|risk\w*|hurt\w*|"
    r"injur\w*|damag\w*|violat\w*|against the law|unethical|abus\w*|crime|criminal|safety|"
    r"(?:(?<!what )is|are|be|was|(?<!what')s) (?:\w+ )?wrong|consequences?)\b", re.IGNORECASE)
_OFFERS = re.compile(
    r"\b(?:instead|alternative\w*|you (?:could|can|might|may)(?!')|"
    r"I(?: can| could| would be|'d be) (?:happy|glad|help|offer|suggest|share|explain|tell|point|"
    r"recommend)|"
    r"how about|consider\w*|recommend\w*|suggest\w*|resources?|reach out|talk to|contact|"
    r"support (?:line|service|group)|professional|counsel\w*|hotline|learn (?:about|more))\b",
    re.IGNORECASE)
# A user turn in the assistant's voice: it declines, apologises for not helping, or offers help.
_ASSISTANT_VOICE = re.compile(
    r"\b(?:sorry|afraid|apologi[sz]e)\b[^.!?\n]{0,60}\b(?:can(?:no|')t|won't|unable|not able)\b|"
    r"\bcan(?:no|')t (?:discuss|help you|assist you|provide|talk about)\b|"
    r"\bhow (?:can|may) I (?:help|assist)\b|\bas an AI\b", re.IGNORECASE)
_PERSONAL = frozenset(
    "i me my mine myself we us our ours ourselves you your yours yourself yourselves".split())
_HEADING = re.compile(r"^\s*(?:#{1,6}\s+\S|\*\*[^*\n]{2,80}\*\*:?\s*$)")


# --- the checks: each one decision, True keeps the text ---------------------------------------

def check_preamble(candidate: Candidate, settings: QualitySettings) -> bool:
  """No more than `max_meta_sentences` sentences talk about the task instead of doing it."""
  meta = sum(1 for sentence in sentences(plain(candidate.text)) if _META.search(sentence))
  return meta <= settings.max_meta_sentences


def check_refusal(candidate: Candidate, settings: QualitySettings) -> bool:
  """The generator did not refuse (more than `max_refusals` refusal phrases)."""
  return len(_REFUSAL.findall(plain(candidate.text))) <= settings.max_refusals


def check_truncation(candidate: Candidate, settings: QualitySettings) -> bool:
  """The text ended on its own, not at the token limit (a trimmed text has ended: it passes)."""
  del settings
  return candidate.finish_reason != FINISH_LENGTH


def repeated_ngram_share(text: str, n: int = 4) -> float:
  """The share of the text's word n-grams that repeat an earlier one (0 for short texts)."""
  tokens = words(text)
  grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
  if len(grams) < 2:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


def check_repetition(candidate: Candidate, settings: QualitySettings) -> bool:
  """No degenerate loop: at most `max_repeated_ngrams` of the word 4-grams repeat."""
  return repeated_ngram_share(candidate.text) <= settings.max_repeated_ngrams


def required_words(source_words: int, settings: QualitySettings) -> int:
  """The least words of a rewrite of a source of `source_words` words: `min_length_ratio` of
  it, at least `min_words`, and never more than half the token budget can hold."""
  wanted = max(settings.min_words, settings.min_length_ratio * source_words)
  return int(min(wanted, settings.max_new_tokens / 2))


def check_too_short(candidate: Candidate, settings: QualitySettings) -> bool:
  """The rewrite is not much shorter than its source (see `required_words`)."""
  return len(words(candidate.text)) >= required_words(len(words(candidate.source)), settings)


def check_off_topic(candidate: Candidate, settings: QualitySettings) -> bool:
  """The text is about its source: their embeddings' cosine is at least the threshold (kept
  when it could not be computed: a graph without the embedding output)."""
  return candidate.similarity is None or candidate.similarity >= settings.min_topic_similarity


def refuseweb_parts(text: str) -> dict[str, bool]:
  """Which parts of a good RefuseWeb dialogue `text` has (see check_refuseweb_structure)."""
  turns = parse_dialogue(plain(text))
  answers = [body for role, body in turns if role == ASSISTANT]
  answer = " ".join(answers)
  user_turns = [body for role, body in turns if role == USER]
  return {
      "user_first": bool(turns) and turns[0][0] == USER,
      "user_asks": bool(user_turns) and bool(_ASKS.search(user_turns[0])),
      "assistant_answers": any(role == ASSISTANT for role, _ in turns[1:]),
      # a user turn that refuses, or speaks as an AI, is the assistant's voice in the wrong turn
      "roles_kept": not any(_REFUSAL.search(body) or _ASSISTANT_VOICE.search(body)
                            for body in user_turns),
      # the first answer says no; the explanation and the alternative may come in any answer
      "declines": bool(answers) and bool(_DECLINES.search(answers[0])),
      "explains": bool(_EXPLAINS.search(answer)),
      "offers": bool(_OFFERS.search(answer)),
  }


def check_refuseweb_structure(candidate: Candidate, settings: QualitySettings) -> bool:
  """The user asks first (a question or a request), every turn is in its speaker's voice, and
  the assistant's answers have `refusal_parts` of the three parts (the first answer declines,
  one explains the harm, one offers an alternative), declining always among them."""
  parts = refuseweb_parts(candidate.text)
  if not (parts["user_first"] and parts["user_asks"] and parts["assistant_answers"]
          and parts["roles_kept"]):
    return False
  present = sum(parts[name] for name in ("declines", "explains", "offers"))
  return parts["declines"] and present >= settings.refusal_parts


def moral_education_shape(text: str) -> dict[str, typing.Any]:
  """The figures check_moral_education_shape decides on."""
  lines = [line for line in text.splitlines() if line.strip()]
  title = lines[0].strip() if lines else ""
  title_words = words(title)
  tokens = words(text)
  return {
      # a markdown heading, or a short line that does not end as a sentence does
      "title": bool(title_words) and (bool(_HEADING.match(title)) or (
          len(title_words) <= 14 and not title.endswith((".", "!", "?", ",")))),
      "headings": sum(1 for line in lines[1:] if _HEADING.match(line)),
      "words": len(tokens),
      "personal_share": sum(1 for token in tokens if token in _PERSONAL) / max(len(tokens), 1),
  }


def check_moral_education_shape(candidate: Candidate, settings: QualitySettings) -> bool:
  """An article: a title, at least one heading after it, at least `moral_min_words` words
  (never more than half the token budget), and third person (at most `max_personal_share` of
  the words are I, we, you and their forms)."""
  shape = moral_education_shape(candidate.text)
  least = min(settings.moral_min_words, settings.max_new_tokens / 2)
  return (shape["title"] and shape["headings"] >= 1 and shape["words"] >= least
          and shape["personal_share"] <= settings.max_personal_share)


CHECK_FUNCTIONS: dict[str, typing.Callable[[Candidate, QualitySettings], bool]] = {
    PREAMBLE: check_preamble,
    REFUSAL: check_refusal,
    TRUNCATION: check_truncation,
    REPETITION: check_repetition,
    TOO_SHORT: check_too_short,
    OFF_TOPIC: check_off_topic,
    REFUSEWEB_STRUCTURE: check_refuseweb_structure,
    MORAL_EDUCATION_SHAPE: check_moral_education_shape,
}
