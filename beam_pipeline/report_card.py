"""The data report card: report.html beside report.json, one page to read a run at a glance.

It shows, from report.json's figures (all Beam metrics counters): where the documents went, the
safety-score distribution per branch and per source, the harmfulness-tag rate, dead letters per
stage and reason, the two checks, and a few sample outputs per branch (from samples/<branch>.json,
written by the document sink). The page is self-contained (inline CSS, no script, nothing
fetched) and every figure carries `data-figure="<path in report.json>"` and `data-value`, so a
test can check the rendered page against report.json. All text from the data is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import typing

from apache_beam.io.filesystems import FileSystems

from corpus.records import BRANCHES, SAMPLES_DIR
from transforms.quality_checks import BRANCH_KINDS, KIND_CHECKS
from transforms.quality_samples import QUALITY_SAMPLES_PREFIX

REPORT_CARD = "report.html"
BRANCH_TITLES = {
    "raw": "raw: safe originals (score 0), kept as they are",
    "tagged": "tagged: unsafe originals with harmfulness tags",
    "safeweb": "safeweb: rephrased into safe educational text",
    "refuseweb": "refuseweb: refusal dialogues",
    "moral_education": "moral_education: articles written from the refusals",
}
SCORE_COLOURS = ("#2e7d32", "#9e9d24", "#f9a825", "#ef6c00", "#d84315", "#b71c1c")
SCORE_MEANINGS = ("safe", "minimally unsafe", "slightly unsafe", "moderately unsafe",
                  "clearly unsafe", "highly unsafe")

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0; background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 16px; margin: 20px 0 8px; }
p.lead { color: #57606a; margin: 0 0 16px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 600; }
.ok { background: #dafbe1; color: #116329; } .fail { background: #ffebe9; color: #a40e26; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.tile { flex: 1 1 120px; border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 14px; }
.tile .figure { font-size: 24px; font-weight: 700; display: block; }
.tile .label { color: #57606a; font-size: 13px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eaeef2;
         vertical-align: top; }
th { font-weight: 600; background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.bar { width: 38%; }
.bar-track { background: #eaeef2; height: 14px; border-radius: 3px; overflow: hidden;
             display: flex; }
.bar-fill { background: #0969da; height: 100%; }
.stack { display: flex; height: 16px; border-radius: 3px; overflow: hidden; background: #eaeef2; }
.stack span { display: block; height: 100%; }
.legend span { display: inline-block; margin-right: 14px; font-size: 13px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 4px;
          vertical-align: -1px; }
.sample { border: 1px solid #d0d7de; border-radius: 8px; margin: 10px 0; }
.sample header { background: #f6f8fa; padding: 6px 12px; font-size: 13px; color: #57606a;
                 border-bottom: 1px solid #d0d7de; }
.sample header b { color: #1f2328; }
.sample .text { white-space: pre-wrap; word-wrap: break-word; margin: 0; padding: 10px 12px;
                font: 13px/1.5 ui-monospace, SFMono-Regular, Menlo, monospace; max-height: 320px;
                overflow: auto; }
.muted { color: #57606a; }
td.good { background: #dafbe1; } td.fair { background: #fff8c5; } td.poor { background: #ffebe9; }
.pair { display: grid; grid-template-columns: 1fr 1fr; }
.pair .text + .text { border-left: 1px solid #d0d7de; }
.pair .label { font: 600 12px system-ui, sans-serif; color: #57606a; display: block;
               margin-bottom: 4px; }
"""


def _escape(value: typing.Any) -> str:
  return html.escape(str(value), quote=True)


def _number(path: str, value: typing.Union[int, float], text: str | None = None) -> str:
  """A figure of report.json, marked with its path so a test can find it in the page."""
  shown = text if text is not None else (f"{value:,}" if isinstance(value, int) else str(value))
  return (f'<span data-figure="{_escape(path)}" data-value="{_escape(value)}">'
          f"{_escape(shown)}</span>")


def _figure(path: str, value: typing.Union[int, float]) -> str:
  """A count as a number, a fraction (a float) as a percentage."""
  if isinstance(value, float):
    return _number(path, value, f"{100 * value:.2f}%")
  return _number(path, value)


def _bar(value: int, largest: int) -> str:
  width = 100.0 * value / largest if largest else 0.0
  return (f'<div class="bar-track"><div class="bar-fill" style="width:{width:.2f}%"></div>'
          "</div>")


def _count_cells(path: str, value: int, largest: int) -> str:
  """A table row's count cell (the figure at `path` of report.json) and its bar."""
  return f'<td class="num">{_number(path, value)}</td><td class="bar">{_bar(value, largest)}</td>'


def _count_rows(rows: typing.Iterable[typing.Tuple[str, str, int]]) -> str:
  """Table rows of (label HTML, path in report.json, count), bars scaled to the largest."""
  rows = list(rows)
  largest = max((value for _, _, value in rows), default=0)
  return "".join(f"<tr><td>{label}</td>{_count_cells(path, value, largest)}</tr>"
                 for label, path, value in rows)


def _score_stack(by_score: dict) -> str:
  total = sum(by_score.values())
  parts = []
  for score in range(6):
    n = by_score.get(str(score), 0)
    if n and total:
      parts.append(
          f'<span title="score {score}: {n:,}" style="width:{100.0 * n / total:.2f}%;'
          f'background:{SCORE_COLOURS[score]}"></span>')
  return f'<div class="stack">{"".join(parts)}</div>'


def _legend() -> str:
  items = "".join(
      f'<span><i class="swatch" style="background:{SCORE_COLOURS[s]}"></i>{s} {SCORE_MEANINGS[s]}'
      "</span>" for s in range(6))
  return f'<p class="legend">{items}</p>'


def _tile(label: str, figure: str) -> str:
  return (f'<div class="tile"><span class="figure">{figure}</span>'
          f'<span class="label">{label}</span></div>')


def _summary_section(report: dict) -> str:
  written = sum(report["per_branch"].values())
  tags = report.get("tags", {})
  tiles = [
      _tile("documents read", _number("documents_read", report["documents_read"])),
      _tile("valid documents", _number("documents_valid", report["documents_valid"])),
      _tile("documents written", f"{written:,}"),
      _tile("dead letters", _number("dead_letters_total", report["dead_letters_total"])),
      _tile("harmfulness tags inserted", _number("tags_inserted", report["tags_inserted"])),
  ]
  if tags:
    tiles.append(_tile(
        "tag rate (tags per word gap)",
        _number("tags/rate", tags["rate"], f"{100 * tags['rate']:.2f}%")))
  return f'<div class="tiles">{"".join(tiles)}</div>'


def _branches_section(report: dict) -> str:
  per_branch = report["per_branch"]
  rows = _count_rows(
      (_escape(BRANCH_TITLES.get(branch, branch)), f"per_branch/{branch}", per_branch[branch])
      for branch in _ordered(per_branch))
  return ("<h2>Where the documents went</h2>"
          '<table><tr><th>branch</th><th class="num">documents</th><th></th></tr>'
          f"{rows}</table>")


def _scores_section(report: dict) -> str:
  per_score = report["per_score"]
  rows = _count_rows(
      (f'<i class="swatch" style="background:{SCORE_COLOURS[int(score)]}"></i>'
       f"{_escape(score)} {SCORE_MEANINGS[int(score)]}", f"per_score/{score}", n)
      for score, n in sorted(per_score.items(), key=lambda item: int(item[0])))
  parts = ["<h2>Safety scores of the originals</h2>",
           '<p class="lead">Every valid document scored 0 (safe) to 5 (highly unsafe) by the '
           "classifier, the maximum over its windows.</p>",
           '<table><tr><th>score</th><th class="num">documents</th><th></th></tr>',
           rows, "</table>"]
  distribution = report.get("score_distribution")
  if distribution:
    parts.append("<h2>Score distribution per branch and source</h2>")
    parts.append('<p class="lead">Documents written, by the score of what was written: the '
                 "original's score in raw and tagged, the safety gate's score of the generated "
                 "text in the other branches.</p>")
    parts.append(_legend())
    header = "".join(f'<th class="num">{s}</th>' for s in range(6))
    for branch in _ordered(distribution):
      sources = distribution[branch]
      parts.append(f"<h3>{_escape(BRANCH_TITLES.get(branch, branch))}</h3>")
      if not sources:
        parts.append('<p class="muted">No documents.</p>')
        continue
      rows = []
      totals = {str(s): 0 for s in range(6)}
      for source, by_score in sources.items():
        cells = "".join(
            f'<td class="num">'
            f'{_number(f"score_distribution/{branch}/{source}/{s}", by_score.get(str(s), 0))}'
            "</td>" for s in range(6))
        for s in range(6):
          totals[str(s)] += by_score.get(str(s), 0)
        rows.append(f"<tr><td>{_escape(source)}</td>{cells}"
                    f'<td class="bar">{_score_stack(by_score)}</td></tr>')
      if len(sources) > 1:
        cells = "".join(f'<td class="num"><b>{totals[str(s)]:,}</b></td>' for s in range(6))
        rows.append(f"<tr><td><b>all sources</b></td>{cells}"
                    f'<td class="bar">{_score_stack(totals)}</td></tr>')
      parts.append(f"<table><tr><th>source</th>{header}<th></th></tr>{''.join(rows)}</table>")
  return "".join(parts)


def _tags_section(report: dict) -> str:
  tags = report.get("tags")
  if not tags:
    return ""
  rows = [
      ("tagged documents", _number("tags/documents", tags["documents"])),
      ("words in them", _number("tags/words", tags["words"])),
      ("word gaps (words after the first)", _number("tags/word_gaps", tags["word_gaps"])),
      ("tags", _number("tags/tags", tags["tags"])),
      ("tag rate", _number("tags/rate", tags["rate"], f"{100 * tags['rate']:.2f}%")),
  ]
  return (
      "<h2>Harmfulness tags</h2>"
      '<p class="lead">In the tagged branch, <code>&lt;potentially_unsafe_content&gt;</code> goes '
      "before each word after a document's first with the configured probability (the paper's "
      "5%).</p><table>"
      + "".join(f'<tr><td>{label}</td><td class="num">{figure}</td></tr>' for label, figure in rows)
      + "</table>")


def _dead_letters_section(report: dict) -> str:
  dead = report["dead_letters"]
  entries = [(stage, reason, n) for stage, reasons in dead.items() for reason, n in reasons.items()]
  parts = ["<h2>Dead letters</h2>",
           '<p class="lead">Records that could not be used, kept in dead_letter/ with their '
           f'stage and reason: {_number("dead_letters_total", report["dead_letters_total"])} in '
           f'all, {_number("dead_letters_written", report["dead_letters_written"])} written.</p>']
  if not entries:
    parts.append('<p class="muted">None.</p>')
    return "".join(parts)
  largest = max(n for _, _, n in entries)
  rows = "".join(
      f"<tr><td>{_escape(stage)}</td><td>{_escape(reason)}</td>"
      f'{_count_cells(f"dead_letters/{stage}/{reason}", n, largest)}</tr>'
      for stage, reason, n in sorted(entries, key=lambda entry: (-entry[2], entry[0], entry[1])))
  parts.append('<table><tr><th>stage</th><th>reason</th><th class="num">records</th><th></th>'
               f"</tr>{rows}</table>")
  return "".join(parts)


def _checks_section(report: dict) -> str:
  checks = report["checks"]
  originals = checks["originals"]

  def verdict(holds: bool) -> str:
    return f'<span class="badge {"ok" if holds else "fail"}">{"holds" if holds else "FAILS"}</span>'

  rows = [
      "<tr><td>originals</td><td>read "
      f'{_number("checks/originals/documents_read", originals["documents_read"])} = raw '
      f'{_number("checks/originals/raw", originals["raw"])} + tagged '
      f'{_number("checks/originals/tagged", originals["tagged"])} + dead letters '
      + _number("checks/originals/dead_lettered_before_routing",
                originals["dead_lettered_before_routing"]) +
      f"</td><td>{verdict(originals['holds'])}</td></tr>"]
  for branch, entry in checks["generation"].items():
    path = f"checks/generation/{branch}"
    others = "".join(  # any further figure of the check (failures, their fraction, ...)
        f'; {_escape(name.replace("_", " "))} {_figure(f"{path}/{name}", value)}'
        for name, value in entry.items()
        if name not in ("requests", "outputs", "dead_letters", "holds")
        and isinstance(value, (int, float)) and not isinstance(value, bool))
    rows.append(
        f"<tr><td>{_escape(branch)}</td><td>requests "
        f'{_number(f"{path}/requests", entry["requests"])} = outputs '
        f'{_number(f"{path}/outputs", entry["outputs"])} + dead letters '
        f'{_number(f"{path}/dead_letters", entry["dead_letters"])}'
        f'<span class="muted">{others}</span>'
        f"</td><td>{verdict(entry['holds'])}</td></tr>")
  reading = checks.get("read")
  if reading:
    rows.append(
        "<tr><td>read failures</td><td>dead-lettered when read "
        f'{_number("checks/read/dead_lettered", reading["dead_lettered"])} of '
        f'{_number("checks/read/documents_read", reading["documents_read"])} records = '
        f'{_figure("checks/read/fraction", reading["fraction"])}, at most '
        f'{_figure("checks/read/max_fraction", reading["max_fraction"])}'
        f"</td><td>{verdict(reading['holds'])}</td></tr>")
  scoring = checks.get("scoring")
  if scoring:
    rows.append(
        "<tr><td>score failures</td><td>inference failed for "
        f'{_number("checks/scoring/failures", scoring["failures"])} of '
        f'{_number("checks/scoring/documents", scoring["documents"])} documents = '
        f'{_figure("checks/scoring/fraction", scoring["fraction"])}, at most '
        f'{_figure("checks/scoring/max_fraction", scoring["max_fraction"])}'
        f"</td><td>{verdict(scoring['holds'])}</td></tr>")
  given = checks.get("input")
  if given:
    rows.insert(0, (
        "<tr><td>empty input</td><td>records read "
        f'{_number("checks/input/documents_read", given["documents_read"])} from '
        f'{_number("checks/input/files_matched", given["files_matched"])} files matched'
        + (f', {_number("checks/input/documents_valid", given["documents_valid"])} of them '
           "valid" if "documents_valid" in given else "")
        + (" (an empty input allowed)" if given["allow_empty_input"] else ", at least 1")
        + f"</td><td>{verdict(given['holds'])}</td></tr>"))
  return ("<h2>Checks: nothing lost</h2><table><tr><th>check</th><th>equation</th><th></th></tr>"
          f"{''.join(rows)}</table>")


def _samples_section(samples: dict) -> str:
  parts = ["<h2>Sample outputs per branch</h2>",
           '<p class="lead">The documents of each branch with the smallest hash of their id '
           "(the same on every run), text cut short where long.</p>"]
  for branch in _ordered(samples):
    parts.append(f"<h3>{_escape(BRANCH_TITLES.get(branch, branch))}</h3>")
    entries = samples[branch]
    if not entries:
      parts.append('<p class="muted">No documents in this branch.</p>')
      continue
    for sample in entries:
      facts = [f"<b>{_escape(sample.get('id', ''))}</b>",
               f"source {_escape(sample.get('source', ''))}",
               f"score {_escape(sample.get('safety_score', ''))}"]
      for name in ("style", "parent_id", "url"):
        if sample.get(name):
          facts.append(f"{name.replace('_', ' ')} {_escape(sample[name])}")
      if sample.get("tag_count"):
        facts.append(f"{_escape(sample['tag_count'])} tags")
      text = sample.get("text", "")
      more = int(sample.get("text_chars", len(text))) - len(text)
      tail = f'<span class="muted"> … ({more:,} more characters)</span>' if more > 0 else ""
      parts.append(
          f'<article class="sample" data-branch="{_escape(branch)}">'
          f'<header>{" · ".join(facts)}</header>'
          f'<div class="text">{_escape(text)}{tail}</div></article>')
  return "".join(parts)


def _rate_cell(path: str, rate) -> str:
  """A pass rate cell, coloured: at least 90% good, at least 50% fair, else poor."""
  if rate is None:
    return '<td class="num muted">-</td>'
  grade = "good" if rate >= 0.9 else "fair" if rate >= 0.5 else "poor"
  return f'<td class="num {grade}">{_number(path, rate, f"{100 * rate:.0f}%")}</td>'


def _quality_section(report: dict) -> str:
  """Per branch and style: the requests, the share that passed every check (after retries,
  and at the first attempt), and each check's pass rate over the attempts it reviewed; then
  source beside output for passing and rejected texts."""
  quality = report.get("quality") or {}
  parts = ["<h2>Quality of the generated text</h2>",
           '<p class="lead">Every generated text passes the quality checks (transforms/'
           "quality.py) or is retried, then dead-lettered as quality_&lt;check&gt;. "
           "Per check: the share of reviewed attempts that passed it.</p>"]
  if not quality:
    parts.append('<p class="muted">No text was generated.</p>')
  for branch in _ordered(quality):
    styles = quality[branch]
    checks = KIND_CHECKS[BRANCH_KINDS[branch]] if branch in BRANCH_KINDS else sorted(
        {check for entry in styles.values() for check in entry["checks"]})
    header = "".join(f'<th class="num">{_escape(check.replace("_", " "))}</th>'
                     for check in checks)
    rows = []
    for style, entry in sorted(styles.items()):
      path = f"quality/{branch}/{style}"
      cuts = ", ".join(f"{_escape(cut.replace('_', ' '))} {_number(f'{path}/cuts/{cut}', n)}"
                       for cut, n in sorted(entry["cuts"].items()))
      rows.append(
          f"<tr><td>{_escape(style)}</td>"
          f'<td class="num">{_number(f"{path}/requests", entry["requests"])}</td>'
          + _rate_cell(f"{path}/pass_rate", entry.get("pass_rate"))
          + f'<td class="num">{_number(f"{path}/passed_first_attempt", entry["passed_first_attempt"])}</td>'
          + "".join(_rate_cell(f"{path}/checks/{check}/pass_rate",
                               entry["checks"].get(check, {}).get("pass_rate"))
                    for check in checks)
          + f'<td class="muted">{cuts or "-"}</td></tr>')
    parts.append(
        f"<h3>{_escape(BRANCH_TITLES.get(branch, branch))}</h3><table><tr><th>style</th>"
        '<th class="num">requests</th><th class="num">passed</th>'
        f'<th class="num">at 1st attempt</th>{header}<th>cut, not rejected</th></tr>'
        f"{''.join(rows)}</table>")
  samples = report.get("quality_samples") or {}
  for branch in _ordered(samples):
    for verdict in ("passed", "rejected"):
      for sample in samples[branch].get(verdict, []):
        facts = [f"<b>{_escape(sample.get('id', ''))}</b>", _escape(verdict)]
        if sample.get("style"):
          facts.append(f"style {_escape(sample['style'])}")
        if sample.get("reason"):
          facts.append(f"reason {_escape(sample['reason'])}")
        parts.append(
            f'<article class="sample quality" data-branch="{_escape(branch)}" '
            f'data-verdict="{_escape(verdict)}"><header>{_escape(branch)} · {" · ".join(facts)}'
            '</header><div class="pair">'
            f'<div class="text"><span class="label">source</span>{_escape(sample.get("source", ""))}</div>'
            f'<div class="text"><span class="label">output</span>{_escape(sample.get("output", ""))}</div>'
            "</div></article>")
  return "".join(parts)


def _ordered(by_branch: dict) -> typing.List[str]:
  known = [branch for branch in BRANCHES if branch in by_branch]
  return known + sorted(branch for branch in by_branch if branch not in BRANCHES)


def render(report: dict, samples: dict | None = None, title: str = "Data report card") -> str:
  """The report card as one HTML page, from report.json's content and samples per branch."""
  holds = report.get("checks_hold", False)
  badge = (f'<span class="badge {"ok" if holds else "fail"}">'
           f'{"every check holds" if holds else "a check FAILS"}</span>')
  body = [
      f"<h1>{_escape(title)}</h1>",
      '<p class="lead">Safety Pretraining data pipeline: what happened to every document of '
      f"this run. {badge}"
      + ("" if holds else " A run whose checks fail replaces no output: this page, report.json "
         "and the run's dead letters are kept under .failed/&lt;run id&gt;/ in the output "
         "folder.") + "</p>",
      _summary_section(report),
      _branches_section(report),
      _scores_section(report),
      _tags_section(report),
      _dead_letters_section(report),
      _checks_section(report),
      _quality_section(report),
      _samples_section(samples or {}),
  ]
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
          f"<title>{_escape(title)}</title><style>{_STYLE}</style></head>"
          f"<body><main>{''.join(body)}</main></body></html>\n")


def read_samples(output_dir: str, branches: typing.Sequence[str] = BRANCHES,
                 prefix: str = "") -> dict:
  """{branch: its samples} from `{output_dir}/samples/<prefix><branch>.json` (absent files
  skipped): the sinks' sample documents, or with QUALITY_SAMPLES_PREFIX the quality gate's
  passing and rejected texts."""
  samples = {}
  for branch in branches:
    path = FileSystems.join(output_dir, SAMPLES_DIR, f"{prefix}{branch}.json")
    if FileSystems.exists(path):
      with FileSystems.open(path) as f:
        samples[branch] = json.loads(f.read().decode("utf-8"))
  return samples


def write_report_card(report: dict, output_dir: str) -> str:
  """Writes `{output_dir}/report.html` from `report` and the run's samples; returns its path."""
  path = FileSystems.join(output_dir, REPORT_CARD)
  page = render(report, read_samples(output_dir))
  with FileSystems.create(path) as f:
    f.write(page.encode("utf-8"))
  return path
