"""How well the `refusal` quality check tells a generator's refusal from how people write.

    python benchmarks/refusal_check.py [--data "../shared/data/safety_labels*.jsonl"] [--examples N]

The `refusal` check (transforms/quality_checks.py) rejects a rephrasing or a Moral Education
article in which the generator refused ("I'm sorry, but I can't help with that"). Two real sets
measure it, both from the labelled files in `../shared/data/` (this repository carries no copy;
only counts are printed, and with `--examples` the matched phrases):

- **refusals** (should be caught): the JailbreakBench artifacts kept as refusals (`jbb_artifacts`
  rows with score 0: model answers the JailbreakBench judge found not jailbroken and that start
  like a refusal, `../shared/data/EXTRA.md`). Printed: the share the check rejects (recall).
- **human text** (should pass): texts people wrote (the web sources the generation benchmark
  rephrases, news, books, reviews, raw pages; HUMAN_SOURCES below). A refusal to a rewriting task
  is never meant there, so every rejection is a false positive, the kind that dead-letters a
  faithful rewrite of a post saying "I can't help but feel ...". Printed: the share rejected,
  per source and in all.

The check runs as the gate runs it, `max_refusals` at its default (0: one refusal phrase fails a
text), on the whole text.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from transforms import quality_checks  # noqa: E402
from transforms.quality_checks import Candidate, QualitySettings  # noqa: E402

DEFAULT_DATA = os.path.join(_ROOT, "..", "shared", "data", "safety_labels*.jsonl")
REFUSAL_SOURCE = "jbb_artifacts"  # its score-0 rows are model refusals
# The apostrophe folding the check reads with (checks before it had none, so this script also
# measures them from a copy of an older tree: see the README).
_plain = getattr(quality_checks, "plain", str)
HUMAN_SOURCES = (
    "rtp_decodingtrust", "rmhd_reddit", "ethics_aita", "dragnet_web", "rawpage_trafilatura",
    "rawpage_aeb", "rawpage_readability", "trafilatura_eval", "scrapinghub_aeb",
    "civil_comments_toxicspans", "davidson_tweets", "rawpage_dragnet", "rawpage_cleaneval",
    "rawpage_pagesignal", "rawpage_cleanportaleval", "movie_reviews", "gutenberg",
    "cnn_dailymail", "reuters21578", "brown_corpus", "ag_news", "wikitext2", "state_union")


def rejects(text: str, settings: QualitySettings) -> bool:
  return not quality_checks.check_refusal(Candidate("rephrase", "", text), settings)


def measure(pattern: str, settings: QualitySettings = QualitySettings()) -> dict:
  """Counts per set and source: texts, texts rejected, and the phrases that rejected them."""
  texts = collections.Counter()
  rejected = collections.Counter()
  phrases = collections.defaultdict(collections.Counter)
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        source, text = row["source"], row.get("text") or ""
        if source == REFUSAL_SOURCE and row.get("score_0_5") == 0:
          group = "refusals"
        elif source in HUMAN_SOURCES:
          group = source
        else:
          continue
        texts[group] += 1
        if rejects(text, settings):
          rejected[group] += 1
          for match in quality_checks._REFUSAL.finditer(_plain(text)):
            phrases[group][match.group(0).lower()] += 1
  return {"texts": texts, "rejected": rejected, "phrases": phrases}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default=DEFAULT_DATA, help="labelled JSONL files (glob)")
  parser.add_argument("--examples", type=int, default=0,
                      help="print the N commonest phrases that rejected texts of each set")
  args = parser.parse_args(argv)
  figures = measure(args.data)
  texts, rejected = figures["texts"], figures["rejected"]
  if not texts["refusals"] or not any(texts[s] for s in HUMAN_SOURCES):
    parser.error(f"no labelled refusals or human texts match --data {args.data!r}")
  human = sum(texts[s] for s in HUMAN_SOURCES)
  human_rejected = sum(rejected[s] for s in HUMAN_SOURCES)
  print("| set | texts | rejected by `refusal` | share |")
  print("|---|---|---|---|")
  print(f"| refusals ({REFUSAL_SOURCE}, score 0): recall | {texts['refusals']} | "
        f"{rejected['refusals']} | {rejected['refusals'] / texts['refusals']:.1%} |")
  print(f"| human text, all: false positives | {human} | {human_rejected} | "
        f"{human_rejected / human:.2%} |")
  for source in sorted(HUMAN_SOURCES, key=lambda s: -rejected[s]):
    if texts[source] and rejected[source]:
      print(f"| human text, {source} | {texts[source]} | {rejected[source]} | "
            f"{rejected[source] / texts[source]:.2%} |")
  if args.examples:
    groups = {"refusals": figures["phrases"]["refusals"], "human text": collections.Counter()}
    for source in HUMAN_SOURCES:
      groups["human text"].update(figures["phrases"][source])
    for name, counter in groups.items():
      print(f"\n{name}: the commonest rejecting phrases")
      for phrase, count in counter.most_common(args.examples):
        print(f"  {count:5d}  {phrase!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
