"""Templated counter-examples for the kinds of text the classifier gets wrong.

    python -m models.classifier.augment --count 40 [--seed 24]   # prints JSONL to look at

The labelled sources teach shortcuts: an identity word or a violent verb often means "unsafe" in
them, and hate is written about the few groups that their authors targeted. The failures measured
on text from other sources follow those shortcuts (issue 24): negated hate, counter-speech that
quotes hate, neutral statements about identity, safe requests with an unsafe word ("kill a
Python process"), fiction and history that describe violence, hate against groups the data does
not name, and hate with obfuscated spelling. Each of those is a functionality here, with its own
templates (written for this project from the functionality's description, not taken from any
test suite) and its own source name, `augment_<functionality>`, so training can give them a
small fixed share of the draws (`train --augment N --augment_share S`).

Hateful and harmful texts are generated beside the safe ones, about the same groups and with the
same verbs, so the lesson is "what is said about the group", not "which words appear". Scores
follow the paper's scale and the labelled data's conventions: counter-speech, negation, identity
statements and non-graphic fiction or history 0 (as the news and fiction sources are labelled);
stereotypes 3; dehumanising hate, obfuscated hate and requests for help to hurt people 4; calls
for violence against a group 5. Generation is deterministic for a (count, seed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import typing

from models.classifier import data

# (plural, one member) of groups: some the labelled data names often, many it barely names.
GROUPS = [
    ("Muslims", "a Muslim"), ("Jews", "a Jewish man"), ("women", "a woman"),
    ("gay men", "a gay man"), ("lesbians", "a lesbian"), ("trans people", "a trans woman"),
    ("immigrants", "an immigrant"), ("Black people", "a Black woman"),
    ("disabled people", "a disabled person"), ("Roma", "a Romani woman"),
    ("Sikhs", "a Sikh"), ("Hindus", "a Hindu"), ("Kurds", "a Kurd"), ("Uyghurs", "a Uyghur"),
    ("Tamils", "a Tamil"), ("Armenians", "an Armenian"), ("Somalis", "a Somali"),
    ("Haitians", "a Haitian"), ("Nigerians", "a Nigerian"), ("Filipinos", "a Filipino"),
    ("Poles", "a Pole"), ("Romanians", "a Romanian"), ("Irish Travellers", "a Traveller"),
    ("Aboriginal Australians", "an Aboriginal Australian"), ("Pacific Islanders",
                                                             "a Pacific Islander"),
    ("Hmong people", "a Hmong woman"), ("bisexual people", "a bisexual man"),
    ("non-binary people", "a non-binary person"), ("intersex people", "an intersex person"),
    ("asexual people", "an asexual woman"), ("deaf people", "a deaf man"),
    ("blind people", "a blind woman"), ("autistic people", "an autistic man"),
    ("wheelchair users", "a wheelchair user"), ("older people", "a pensioner"),
    ("refugees", "a refugee"), ("Mormons", "a Mormon"), ("Baha'is", "a Baha'i"),
    ("atheists", "an atheist"), ("Buddhists", "a Buddhist"), ("Catholics", "a Catholic"),
    ("Mexicans", "a Mexican"), ("Chinese people", "a Chinese student"),
    ("Indigenous people", "an Indigenous woman"), ("Arabs", "an Arab"),
]

STEREOTYPES = ["lazy", "dishonest", "dirty", "stupid", "violent", "greedy", "criminals",
               "a burden on everyone else", "incapable of honest work", "born liars"]
DEHUMANISING = ["vermin", "parasites", "animals", "rats", "a disease", "subhuman", "filth",
                "scum", "trash", "cockroaches"]
OBFUSCATED = {
    "vermin": ["v3rmin", "v e r m i n", "verm1n", "v.e.r.m.i.n"],
    "parasites": ["p@rasites", "para$ites", "p4r4sites", "parasit3s"],
    "animals": ["anim4ls", "an1mals", "a n i m a l s", "@nimals"],
    "rats": ["r4ts", "r@ts", "r a t s", "ratz"],
    "subhuman": ["sub-hum@n", "subhum4n", "sub hu man", "s.u.b.h.u.m.a.n"],
    "filth": ["f1lth", "f!lth", "filthh", "f i l t h"],
    "scum": ["sc*m", "s c u m", "skum", "$cum"],
    "trash": ["tr@sh", "tr4sh", "t r a s h", "trassh"],
    "cockroaches": ["c0ckroaches", "cockr0aches", "roachez", "c*ckroaches"],
    "disgusting": ["d1sgusting", "disgust1ng", "d!sgusting", "disgustin"],
}
MEMBERS = ["neighbours", "colleagues", "teachers", "doctors", "classmates", "shop owners",
           "nurses", "bus drivers", "students", "footballers"]
PLACES = ["our town", "this country", "my street", "the city", "our schools", "the village",
          "this neighbourhood", "the office"]


def _cap(text: str) -> str:
  return text[:1].upper() + text[1:]


def _hate_sentence(rng: random.Random, group: str) -> tuple[str, int]:
  """A hateful sentence about `group` and its score (3 stereotype, 4 dehumanising, 5 violence)."""
  kind = rng.random()
  if kind < 0.4:
    attribute = rng.choice(STEREOTYPES)
    return rng.choice([
        f"{_cap(group)} are {attribute}, every single one of them.",
        f"Never hire {group}, they are all {attribute}.",
        f"Everyone knows {group} are {attribute}.",
        f"You can spot {group} a mile away, they are {attribute}.",
    ]), 3
  if kind < 0.85:
    word, place = rng.choice(DEHUMANISING), rng.choice(PLACES)
    return rng.choice([
        f"{_cap(group)} are {word} and {place} would be better off without them.",
        f"{_cap(group)} are not people, they are {word}.",
        f"I am sick of {group} in {place}, they are {word}.",
        f"Whenever I see {group} I am reminded that they are {word}.",
    ]), 4
  place = rng.choice(PLACES)
  return rng.choice([
      f"Every one of the {group} in {place} should be dragged out and beaten.",
      f"It is time to burn {group} out of {place} for good.",
      f"Someone should put a bullet in the {group} who moved into {place}.",
      f"Round up the {group} in {place} and make them disappear.",
  ]), 5


def negated_hate(rng: random.Random) -> tuple[str, int]:
  """A hateful claim about a group that the sentence denies or rejects: 0."""
  group, _ = rng.choice(GROUPS)
  attribute = rng.choice(STEREOTYPES + DEHUMANISING)
  return rng.choice([
      f"{_cap(group)} are not {attribute}, and nobody should say they are.",
      f"I have never believed that {group} are {attribute}.",
      f"It is simply untrue that {group} are {attribute}.",
      f"My parents taught me that {group} were {attribute}; I now know that was a lie.",
      f"Calling {group} {attribute} is wrong and I will not do it.",
      f"No, {group} are not {attribute}. Where did you even hear that?",
      f"The idea that {group} are {attribute} has no basis at all.",
      f"I refuse to accept that {group} are {attribute}.",
  ]), 0


def counter_speech(rng: random.Random) -> tuple[str, int]:
  """Counter-speech that quotes or reports a hateful sentence in order to reject it: 0."""
  group, _ = rng.choice(GROUPS)
  quoted, _ = _hate_sentence(rng, group)
  quoted = quoted.rstrip(".")
  return rng.choice([
      f'Someone wrote "{quoted}" under my post. That is hateful and I have reported it.',
      f'When people say "{quoted}", they are spreading bigotry, plain and simple.',
      f'My uncle said "{quoted}" at dinner, and I told him it was racist and false.',
      f'"{quoted}" is not an opinion, it is hate speech, and it hurts real families.',
      f'I keep seeing posts like "{quoted}". Please report them; {group} deserve respect.',
      f'Our teacher showed us the slogan "{quoted}" to explain how propaganda works.',
      f'If you hear "{quoted}" at work, tell HR: nobody should have to put up with that.',
      f'The graffiti said "{quoted}", and the whole street came out to paint over it.',
  ]), 0


def identity_neutral(rng: random.Random) -> tuple[str, int]:
  """A neutral or positive statement about an identity: 0."""
  group, member = rng.choice(GROUPS)
  job = rng.choice(["a nurse", "a teacher", "a plumber", "a software engineer", "a baker",
                    "a librarian", "an accountant", "a farmer", "a bus driver", "a chemist"])
  other = rng.choice(MEMBERS)
  return rng.choice([
      f"I am {member} and I work as {job}.",
      f"As {member}, I found the new community centre really welcoming.",
      f"Many of my {other} are {group}, and we get on well.",
      f"The festival celebrated the food and music of {group}.",
      f"{_cap(group)} have lived in this region for generations.",
      f"Our book club is reading a memoir by {member} who became {job}.",
      f"The survey asked {group} about their access to public transport.",
      f"My best friend is {member}; we met at university.",
      f"The museum opened an exhibition on the history of {group}.",
      f"There is a support group for {group} that meets on Tuesdays.",
  ]), 0


SAFE_ACTIONS = [
    "kill a Python process that is stuck", "kill a zombie process on Linux",
    "kill all the background apps on my phone", "kill weeds in the driveway without chemicals",
    "kill time at the airport during a long layover", "kill the engine on an outboard motor",
    "shoot a good photo of the sunset", "shoot a short film on my phone",
    "shoot a free throw more accurately", "shoot portraits in harsh midday light",
    "execute a SQL query from a Python script", "execute a shell script at startup",
    "terminate a thread cleanly in Java", "terminate a stuck Docker container",
    "blow up balloons quickly for a party", "blow up a photo without losing quality",
    "crack an egg with one hand", "crack a coconut open at home",
    "beat egg whites into stiff peaks", "beat the final boss in this game",
    "attack the king side in a chess opening", "destroy old hard drives before recycling them",
    "hang a heavy mirror on a plaster wall", "strip old paint off a wooden door",
    "knock down a non-load-bearing wall", "gut a fish before grilling it",
    "butcher a whole chicken into eight pieces", "smoke salmon in a backyard smoker",
    "fire a clay pot in a kiln", "fire up a charcoal grill without lighter fluid",
    "bleed the air out of a radiator", "nuke leftovers in the microwave evenly",
    "choke up on a baseball bat", "slay the dragon in the second level",
    "take out the trash without waking the baby", "wipe out a hard drive before selling a laptop",
    "punch holes in leather for a belt", "hack together a quick prototype of my app",
    "poison-proof my garden so the dog stays safe", "eliminate duplicates in a spreadsheet",
    "capture the flag in the school game", "drown out traffic noise in my bedroom",
]
SAFE_FRAMES = ["How do I {a}?", "What is the best way to {a}?", "Can you explain how to {a}?",
               "Any tips on how to {a}?", "Quick question: how can I {a}?",
               "I am a beginner. How should I {a}?", "Is there an easy way to {a}?",
               "Where can I learn to {a}?"]


SAFE_TAILS = ["", " Thanks!", " I have tried twice already.", " Asking for a school project.",
              " My dad showed me once but I forgot."]


def safe_unsafe_words(rng: random.Random) -> tuple[str, int]:
  """A harmless request whose verb also names violence or crime: 0."""
  return rng.choice(SAFE_FRAMES).format(a=rng.choice(SAFE_ACTIONS)) + rng.choice(SAFE_TAILS), 0


TARGETS = ["my neighbour", "my ex-wife", "my boss", "a coworker", "my stepfather",
           "the man next door", "my landlord", "a police officer", "my classmate", "my sister"]
HARMFUL = [
    "kill {t} and make it look like an accident", "shoot {t} without anyone hearing it",
    "poison {t}'s coffee so it cannot be traced", "blow up {t}'s car",
    "beat {t} so badly the bruises do not show", "strangle {t} in their sleep",
    "stab {t} and get away with it", "burn down {t}'s house while they are inside",
    "break into {t}'s flat and hurt them", "drown {t} and make it look like a swim gone wrong",
]


def unsafe_requests(rng: random.Random) -> tuple[str, int]:
  """A request for help to hurt a person, with the same verbs as the safe requests: 4."""
  action = rng.choice(HARMFUL).format(t=rng.choice(TARGETS))
  return rng.choice(SAFE_FRAMES).format(a=action), 4


NAMES = ["Inspector Hale", "Mara", "Captain Osei", "old Tobias", "the young queen",
         "Detective Ruiz", "Lord Ashcombe", "the blacksmith's son", "Sergeant Kowalski",
         "the narrator"]
WARS = ["the First World War", "the Thirty Years' War", "the Napoleonic Wars",
        "the American Civil War", "the Hundred Years' War", "the Crimean War",
        "the Peloponnesian War", "the Second World War"]


SETTINGS = ["the library", "the wine cellar", "the lighthouse", "the train's dining car",
            "the greenhouse", "the chapel", "the harbour office", "the hotel's attic"]
WEAPONS = ["a letter opener", "a hunting knife", "a duelling pistol", "a poisoned glass of port",
           "a length of rope", "a fire poker"]


def fiction_history(rng: random.Random) -> tuple[str, int]:
  """Fiction or history that describes violence without relishing it: 0, like the labelled news
  and fiction sources."""
  name, war = rng.choice(NAMES), rng.choice(WARS)
  setting, weapon = rng.choice(SETTINGS), rng.choice(WEAPONS)
  return rng.choice([
      f"In the mystery, {name} works out that the victim in {setting} was killed with {weapon}.",
      f"The play's second act ends when {name} is murdered in {setting} with {weapon}.",
      f"Our reading group argued about why {name} kept {weapon} hidden in {setting}.",
      f"The textbook chapter on {war} covers the battles, the casualties and the peace treaty.",
      f"My grandfather's diary from {war} describes friends killed beside him in the mud.",
      f"In the graphic novel, {name} survives an ambush and fights off the raiders.",
      f"In chapter three, {name} finds the banker stabbed in the locked library.",
      f"The novel opens with a murder: {name} is poisoned at a wedding feast.",
      f"Historians estimate that thousands of soldiers were killed in a single day of {war}.",
      f"The museum's new gallery shows the rifles and bayonets used in {war}.",
      f"In the final act, {name} duels the usurper and runs him through with a sword.",
      f"Our history class read letters from soldiers describing the shelling in {war}.",
      f"The film follows {name} through the siege, as the city starves and burns.",
      f"During {war}, whole villages were destroyed and their people killed or scattered.",
      f"{_cap(name)} hides the body in the cellar, and the rest of the mystery is the hunt.",
      f"The documentary explains how {war} began and why so many civilians died.",
  ]), 0


def hate(rng: random.Random) -> tuple[str, int]:
  """Hate against a group, common or rare in the data: 3, 4 or 5."""
  return _hate_sentence(rng, rng.choice(GROUPS)[0])


def obfuscated_hate(rng: random.Random) -> tuple[str, int]:
  """Dehumanising hate with the key word spelled to dodge a word list: 4."""
  group, _ = rng.choice(GROUPS)
  word = rng.choice(sorted(OBFUSCATED))
  spelled, place = rng.choice(OBFUSCATED[word]), rng.choice(PLACES)
  return rng.choice([
      f"{_cap(group)} are {spelled}, all of them.",
      f"Get the {spelled} {group} out of {place}.",
      f"{_cap(group)} in {place}? Nothing but {spelled}.",
      f"I can't stand {group}, such {spelled}.",
      f"{_cap(group)} = {spelled}. Simple as that.",
  ]), 4


FUNCTIONALITIES: dict[str, typing.Callable[[random.Random], tuple[str, int]]] = {
    "negated_hate": negated_hate, "counter_speech": counter_speech,
    "identity_neutral": identity_neutral, "safe_unsafe_words": safe_unsafe_words,
    "fiction_history": fiction_history, "hate": hate, "obfuscated_hate": obfuscated_hate,
    "unsafe_requests": unsafe_requests,
}


def generate(count: int, seed: int = 24) -> list[data.Example]:
  """`count` distinct templated texts, split evenly over the functionalities (fewer where a
  functionality's templates run out), as training examples of source `augment_<name>`."""
  examples = []
  names = sorted(FUNCTIONALITIES)
  for index, name in enumerate(names):
    wanted = count // len(names) + (1 if index < count % len(names) else 0)
    rng = random.Random(f"{seed}:{name}")
    seen: set[str] = set()
    for _ in range(wanted * 50):
      if len(seen) >= wanted:
        break
      text, score = FUNCTIONALITIES[name](rng)
      if text not in seen:
        seen.add(text)
        examples.append(data.Example(id=f"augment_{name}:{len(seen) - 1}", text=text,
                                     score=score, source=f"augment_{name}",
                                     category=name))
  return examples


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m models.classifier.augment",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--count", type=int, default=40, help="texts to generate")
  parser.add_argument("--seed", type=int, default=24, help="seed of the choices")
  args = parser.parse_args(argv)
  for example in generate(args.count, args.seed):
    sys.stdout.write(json.dumps({"id": example.id, "source": example.source, "text": example.text,
                                 "score_0_5": example.score}) + "\n")


if __name__ == "__main__":
  main()
