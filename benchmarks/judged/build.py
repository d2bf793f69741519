"""Builds benchmarks/judged/judged.jsonl: generated and reference texts, each with its source.

    python benchmarks/judged/build.py dialogues --output /tmp/judged/dialogues.jsonl
    python benchmarks/judged/build.py build --generation /tmp/judged/gen_t0.json \\
        --generation /tmp/judged/gen_t0.7.json --labels /tmp/judged/labels.tsv
    python benchmarks/judged/build.py check      # every stored reference still resolves

The texts come from three places (README.md beside this file says which and why):

- the embedded model's replies (SmolLM2-135M-Instruct, local backend, CPU) over the 200
  documents of benchmarks/generation_quality.py, one run per temperature, `--max_attempts=1`,
  `--output FILE` (every attempt's whole reply and finish reason); its Moral Education runs on
  the real refusal dialogues that `dialogues` writes (`--moral_inputs`), since none of the
  model's own dialogues passes;
- real LLM outputs in ../shared/data (JailbreakBench responses, DecodingTrust generations,
  PyRIT many-shot responses, the Safety-Tuned-LLaMAs answers), put into the branch they fit;
- human-written texts (speeches, encyclopedia articles, news, hate/counter-speech dialogues).

`build` writes every candidate row and keeps the labels (`usable`, `reason`) already stored in
judged.jsonl for the same id; a new row gets `usable: null` until it is labelled by a person
reading it (RUBRIC.md). The labels are never computed. Texts and sources whose licence does not
allow redistribution (and every source document: some are harmful) are stored as a reference
(a ../shared/data id) and a SHA-256 of the text; `resolve` reads them back at run time.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "safety_labels*.jsonl")
JUDGED = os.path.join(HERE, "judged.jsonl")
GOALS = os.path.join(HERE, "jbb_goals.json")

SAFEWEB, REFUSEWEB, MORAL_EDUCATION = "safeweb", "refuseweb", "moral_education"
BRANCH_KIND = {SAFEWEB: "rephrase", REFUSEWEB: "refuseweb", MORAL_EDUCATION: "moral_education"}
KIND_BRANCH = {kind: branch for branch, kind in BRANCH_KIND.items()}
# The rephrasing styles (models/generators/prompts.py STYLES), the style picked as the pipeline
# picks it: a seeded hash of the source id (prompts.pick_style, seed 0), spelled out here so the
# set does not move when the pipeline's code does.
STYLES = ("podcast", "textbook", "teacher_script", "talk", "parent_child",
          "friends_conversation", "children_video")
# RefuseWeb speaker names (transforms/dialogue.py SPEAKER_PAIRS), likewise.
SPEAKER_PAIRS = (("User", "Assistant"), ("Student", "Teacher"), ("Visitor", "Guide"),
                 ("Customer", "Support agent"), ("Learner", "Tutor"), ("Reader", "Librarian"))
# Sources whose texts may be stored here (licence allows redistribution); every other text is
# stored as a reference and a hash. Source documents are always references.
INLINE_SOURCES = {
    "jbb_artifacts": "MIT (JailbreakBench artifacts)",
    "pyrit_manyshot_responses": "MIT (PyRIT)",
    "state_union": "public domain",
    "gutenberg": "public domain (US)",
}
LICENCES = {
    **INLINE_SOURCES,
    "decodingtrust_toxic_gen": "CC BY-SA 4.0 (DecodingTrust): share-alike, kept out",
    "wikitext2": "CC BY-SA 3.0 / GFDL (Wikipedia): share-alike, kept out",
    "safety_tuned_llamas": "CC BY-NC 4.0: non-commercial, kept out",
    "reuters21578": "research use only, kept out",
    "ag_news": "non-commercial research, kept out",
    "cnn_dailymail": "articles (c) CNN/DMG, research use, kept out",
    "dialoconan": "research only, no redistribution, kept out",
}


def sha256(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seeded(key: str, salt: str, size: int, seed: int = 0) -> int:
  """prompts.seeded_index: a stable index in range(size) from a hash of (seed, salt, key)."""
  digest = hashlib.sha256(f"{seed}\0{salt}\0{key}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") % size


def pick_style(doc_id: str) -> str:
  return STYLES[seeded(doc_id, "style", len(STYLES))]


def pick_speakers(doc_id: str) -> tuple[str, str]:
  return SPEAKER_PAIRS[seeded(doc_id, "speakers", len(SPEAKER_PAIRS))]


def order(key: str) -> str:
  """The order rows are picked in: a hash of their id (the same on every machine)."""
  return sha256(f"judged\0{key}")


# --- ../shared/data -----------------------------------------------------------------------

_DATA_CACHE: dict = {}


def data_rows(pattern: str = DATA) -> dict[str, dict]:
  """Every labelled row of ../shared/data, by id (read once per process)."""
  if pattern not in _DATA_CACHE:
    rows = {}
    for path in sorted(glob.glob(pattern)):
      with open(path, encoding="utf-8") as f:
        for line in f:
          row = json.loads(line)
          rows[row["id"]] = row
    if not rows:
      raise SystemExit(f"no labelled data at {pattern}: the judged set reads its sources there")
    _DATA_CACHE[pattern] = rows
  return _DATA_CACHE[pattern]


def goals() -> dict[int, str]:
  with open(GOALS, encoding="utf-8") as f:
    return {int(index): goal for index, goal in json.load(f)["goals"].items()}


# --- real refusals as RefuseWeb dialogues -------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def finished(text: str) -> str:
  """`text` up to its last sentence end: the JailbreakBench responses stop at 150 tokens,
  mostly mid-sentence (the pipeline trims a reply at its token limit the same way)."""
  text = text.strip()
  ends = list(_SENTENCE_END.finditer(text))
  return text[:ends[-1].end()].strip() if ends else text


def jbb_index(row_id: str) -> int:
  """The behaviour index of a jbb_artifacts id (`jbb_artifacts:METHOD:MODEL:INDEX:r`)."""
  return int(row_id.split(":")[3])


def dialogue_reply(request: str, answer: str) -> str:
  """A dialogue as the RefuseWeb prompt asks for it (and as its `User:` opening starts it):
  one turn per paragraph, so a real answer of several paragraphs has them on lines of one
  paragraph (the pipeline ends a dialogue's last turn at its first blank line)."""
  answer = re.sub(r"\n\s*\n", "\n", answer.strip())
  return f"User: {request.strip()}\n\nAssistant: {answer}"


def rendered(request: str, answer: str, dialogue_id: str) -> str:
  """The dialogue as the pipeline writes a RefuseWeb document: seeded speaker names."""
  user, assistant = pick_speakers(dialogue_id)
  return f"{user}: {request.strip()}\n\n{assistant}: {answer.strip()}"


def jbb_refusals(rows: dict) -> list[dict]:
  """The JailbreakBench responses kept as refusals (score 0), in hash order."""
  return sorted((r for r in rows.values()
                 if r["source"] == "jbb_artifacts" and r["id"].endswith(":r")
                 and r["score_0_5"] == 0), key=lambda r: order(r["id"]))


def jbb_jailbroken(rows: dict) -> dict[int, list[dict]]:
  """The jailbroken JailbreakBench responses (score 4), by behaviour index, in hash order."""
  by_index: dict[int, list[dict]] = {}
  for row in sorted(rows.values(), key=lambda r: order(r["id"])):
    if row["source"] == "jbb_artifacts" and row["id"].endswith(":r") and row["score_0_5"] == 4:
      by_index.setdefault(jbb_index(row["id"]), []).append(row)
  return by_index


def moral_dialogues(rows: dict, count: int = 60) -> list[dict]:
  """The Moral Education inputs: `count` real refusals of distinct behaviours, each as a
  rendered RefuseWeb dialogue (the JBB goal asked, the model's refusal up to its last full
  sentence answering)."""
  goal_of, seen, picked = goals(), set(), []
  for row in jbb_refusals(rows):
    index = jbb_index(row["id"])
    if index in seen:
      continue
    seen.add(index)
    dialogue_id = f"jbb_dialogue:{row['id']}"
    picked.append({"id": dialogue_id,
                   "text": rendered(goal_of[index], finished(row["text"]), dialogue_id)})
    if len(picked) == count:
      break
  return picked


# --- references: what the judged file stores in place of a text --------------------------

def resolve_source(source_id: str, rows: dict) -> str:
  """The text of a source reference: a ../shared/data id, a built refusal dialogue
  (`jbb_dialogue:<jbb id>`) or a JailbreakBench goal (`jbb_goal:<index>`)."""
  if source_id.startswith("jbb_dialogue:"):
    jbb_id = source_id[len("jbb_dialogue:"):]
    return rendered(goals()[jbb_index(jbb_id)], finished(rows[jbb_id]["text"]), source_id)
  if source_id.startswith("jbb_goal:"):
    return goals()[int(source_id.split(":", 1)[1])]
  return rows[source_id]["text"]


def resolve_text(reference: dict, rows: dict) -> str:
  """The text of a text reference: `{"id": ID}` (a ../shared/data row), with `"cut": [a, b]`
  (its characters a to b), `{"dialogue": [REQUEST_ID, ANSWER_ID]}` (a request and an answer as
  a RefuseWeb reply), or `{"jbb_dialogue": JBB_ID}` (the JailbreakBench goal and that
  response as a RefuseWeb reply)."""
  if "dialogue" in reference:
    request, answer = reference["dialogue"]
    return dialogue_reply(rows[request]["text"], finished(rows[answer]["text"]))
  if "jbb_dialogue" in reference:
    jbb_id = reference["jbb_dialogue"]
    return dialogue_reply(goals()[jbb_index(jbb_id)], finished(rows[jbb_id]["text"]))
  text = rows[reference["id"]]["text"]
  if "cut" in reference:
    start, end = reference["cut"]
    text = text[start:end]
  return finished(text) if reference.get("finished") else text


def resolve(row: dict, rows: dict | None = None) -> tuple[str, str]:
  """(source, text) of a judged row, read back from ../shared/data where the row holds only
  references; raises ValueError when a text read back is not the one that was labelled."""
  rows = data_rows() if rows is None else rows
  source = resolve_source(row["source_id"], rows)
  text = row["text"] if "text" in row else resolve_text(row["text_ref"], rows)
  for name, value in (("source", source), ("text", text)):
    if sha256(value) != row[f"{name}_sha256"]:
      raise ValueError(f"{row['id']}: its {name} read back from ../shared/data is not the one "
                       "that was labelled (the data changed?)")
  return source, text


# --- the candidates -----------------------------------------------------------------------

def candidate(row_id: str, branch: str, origin: str, source_id: str, rows: dict, *,
              text: str | None = None, text_ref: dict | None = None, style: str | None = None,
              **extra) -> dict:
  """One judged row (without its label): the text inline or as a reference, the source as a
  reference, both hashed."""
  source = resolve_source(source_id, rows)
  value = text if text is not None else resolve_text(text_ref, rows)
  row = {"id": row_id, "branch": branch, "kind": BRANCH_KIND[branch],
         "style": style or {REFUSEWEB: "dialogue", MORAL_EDUCATION: "article"}.get(branch, ""),
         "origin": origin, "source_id": source_id, "source_sha256": sha256(source)}
  if text is not None:
    row["text"] = text
  else:
    row["text_ref"] = text_ref
  row["text_sha256"] = sha256(value)
  if branch == REFUSEWEB:
    row["speakers"] = "/".join(pick_speakers(source_id))
  row.update(extra)
  return row


def generated(path: str, rows: dict) -> list[dict]:
  """The embedded model's replies in a benchmarks/generation_quality.py `--output` file (run
  with `--max_attempts=1`): one row per reply, with the gate's verdict at generation."""
  with open(path, encoding="utf-8") as f:
    run = json.load(f)
  figures = run["figures"]
  temperature = figures.get("temperature", 0.0)
  origin = f"smollm2-135m@T={temperature:g}"
  out = []
  for request in run["requests"]:
    branch = KIND_BRANCH[request["kind"]]
    for number, (reply, review) in enumerate(zip(request["replies"], request["attempts"]), 1):
      suffix = f"#{number}" if number > 1 else ""
      style = request["style"] if branch == SAFEWEB else None
      out.append(candidate(
          f"{origin}:{branch}:{request['id']}{suffix}", branch, origin, request["id"], rows,
          text=reply["text"], style=style, finish_reason=reply["finish_reason"],
          max_new_tokens=figures["max_new_tokens"], temperature=temperature,
          verdict_at_generation=review))
  return out


def _by_source(rows: dict, source: str, score=None) -> list[dict]:
  return sorted((r for r in rows.values() if r["source"] == source
                 and (score is None or r["score_0_5"] in score)), key=lambda r: order(r["id"]))


def _paragraph_cut(text: str, start: int, least: int, most: int) -> list[int]:
  """[a, b]: whole lines of `text` (its paragraphs), at least `least` characters where the text
  has them and at most `most` (unless one line is longer): from its beginning when `start` is
  0, else from the first prose line (80 characters or more) at or after `start`."""
  lines = [(m.start(), m.end()) for m in re.finditer(r"[^\n]*\S[^\n]*", text)]
  if start:
    lines = [(a, b) for a, b in lines if a >= start]
    while lines and lines[0][1] - lines[0][0] < 80:
      lines.pop(0)
  if not lines:
    return [0, len(text)]
  begin, end = lines[0][0], lines[0][1]
  for _, line_end in lines[1:]:
    if end - begin >= least or line_end - begin > most:
      break
    end = line_end
  return [begin, end]


def real_and_human(rows: dict) -> list[dict]:
  """The rows from ../shared/data: real LLM outputs put into the branch they fit, and
  human-written texts (README.md beside this file gives the mapping)."""
  out, goal_of = [], goals()
  jailbroken = jbb_jailbroken(rows)

  def jbb_source(index: int, not_id: str) -> str:
    """A harmful text on behaviour `index` other than `not_id`: a jailbroken response, else a
    PAIR attack prompt, else the goal itself (what RefuseWeb would be given)."""
    for row in jailbroken.get(index, []):
      if row["id"] != not_id:
        return row["id"]
    for row in _by_source(rows, "jbb_artifacts"):
      if row["id"].endswith(":p") and jbb_index(row["id"]) == index:
        return row["id"]
    return f"jbb_goal:{index}"

  # RefuseWeb: the real refusals, goal asked, refusal answering (the 60 Moral Education inputs
  # and 20 more); the jailbroken answers to the same goals (they comply).
  moral = [d["id"] for d in moral_dialogues(rows)]
  refusals = [r["id"] for r in jbb_refusals(rows)]
  chosen = [m[len("jbb_dialogue:"):] for m in moral]
  chosen += [r for r in refusals if r not in chosen][:20]
  for jbb_id in chosen:
    index = jbb_index(jbb_id)
    model = jbb_id.split(":")[2]
    out.append(candidate(
        f"jbb:refuseweb:{jbb_id}", REFUSEWEB, f"jbb-refusal:{model}", jbb_source(index, jbb_id),
        rows, text=dialogue_reply(goal_of[index], finished(rows[jbb_id]["text"])),
        finish_reason=""))
  complied = [rs[0]["id"] for _, rs in sorted(jailbroken.items(), key=lambda kv: order(
      str(kv[0])))]
  for jbb_id in complied[:25]:
    out.append(candidate(
        f"jbb:refuseweb:{jbb_id}", REFUSEWEB, f"jbb-jailbroken:{jbb_id.split(':')[2]}",
        jbb_source(jbb_index(jbb_id), jbb_id), rows, text_ref={"jbb_dialogue": jbb_id},
        finish_reason=""))
  # SafeWeb: a jailbroken answer as the "rewrite" of another answer to the same goal (a
  # faithful rewrite that kept the harm), for other goals than above.
  for jbb_id in complied[25:50]:
    source_id = jbb_source(jbb_index(jbb_id), jbb_id)
    out.append(candidate(
        f"jbb:safeweb:{jbb_id}", SAFEWEB, f"jbb-jailbroken:{jbb_id.split(':')[2]}", source_id,
        rows, text_ref={"id": jbb_id, "finished": True}, style=pick_style(source_id),
        finish_reason=""))
  # Moral Education: a real refusal alone, as the article of its own dialogue.
  for dialogue_id in moral[:10]:
    jbb_id = dialogue_id[len("jbb_dialogue:"):]
    out.append(candidate(
        f"jbb:moral_education:{jbb_id}", MORAL_EDUCATION, f"jbb-refusal:{jbb_id.split(':')[2]}",
        dialogue_id, rows, text=finished(rows[jbb_id]["text"]), finish_reason=""))
  # Safety-Tuned LLaMAs: a harmful instruction and the dataset's answer as a dialogue.
  pairs = [r for r in _by_source(rows, "safety_tuned_llamas", score=(3, 4))
           if r["id"].endswith(":i") and r["id"][:-1] + "o" in rows]
  for row in pairs[:40]:
    answer = row["id"][:-1] + "o"
    out.append(candidate(
        f"safety_tuned_llamas:refuseweb:{row['id']}", REFUSEWEB, "safety_tuned_llamas",
        row["id"], rows, text_ref={"dialogue": [row["id"], answer]}, finish_reason=""))
  # DIALOCONAN: whole hater / NGO operator threads, as RefuseWeb candidates.
  threads = [r for r in _by_source(rows, "dialoconan") if ";dialogue;" in r["orig_label"]]
  for row in threads[:10]:
    out.append(candidate(f"human:refuseweb:{row['id']}", REFUSEWEB, "human:dialoconan",
                         row["id"], rows, text_ref={"id": row["id"]}, finish_reason=""))
  # PyRIT many-shot answers (prompts not kept): as rewrites of themselves.
  for score, count in ((4, 20), (0, 10)):
    for row in _by_source(rows, "pyrit_manyshot_responses", score=(score,))[:count]:
      kept = {"text": row["text"]} if score == 0 else {"text_ref": {"id": row["id"]}}
      out.append(candidate(f"pyrit:safeweb:{row['id']}", SAFEWEB, "pyrit_manyshot", row["id"],
                           rows, style=pick_style(row["id"]), finish_reason="", **kept))
  # DecodingTrust toxic generations: as rewrites of themselves (the rewrite kept the abuse).
  for row in _by_source(rows, "decodingtrust_toxic_gen")[:25]:
    out.append(candidate(
        f"decodingtrust:safeweb:{row['id']}", SAFEWEB, f"decodingtrust:{row['id'].split(':')[1]}",
        row["id"], rows, text_ref={"id": row["id"]}, style=pick_style(row["id"]),
        finish_reason=""))
  # Human-written: speeches as talks, encyclopedia leads as textbook sections (the source is
  # the document the excerpt comes from), news and fiction in the style the pipeline would ask.
  for row in _by_source(rows, "state_union")[:30]:
    cut = _paragraph_cut(row["text"], 1200, 900, 2500)
    out.append(candidate(f"human:safeweb:{row['id']}", SAFEWEB, "human:state_union",
                         row["id"], rows, text=row["text"][cut[0]:cut[1]], style="talk",
                         finish_reason=""))
  leads = [r for r in _by_source(rows, "wikitext2") if "chunk=0" in r["orig_label"]]
  for row in leads[:30]:
    out.append(candidate(
        f"human:safeweb:{row['id']}", SAFEWEB, "human:wikitext2", row["id"], rows,
        text_ref={"id": row["id"], "cut": _paragraph_cut(row["text"], 0, 900, 2500)},
        style="textbook", finish_reason=""))
  for source, count in (("reuters21578", 8), ("cnn_dailymail", 8), ("ag_news", 6)):
    for row in _by_source(rows, source)[:count]:
      out.append(candidate(
          f"human:safeweb:{row['id']}", SAFEWEB, f"human:{source}", row["id"], rows,
          text_ref={"id": row["id"], "cut": _paragraph_cut(row["text"], 0, 600, 2500)},
          style=pick_style(row["id"]), finish_reason=""))
  for row in _by_source(rows, "gutenberg")[:8]:
    cut = _paragraph_cut(row["text"], 0, 600, 2000)
    out.append(candidate(f"human:safeweb:{row['id']}", SAFEWEB, "human:gutenberg", row["id"],
                         rows, text=row["text"][cut[0]:cut[1]], style=pick_style(row["id"]),
                         finish_reason=""))
  return out


LABEL_FIELDS = ("usable", "reason")


def read_labels(path: str) -> dict[str, dict]:
  """Labels written while reading, one per line: `id<TAB>1|0<TAB>code: a few words`."""
  labels = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      row_id, usable, reason = line.rstrip("\n").split("\t")
      if usable not in ("0", "1"):
        raise ValueError(f"{path}:{number}: usable is 1 or 0, not {usable!r}")
      labels[row_id] = {"usable": usable == "1", "reason": reason}
  return labels


def build(generations: list[str], judged: str = JUDGED, data: str = DATA,
          new_labels: dict | None = None) -> list[dict]:
  """Every candidate row, with the labels judged.jsonl already holds for the same id and
  text (a row whose text changed loses its label: it has to be read again), and those of
  `new_labels` ({id: {"usable", "reason"}}, read_labels) over them."""
  rows = data_rows(data)
  labels = {}
  if os.path.exists(judged):
    with open(judged, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          old = json.loads(line)
          labels[old["id"]] = old
  out = []
  for path in generations:
    out.extend(generated(path, rows))
  out.extend(real_and_human(rows))
  seen = set()
  for row in out:
    if row["id"] in seen:
      raise ValueError(f"two candidates with the id {row['id']}")
    seen.add(row["id"])
    old = labels.get(row["id"], {})
    same = (old.get("text_sha256") == row["text_sha256"]
            and old.get("source_sha256") == row["source_sha256"])
    for field in LABEL_FIELDS:
      row[field] = old.get(field) if same else None
    if new_labels and row["id"] in new_labels:
      row.update(new_labels[row["id"]])
  unknown = set(new_labels or ()) - seen
  if unknown:
    raise ValueError(f"labels for rows that are not candidates: {sorted(unknown)[:5]}")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default=DATA, help="labelled JSONL files (glob)")
  sub = parser.add_subparsers(dest="command", required=True)
  dialogues = sub.add_parser("dialogues", help="write the Moral Education inputs (JSONL)")
  dialogues.add_argument("--output", required=True)
  make = sub.add_parser("build", help="write judged.jsonl from the data and the generations")
  make.add_argument("--generation", action="append", default=[],
                    help="a generation_quality.py --output file (repeat per temperature)")
  make.add_argument("--output", default=JUDGED)
  make.add_argument("--labels", default=None,
                    help="labels written while reading (id TAB 1|0 TAB reason), over the "
                         "stored ones")
  sub.add_parser("check", help="read every row's source and text back and check its hash")
  args = parser.parse_args(argv)
  if args.command == "dialogues":
    with open(args.output, "w", encoding="utf-8") as f:
      for row in moral_dialogues(data_rows(args.data)):
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
  elif args.command == "build":
    built = build(args.generation, args.output, args.data,
                  read_labels(args.labels) if args.labels else None)
    with open(args.output, "w", encoding="utf-8") as f:
      for row in built:
        f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    unlabelled = sum(row["usable"] is None for row in built)
    print(f"{len(built)} rows written to {args.output}, {unlabelled} without a label")
  else:
    rows = data_rows(args.data)
    with open(JUDGED, encoding="utf-8") as f:
      judged = [json.loads(line) for line in f if line.strip()]
    for row in judged:
      resolve(row, rows)
    print(f"{len(judged)} rows: every source and text reads back as labelled")


if __name__ == "__main__":
  sys.exit(main())
