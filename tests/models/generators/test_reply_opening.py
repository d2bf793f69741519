"""A reply and its prefilled opening: continued, or answered afresh (`openai_endpoint`).

The fresh answers here are what llama.cpp's server (llama-cpp-python 0.3.36, SmolLM2-135M,
temperature 0) returned to this project's prompts carrying vLLM's `continue_final_message`,
which it ignores; the continuations are what a server that honours it returns. The one case
judged wrong is a continuation inside a word ("what is" + "n't"): it is kept without its
opening, as a fresh answer, which the quality checks then judge; the openings of this project's
prompts end on whole words or a colon.
"""

from __future__ import annotations

import pytest

from models.generators.openai_endpoint import continues, join_reply

PODCAST = "Host 1: Welcome back to the show. Today we are talking about"
FRESH = [
    (PODCAST, "Host 2: Hey there, welcome to the show. I'm your host 1"),
    ("# Lesson:", "The debate over the ethics of football has been going on for years"),
    ("Child: Mum, what is", "Mum: (laughs) Oh, I'm so sorry, sweetie."),
    ("Teacher: Good morning, class. Today we are going to learn about",
     "The teacher's words are only the rewritten version"),
    ("Good evening, everyone. Tonight I want to talk about",
     "Good evening, everyone. Tonight I want to talk about the topic of football"),
    ("User:", 'User: "I\'m sorry, I can\'t help you with that."'),
]
CONTINUED = [
    (PODCAST, " how football crowds behave after a few beers."),
    ("# Lesson:", " Football and Alcohol\n\nWhen fans drink, tempers rise."),
    ("# Lesson:", "\n\n## Why tempers rise"),
    ("User:", " How do I get into my neighbour's car without the key?"),
    ('{"score":', ' 3, "reason": "violence"}'),
    ("Sam: Hey, I was just reading about", "... fights at football matches."),
]


@pytest.mark.parametrize("opening, reply", FRESH)
def test_a_fresh_answer_is_kept_as_the_model_wrote_it(opening, reply):
  assert not continues(opening, reply)
  assert join_reply(opening, reply) == reply
  # never glued: the bug this guards against was "...talking aboutHost 2: Hey there"
  assert "aboutHost" not in join_reply(opening, reply)


@pytest.mark.parametrize("opening, reply", CONTINUED)
def test_a_continuation_goes_after_its_opening(opening, reply):
  assert continues(opening, reply)
  assert join_reply(opening, reply) == (opening + reply).strip()


def test_without_an_opening_the_reply_is_kept():
  assert join_reply("", " text ") == "text"
