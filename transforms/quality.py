"""The quality gate: small checks on every generated text, beside the safety gate.

The safety gate asks whether a text is safe; these checks ask whether it is worth training on.
Each check is one decision in one function, in datatrove's filter shape: it takes the candidate
(the source the generator was given, the text it wrote, how it stopped) and the settings, and
returns True to keep the text. A text that fails gets the reason `quality_<check>`; the
generation steps retry it (sampling, as for any rejected reply, `backend.RetryingGenerator`)
and dead-letter it after the last attempt. Each threshold is a pipeline option
(beam_pipeline/options.py, `--quality_*`).

Before the checks, what can be cut cleanly is cut and counted, not rejected: an opening
preamble ("Here is the rewritten text:"), a closing remark ("I hope this helps!") and, with
`--quality_truncation=trim`, an unfinished last sentence of a text that stopped at the token
limit.

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
  assistant; the assistant declines, explains, and offers an alternative.
- `moral_education_shape`: a title and at least one heading, third person, a minimum length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import typing

import apache_beam as beam
import numpy as np

from models.generators.prompts import (KIND_MORAL_EDUCATION, KIND_REFUSEWEB, KIND_REPHRASE,
                                       QUOTE_BEGIN, QUOTE_END)

_LOG = logging.getLogger(__name__)

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
BRANCH_KINDS = {"safeweb": KIND_REPHRASE, "refuseweb": KIND_REFUSEWEB,
                "moral_education": KIND_MORAL_EDUCATION}
REASONS = frozenset(REASON_PREFIX + check for check in CHECKS)
# The cuts made before the checks (counted in the report).
CUT_PREAMBLE = "preamble"
CUT_CLOSING = "closing_remark"
CUT_TRUNCATED = "unfinished_sentence"
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
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]*_]*(?=\s|$)")


def words(text: str) -> list[str]:
  return _WORDS.findall(text.lower())


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

# A first line that only introduces what follows ("Sure! Here is the rewritten text:").
_PREAMBLE_LINE = re.compile(
    r"^\W*(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[^\n]{0,80}|"
    r"(?:here is|here's|here are|below is|the following is)\b[^\n]{0,120}|"
    r"[^\n]{0,120}\b(?:rewrit\w*|rephras\w*|version|as requested)\b[^\n]{0,60}:)\s*$",
    re.IGNORECASE)
# A last paragraph that only comments on what precedes it.
_CLOSING = re.compile(
    r"^\W*(?:I hope (?:this|that|you)|let me know\b|feel free to\b|note:|"
    r"(?:this|the) (?:rewrit\w*|rephras\w*|version|script|dialogue|conversation|article) "
    r"(?:is|was|keeps|uses|has|maintains|contains|avoids|focuses)\b|"
    r"in this (?:rewrit\w*|version|script|dialogue|conversation)\b)", re.IGNORECASE)

_REFUSAL = re.compile("|".join((
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|')t|won't|will not|am unable|"
    r"'m unable|am not able|'m not able)",
    r"\bI (?:can(?:no|')t|won't|will not|am not able to|'m not able to|am unable to|"
    r"'m unable to|must decline to|refuse to) (?:help|assist|provide|fulfil+|comply|create|"
    r"write|rewrite|rephrase|do that|do this|support|engage|generate|produce|answer|discuss)",
    r"\bI (?:must|have to) (?:decline|refuse)\b",
    r"\bas an AI\b",
    r"\bI(?:'m| am) not (?:comfortable|able to help)\b",
    r"\b(?:can(?:no|')t|won't) (?:help|assist) (?:you )?with (?:that|this)\b",
)), re.IGNORECASE)

# The parts of a RefuseWeb answer (the assistant's turns).
_DECLINES = re.compile(
    r"\b(?:can(?:no|')t|won't|will not|unable to|not able to|must decline|have to decline|"
    r"decline|refuse|not (?:going to|something I can)|sorry)\b", re.IGNORECASE)
_EXPLAINS = re.compile(
    r"\b(?:because|since|as it|as this|as that|harm\w*|danger\w*|illegal|unsafe|risk\w*|hurt\w*|"
    r"injur\w*|damag\w*|violat\w*|against the law|unethical|abus\w*|crime|criminal|safety|"
    r"wrong|consequences?)\b", re.IGNORECASE)
_OFFERS = re.compile(
    r"\b(?:instead|alternative\w*|you (?:could|can|might|may)|I (?:can|could|would be|'d be) "
    r"(?:happy|glad|help|offer|suggest|share|explain|tell|point|recommend)|I can help|"
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


# --- the cuts ---------------------------------------------------------------------------------

def cut_preamble(text: str) -> tuple[str, bool]:
  """The text without an opening line that only introduces it, when what follows has words."""
  first, newline, rest = text.partition("\n")
  if newline and _PREAMBLE_LINE.match(first) and re.search(r"\w", rest):
    return rest.strip(), True
  return text, False


def cut_closing_remark(text: str) -> tuple[str, bool]:
  """The text without a last paragraph that only comments on it ("I hope this helps!")."""
  paragraphs = re.split(r"\n\s*\n", text.strip())
  if len(paragraphs) > 1 and _CLOSING.match(paragraphs[-1]):
    return "\n\n".join(paragraphs[:-1]).strip(), True
  return text, False


def cut_unfinished_sentence(text: str) -> tuple[str, bool]:
  """A text stopped mid-sentence cut back to its last sentence end, when that keeps at least
  half of it (else the text as it is, which the truncation check then rejects)."""
  ends = list(_SENTENCE_END.finditer(text))
  if not ends:
    return text, False
  kept = text[:ends[-1].end()].rstrip()
  if kept == text.rstrip() or len(kept) < len(text) / 2:
    return text, False
  return kept, True


# --- the checks: each one decision, True keeps the text ---------------------------------------

def check_preamble(candidate: Candidate, settings: QualitySettings) -> bool:
  """No more than `max_meta_sentences` sentences talk about the task instead of doing it."""
  meta = sum(1 for sentence in sentences(candidate.text) if _META.search(sentence))
  return meta <= settings.max_meta_sentences


def check_refusal(candidate: Candidate, settings: QualitySettings) -> bool:
  """The generator did not refuse (more than `max_refusals` refusal phrases)."""
  return len(_REFUSAL.findall(candidate.text)) <= settings.max_refusals


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
  from transforms.generation import ASSISTANT, USER, parse_dialogue
  turns = parse_dialogue(text)
  answer = " ".join(body for role, body in turns if role == ASSISTANT)
  user_turns = [body for role, body in turns if role == USER]
  return {
      "user_first": bool(turns) and turns[0][0] == USER,
      "assistant_answers": any(role == ASSISTANT for role, _ in turns[1:]),
      # a user turn that refuses, or speaks as an AI, is the assistant's voice in the wrong turn
      "roles_kept": not any(_REFUSAL.search(body) or _ASSISTANT_VOICE.search(body)
                            for body in user_turns),
      "declines": bool(_DECLINES.search(answer)),
      "explains": bool(_EXPLAINS.search(answer)),
      "offers": bool(_OFFERS.search(answer)),
  }


def check_refuseweb_structure(candidate: Candidate, settings: QualitySettings) -> bool:
  """The user asks first, every turn is in its speaker's voice, and the assistant's answer has
  `refusal_parts` of the three parts (it declines, explains the harm, offers an alternative),
  declining always among them."""
  parts = refuseweb_parts(candidate.text)
  if not (parts["user_first"] and parts["assistant_answers"] and parts["roles_kept"]):
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


# --- the gate ---------------------------------------------------------------------------------

class Review(typing.NamedTuple):
  """The gate's verdict on one reply: the text after the cuts, the reason (the first failing
  check's, "" when all pass), every failing check, the cuts made, the source/text cosine."""
  text: str
  reason: str
  failed: tuple = ()
  cuts: tuple = ()
  similarity: float | None = None

  def record(self) -> dict:
    """This review as one attempt of the history a Generation carries (JSON-able)."""
    entry = {"failed": list(self.failed), "cuts": list(self.cuts)}
    if self.similarity is not None:
      entry["similarity"] = round(self.similarity, 4)
    return entry


def quoted_source(prompt) -> str:
  """The text a prompt quotes (between the quote markers of its user turn), as the generator
  saw it: cut to the prompt's length and defused."""
  from models.generators.backend import chat_messages
  for message in chat_messages(prompt):
    if message["role"] == "user" and QUOTE_BEGIN in message["content"]:
      inside = message["content"].split(QUOTE_BEGIN, 1)[1]
      return inside.split(QUOTE_END, 1)[0].strip()
  return ""


class TextEncoder:
  """Embeddings of texts under the safety classifier's encoder: the exported graph's second
  output (`embedding`), windowed as scoring windows them. Loaded on first use, once per
  process; None embeddings when the graph has no such output (then off_topic keeps texts)."""

  def __init__(self, model_path: str | None = None, window: int = 256, overlap: int = 32):
    self._model_path = model_path
    self._window = window
    self._overlap = overlap
    self._session = None
    self._windower = None
    self._available = None

  def __getstate__(self):
    return {"_model_path": self._model_path, "_window": self._window, "_overlap": self._overlap,
            "_session": None, "_windower": None, "_available": None}

  def _load(self) -> bool:
    if self._available is None:
      from models.classifier.chunking import Windower
      from models.classifier.handler import OnnxSafetyModelHandler, has_embedding, make_session
      # the handler resolves the default (the cached export) and remote paths as scoring does
      from models.classifier import artifacts
      # None: the image's model ($SAFETY_PRETRAINING_CLASSIFIER), else the default, built here
      location = self._model_path or (None if os.environ.get(artifacts.IMAGE_MODEL_ENV)
                                      else artifacts.default_model_folder())
      files = OnnxSafetyModelHandler(location).model_files()
      path = files.onnx
      self._session = make_session(path, intra_op_threads=1)
      self._windower = Windower(self._window, self._overlap,
                                tokenizer_path=files.tokenizer_folder)
      self._available = has_embedding(self._session)
      if not self._available:
        _LOG.warning("%s has no embedding output: the off_topic check keeps every text "
                     "(re-export with python -m models.classifier.export)", path)
    return self._available

  def embed(self, text: str) -> np.ndarray | None:
    if not self._load():
      return None
    from models.classifier.handler import embed_windows
    ids = self._windower.content_ids([text])[0]
    return embed_windows(self._session, self._windower.split_ids(ids))

  def similarity(self, first: str, second: str) -> float | None:
    a, b = self.embed(first), self.embed(second)
    return None if a is None or b is None else float(np.dot(a, b))


class QualityGate:
  """The checks of one prompt kind, as `RetryingGenerator` runs them on each reply.

  `enabled=False` makes no cuts and fails nothing (`--quality=off`); the reviews still say
  which checks would have failed, so the report shows them. `checks` limits the checks run.
  """

  def __init__(self, kind: str, settings: QualitySettings = QualitySettings(),
               encoder: TextEncoder | None = None, enabled: bool = True,
               checks: typing.Sequence[str] | None = None):
    if kind not in KIND_CHECKS:
      raise ValueError(f"no quality checks for prompt kind {kind!r}")
    self.kind = kind
    self.settings = settings
    self.encoder = encoder
    self.enabled = enabled
    self.checks = tuple(c for c in KIND_CHECKS[kind] if checks is None or c in checks)

  def review(self, source: str, text: str, finish_reason: str = "") -> Review:
    """Cuts what can be cut cleanly, then runs every check; the first failure is the reason."""
    cuts = []
    if self.enabled:
      for name, cut in ((CUT_PREAMBLE, cut_preamble), (CUT_CLOSING, cut_closing_remark)):
        if self.kind == KIND_REFUSEWEB:
          break  # a dialogue's opening is the prefilled user turn; parse_dialogue drops the rest
        text, was_cut = cut(text)
        if was_cut:
          cuts.append(name)
      if finish_reason == FINISH_LENGTH and self.settings.truncation == "trim":
        text, was_cut = cut_unfinished_sentence(text)
        if was_cut:
          cuts.append(CUT_TRUNCATED)
          finish_reason = "trimmed"
    similarity = None
    if OFF_TOPIC in self.checks and self.encoder is not None and source:
      similarity = self.encoder.similarity(source, text)
    candidate = Candidate(self.kind, source, text, finish_reason, similarity)
    failed = tuple(check for check in self.checks
                   if not CHECK_FUNCTIONS[check](candidate, self.settings))
    reason = reason_of(failed[0]) if failed and self.enabled else ""
    return Review(text, reason, failed, tuple(cuts), similarity)

  def __call__(self, prompt, generation):
    """RetryingGenerator's review of one reply: the Generation with the cut text, the reason as
    its error when a check fails, and this attempt's review."""
    review = self.review(quoted_source(prompt), generation.text, generation.finish_reason)
    return generation._replace(text=review.text, error=review.reason), review.record()


# --- the reviews: what the report counts and samples ------------------------------------------

SAMPLE_CHARS = 1200
QUALITY_SAMPLES = 3  # per branch, of passing and of rejected texts


class QualityReview(typing.NamedTuple):
  """One generation request as the quality gate saw it: the branch and style, the source and
  the final text (cut to SAMPLE_CHARS), the final reason ("" when it passed every check), and
  the JSON list of its attempts' reviews."""
  branch: str
  style: str
  id: str
  source_text: str
  output_text: str
  reason: str
  attempts: str = "[]"


beam.coders.registry.register_coder(QualityReview, beam.coders.RowCoder)


def review_tallies(review: QualityReview) -> list:
  """The report's figures of one request: `quality.<branch>.<style>.<name>` counts."""
  from transforms.report import tally
  prefix = f"quality.{review.branch}.{review.style or 'all'}"
  attempts = json.loads(review.attempts or "[]")
  reviewed = [attempt for attempt in attempts if "failed" in attempt]
  tallies = [tally(f"{prefix}.requests"), tally(f"{prefix}.attempts", len(attempts)),
             tally(f"{prefix}.reviewed", len(reviewed))]
  if not review.reason:
    tallies.append(tally(f"{prefix}.passed"))
  if attempts and "failed" in attempts[0] and not attempts[0]["failed"]:
    tallies.append(tally(f"{prefix}.passed_first_attempt"))
  for attempt in reviewed:
    tallies.extend(tally(f"{prefix}.failed.{check}") for check in attempt["failed"])
    tallies.extend(tally(f"{prefix}.cut.{cut}") for cut in attempt["cuts"])
  return tallies


def quality_report(counters: dict) -> dict:
  """{branch: {style: figures}} from the review tallies: requests, attempts, reviewed
  attempts, texts that passed (after retries) and at the first attempt, and per check the
  failures and the pass rate over reviewed attempts; cuts per kind."""
  report: dict = {}
  for name, value in sorted(counters.items()):
    if not name.startswith("quality."):
      continue
    _, branch, style, figure = name.split(".", 3)
    entry = report.setdefault(branch, {}).setdefault(style, {
        "requests": 0, "attempts": 0, "reviewed": 0, "passed": 0, "passed_first_attempt": 0,
        "checks": {}, "cuts": {}})
    if figure.startswith("failed."):
      entry["checks"].setdefault(figure[len("failed."):], {})["failed"] = int(value)
    elif figure.startswith("cut."):
      entry["cuts"][figure[len("cut."):]] = int(value)
    else:
      entry[figure] = int(value)
  for branch, styles in report.items():
    for entry in styles.values():
      reviewed = entry["reviewed"]
      for check in KIND_CHECKS[BRANCH_KINDS[branch]]:
        figures = entry["checks"].setdefault(check, {})
        figures.setdefault("failed", 0)
        figures["pass_rate"] = round(1 - figures["failed"] / reviewed, 4) if reviewed else None
      entry["pass_rate"] = round(entry["passed"] / entry["requests"], 4) if entry["requests"] else None
  return report


def _sample_entry(review: QualityReview):
  """((branch, passed or rejected), (hash of the id, sample)): the smallest hashes are kept."""
  verdict = "rejected" if review.reason else "passed"
  sample = {"id": review.id, "style": review.style, "reason": review.reason,
            "source": review.source_text, "output": review.output_text}
  digest = hashlib.sha256(review.id.encode("utf-8")).hexdigest()
  return (review.branch, verdict), (digest, json.dumps(sample, ensure_ascii=False, sort_keys=True))


def _write_quality_samples(branch_entries, output_dir: str) -> str:
  from apache_beam.io.filesystems import FileSystems
  from transforms.records import SAMPLES_DIR
  branch, groups = branch_entries
  samples = {verdict: [json.loads(s) for _, s in sorted(entries)] for verdict, entries in groups}
  path = FileSystems.join(output_dir, SAMPLES_DIR, f"quality_{branch}.json")
  with FileSystems.create(path) as handle:
    handle.write((json.dumps(samples, ensure_ascii=False, indent=1, sort_keys=True) + "\n")
                 .encode("utf-8"))
  return path


class WriteQualitySamples(beam.PTransform):
  """Writes `samples/quality_<branch>.json`: a few passing and a few rejected requests of each
  branch, source beside output (picked by a hash of the id, so every runner picks the same);
  outputs the written paths."""

  def __init__(self, output_dir: str, samples: int = QUALITY_SAMPLES):
    super().__init__()
    self._output_dir = output_dir
    self._samples = samples

  def expand(self, reviews):
    return (
        reviews
        | "SampleEntries" >> beam.Map(_sample_entry)
        | "Smallest" >> beam.combiners.Top.SmallestPerKey(self._samples)
        | "ByBranch" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        | "GroupBranch" >> beam.GroupByKey()
        | "Write" >> beam.Map(_write_quality_samples, self._output_dir))


def read_quality_samples(output_dir: str) -> dict:
  """{branch: {"passed": [...], "rejected": [...]}} from `samples/quality_<branch>.json`."""
  from apache_beam.io.filesystems import FileSystems
  from transforms.records import SAMPLES_DIR
  samples = {}
  for branch in ("safeweb", "refuseweb", "moral_education"):
    path = FileSystems.join(output_dir, SAMPLES_DIR, f"quality_{branch}.json")
    if FileSystems.exists(path):
      with FileSystems.open(path) as handle:
        samples[branch] = json.loads(handle.read().decode("utf-8"))
  return samples
