"""Harmfulness tags: rate, determinism, text preserved, only in unsafe documents."""

import math
import random

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from corpus.records import HARMFULNESS_TAG, Document
from transforms.tagging import HarmfulnessTag, insert_tags


def _long_text(words: int) -> str:
  rng = random.Random(7)
  vocabulary = ["river", "stone", "light", "garden", "window", "yellow", "market", "song"]
  separators = [" ", " ", " ", "\n", "  ", "\t"]
  return "".join(rng.choice(vocabulary) + rng.choice(separators) for _ in range(words))


def test_tag_rate_is_within_sampling_error_of_five_percent():
  words = 40_000
  text, tags = insert_tags(_long_text(words), "doc-long", 0.05, seed=0)
  expected = 0.05 * (words - 1)
  sigma = math.sqrt((words - 1) * 0.05 * 0.95)
  assert abs(tags - expected) < 4 * sigma, (tags, expected, sigma)
  assert text.count(HARMFULNESS_TAG) == tags


def test_removing_the_tags_gives_back_the_text():
  original = _long_text(2000)
  text, tags = insert_tags(original, "doc-1", 0.05, seed=3)
  assert tags > 0
  assert text.replace(HARMFULNESS_TAG, "") == original


def test_never_before_the_first_word_and_always_before_a_word():
  original = "  first second third fourth fifth sixth"
  text, tags = insert_tags(original, "doc", 1.0, seed=0)
  assert tags == 5
  assert text.startswith("  first ")
  assert text.count(f"{HARMFULNESS_TAG}s") + text.count(f"{HARMFULNESS_TAG}t") + text.count(
      f"{HARMFULNESS_TAG}f") == 5


def test_positions_depend_on_id_and_seed_only():
  original = _long_text(1000)
  assert insert_tags(original, "a", 0.05, 0) == insert_tags(original, "a", 0.05, 0)
  assert insert_tags(original, "a", 0.05, 0) != insert_tags(original, "b", 0.05, 0)
  assert insert_tags(original, "a", 0.05, 0) != insert_tags(original, "a", 0.05, 1)


def test_safe_documents_get_no_tags_in_the_transform():
  documents = [Document(id=f"d{score}", text=_long_text(500), safety_score=score)
               for score in range(6)]

  def check(tagged):
    by_id = {d.id: d for d in tagged}
    assert by_id["d0"].tag_count == 0 and HARMFULNESS_TAG not in by_id["d0"].text
    assert by_id["d0"].text == documents[0].text
    for score in range(1, 6):
      assert by_id[f"d{score}"].tag_count > 0
      assert by_id[f"d{score}"].stage == "tagged"

  with TestPipeline() as p:
    tagged = p | beam.Create(documents) | HarmfulnessTag(0.05, min_score=1, seed=0)
    assert_that(tagged["documents"], check)


# --- the tag is never in safe data: strip_tags ------------------------------------------------

from apache_beam.testing.util import equal_to  # noqa: E402

from transforms.tagging import StripTags, count_tags, strip_tags  # noqa: E402

NEAR_SPELLINGS = (
    HARMFULNESS_TAG,
    "</potentially_unsafe_content>",
    "<potentially_unsafe_content/>",
    "<POTENTIALLY_UNSAFE_CONTENT>",
    "< potentially unsafe content >",
    "<potentially-unsafe-content>",
    "<potentiallyunsafecontent>",
    "&lt;potentially_unsafe_content&gt;",
    "\uff1cpotentially_unsafe_content\uff1e",
    "<potent\u200bially_unsafe_content>",
    "\\u003cpotentially_unsafe_content\\u003e",
    "potentially_unsafe_content",
)


def test_every_near_spelling_of_the_tag_is_stripped_and_counted():
  for spelling in NEAR_SPELLINGS:
    text = f"Before {spelling} after, and again{spelling}here."
    stripped, removed = strip_tags(text)
    assert removed == 2, spelling
    assert stripped == "Before after, and again here.", (spelling, stripped)
    assert count_tags(text) == 2 and count_tags(stripped) == 0


def test_text_without_the_tag_is_left_byte_for_byte():
  for text in ("Potentially unsafe content warnings appear on some videos.",
               "Use <b>bold</b> and <content> tags; potentially, unsafe.",
               _long_text(500)):
    assert strip_tags(text) == (text, 0)


def test_strip_tags_transform_cleans_documents_and_dead_letters_a_text_of_only_tags():
  documents = [Document(id="poisoned", text=f"Safe {HARMFULNESS_TAG}words here."),
               Document(id="only-tags", text=f"{HARMFULNESS_TAG} &lt;potentially_unsafe_content&gt;"),
               Document(id="clean", text="Nothing to strip.")]
  with TestPipeline() as pipeline:
    outputs = pipeline | beam.Create(documents) | StripTags("validate")
    assert_that(outputs["documents"] | "Texts" >> beam.Map(lambda d: (d.id, d.text)),
                equal_to([("clean", "Nothing to strip."), ("poisoned", "Safe words here.")]),
                label="Kept")
    assert_that(outputs["dead_letter"] | "Reasons" >> beam.Map(lambda d: (d.id, d.reason)),
                equal_to([("only-tags", "empty_text")]), label="Dead")
