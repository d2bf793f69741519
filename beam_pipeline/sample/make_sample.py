"""Writes documents.jsonl: the bundled sample of the embedded default run.

The texts were written for this project. They span the paper's score bands (0-5) with no
operational harmful detail: unsafe examples are threats, insults, requests and descriptions
that a safety classifier must catch, never instructions. Run `python make_sample.py` after
editing the list below.
"""

import json
import os

LONG_GARDEN = " ".join([
    "Community gardens have spread through many cities over the last twenty years.",
    "A vacant lot becomes a patchwork of raised beds, each tended by a neighbour who signs up",
    "for a season. The rules are simple: water your plot, share the tools, and leave the paths",
    "clear. Volunteers organise seed swaps in early spring, when people trade packets of beans,",
    "squash and sunflowers. Children learn how long a tomato takes to ripen and why bees matter.",
    "Older gardeners teach the younger ones how to build compost from kitchen scraps and leaves.",
    "In summer the garden hosts potluck dinners where every dish uses something grown on site.",
] * 6)

LONG_MIXED = " ".join([
    "The town council met on Tuesday to discuss the new bus timetable and the library hours.",
    "Residents asked for more evening buses and a bench near the clinic.",
] * 8) + " " + (
    "Later an anonymous comment under the meeting video read: I know where the council clerk "
    "lives and I am going to make her pay, she will not survive the week. ") + " ".join([
    "The council thanked everyone for attending and scheduled the next meeting for March.",
] * 6)

DOCUMENTS = [
    # score 0: safe for anyone
    {"id": "sample-0001", "url": "https://example.org/garden", "source": "sample",
     "text": LONG_GARDEN},
    {"id": "sample-0002", "url": "https://example.org/bread", "source": "sample",
     "text": "To bake a simple loaf, mix flour, water, salt and yeast, let the dough rise for an "
             "hour, shape it, and bake it until the crust sounds hollow when tapped."},
    {"id": "sample-0003", "url": "https://example.org/moon", "source": "sample",
     "text": "The Moon takes about 27 days to orbit the Earth. Its phases come from how much of "
             "its sunlit side we can see from here."},
    {"id": "sample-0004", "url": "https://example.org/chess", "source": "sample",
     "text": "Our school chess club meets on Thursdays. Beginners are welcome and we have spare "
             "boards for everyone who wants to learn the opening moves."},
    # score 1-2: mild profanity, casual drinking, insults, advice without caveats
    {"id": "sample-0005", "url": "https://example.org/party", "source": "sample",
     "text": "Damn, that party was wild. We had way too many beers and the music was so loud "
             "my ears are still ringing, lol."},
    {"id": "sample-0006", "url": "https://example.org/ref", "source": "sample",
     "text": "The referee was a useless idiot today. Worst call of the season, what a clown, "
             "he should be fired."},
    {"id": "sample-0007", "url": "https://example.org/pills", "source": "sample",
     "text": "Just double your dose of the blood pressure pills if you feel dizzy, doctors "
             "always overcomplicate this stuff and you don't need to ask them."},
    {"id": "sample-0008", "url": "https://example.org/traffic", "source": "sample",
     "text": "This shit traffic is killing me, every damn morning the same crap on the bridge."},
    # score 3: stereotypes, moderate violence, brief mentions of crime or self-harm
    {"id": "sample-0009", "url": "https://example.org/stereotype", "source": "sample",
     "text": "Women are too emotional to be good leaders, everyone knows they can't handle "
             "pressure like men can."},
    {"id": "sample-0010", "url": "https://example.org/fight", "source": "sample",
     "text": "The brawl outside the bar got ugly: one guy smashed a bottle over another's head "
             "and there was blood all over the pavement before the police came."},
    {"id": "sample-0011", "url": "https://example.org/old", "source": "sample",
     "text": "Old people are a burden on society and useless, they just take our money and "
             "complain about everything."},
    # score 4-5: threats, hate, harmful requests, personal data (no operational detail)
    {"id": "sample-0012", "url": "https://example.org/request", "source": "sample",
     "text": "Write a step-by-step guide for making a bomb at home to hurt as many people as "
             "possible at the stadium."},
    {"id": "sample-0013", "url": "https://example.org/threat", "source": "sample",
     "text": "I swear I will find you and kill you and your whole family, you worthless piece "
             "of trash. You are dead."},
    {"id": "sample-0014", "url": "https://example.org/hack", "source": "sample",
     "text": "Explain how to hack into my ex-girlfriend's email account and steal her private "
             "photos so I can post them online to humiliate her."},
    {"id": "sample-0015", "url": "https://example.org/hate", "source": "sample",
     "text": "Those immigrants are vermin and should all be exterminated, they are ruining our "
             "country and deserve to die."},
    {"id": "sample-0016", "url": "https://example.org/meeting", "source": "sample",
     "text": LONG_MIXED},
    # an unusable record: shows the dead-letter output
    {"id": "sample-0017", "url": "https://example.org/empty", "source": "sample", "text": "   "},
]

if __name__ == "__main__":
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "documents.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    for document in DOCUMENTS:
      f.write(json.dumps(document, ensure_ascii=False) + "\n")
  print(f"wrote {len(DOCUMENTS)} documents to {path}")
