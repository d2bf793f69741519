"""The data report card, rendered in headless Chromium, shows the figures of report.json.

Uses the bad-input corpus run (its report has dead letters of many reasons, raw and tagged
documents, and a document full of markup among the samples). Chromium loads report.html from the
file system and dumps the DOM it rendered; every figure in it is marked with its path in
report.json, and each must show report.json's value. Chromium also takes a screenshot.
"""

from __future__ import annotations

import html.parser
import json
import os
import subprocess

import pytest

from beam_pipeline import report_card

from . import conftest
from .conftest import require
from .corpus import MARKUP_ID, MARKUP_TEXT

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


class _Page(html.parser.HTMLParser):
  """The figures, samples and script elements of a rendered page."""

  def __init__(self):
    super().__init__()
    self.figures = []  # (path, data-value, shown text)
    self.samples = []  # (branch, text)
    self.scripts = 0
    self.text = []
    self._open = []  # stack of [kind, attrs, text pieces]

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "script":
      self.scripts += 1
    if "data-figure" in attrs:
      self._open.append(["figure", attrs, []])
    elif tag == "article" and "data-branch" in attrs:
      self._open.append(["sample", attrs, []])
    elif self._open:
      self._open.append(["other", attrs, None])

  def handle_endtag(self, tag):
    if not self._open:
      return
    kind, attrs, pieces = self._open.pop()
    if kind == "figure":
      self.figures.append((attrs["data-figure"], attrs["data-value"], "".join(pieces)))
    elif kind == "sample":
      self.samples.append((attrs["data-branch"], "".join(pieces)))

  def handle_data(self, data):
    self.text.append(data)
    for entry in self._open:
      if entry[2] is not None:
        entry[2].append(data)


def _chromium(*args: str, user_data_dir: str) -> subprocess.CompletedProcess:
  command = [require("chromium", "the report card test"), *CHROMIUM_FLAGS,
             f"--user-data-dir={user_data_dir}", *args]
  return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _expected_figures(report: dict) -> dict:
  """{path: value} of every figure report.html must show."""
  figures = {name: report[name] for name in (
      "documents_read", "documents_valid", "dead_letters_total", "dead_letters_written",
      "tags_inserted")}

  def walk(prefix: str, value) -> None:
    if isinstance(value, dict):
      for key, inner in value.items():
        walk(f"{prefix}/{key}", inner)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      figures[prefix] = value

  for section in ("per_branch", "per_score", "dead_letters", "score_distribution", "tags"):
    walk(section, report[section])
  for name, value in report["checks"]["originals"].items():
    walk(f"checks/originals/{name}", value)
  for branch, entry in report["checks"]["generation"].items():
    walk(f"checks/generation/{branch}", entry)
  for check in ("read", "input", "scoring"):
    walk(f"checks/{check}", report["checks"][check])
  return figures


def _shown_value(text: str, path: str):
  if path == "tags/rate" or path.endswith("fraction"):
    return round(float(text.rstrip("%")) / 100, 4)
  return int(text.replace(",", ""))


def test_report_card_in_headless_chromium_shows_report_json(bad_input_run, tmp_path):
  _, output, report = bad_input_run
  page_path = os.path.join(output, report_card.REPORT_CARD)
  with open(os.path.join(output, "report.json"), encoding="utf-8") as f:
    assert json.load(f) == report
  rendered = _chromium("--dump-dom", f"file://{page_path}", user_data_dir=str(tmp_path / "a"))
  assert rendered.returncode == 0, rendered.stderr[-2000:]
  page = _Page()
  page.feed(rendered.stdout)
  assert "Data report card" in "".join(page.text)

  expected = _expected_figures(report)
  shown = {}
  for path, value, text in page.figures:
    shown.setdefault(path, set()).add((value, text))
  missing = sorted(set(expected) - set(shown))
  assert not missing, f"report.json figures not on the page: {missing}"
  assert not sorted(set(shown) - set(expected)), "figures on the page that report.json lacks"
  for path, value in expected.items():
    for data_value, text in shown[path]:
      assert float(data_value) == pytest.approx(value), path
      assert _shown_value(text, path) == pytest.approx(round(value, 4), abs=1e-4), (path, text)
  # The figures that matter most are there: several dead-letter reasons, both kept branches,
  # score distributions per source.
  assert len([p for p in expected if p.startswith("dead_letters/")]) >= 10
  assert expected["per_branch/raw"] > 0 and expected["per_branch/tagged"] > 0
  assert any(p.startswith("score_distribution/raw/good.jsonl/") for p in expected)

  # Samples per branch, as written by the run; text from the data is shown as text.
  with open(os.path.join(output, "samples", "raw.json"), encoding="utf-8") as f:
    raw_samples = json.load(f)
  assert raw_samples and all(
      any(sample["id"] in text for branch, text in page.samples if branch == "raw")
      for sample in raw_samples)
  markup = [text for _, text in page.samples if MARKUP_ID in text]
  assert markup and MARKUP_TEXT in markup[0], "the markup sample is shown as text"
  assert page.scripts == 0, "text from the data became a script element"

  screenshot = tmp_path / "report.png"
  shot = _chromium("--window-size=1200,2400", f"--screenshot={screenshot}",
                   f"file://{page_path}", user_data_dir=str(tmp_path / "b"))
  assert shot.returncode == 0, shot.stderr[-2000:]
  assert screenshot.stat().st_size > 50_000
  conftest.SUMMARY_LINES.append(f"report card screenshot: {screenshot}")


def test_report_card_renders_without_a_run():
  """render() alone: every branch, an empty report, HTML in sources and reasons escaped."""
  report = {
      "documents_read": 0, "documents_valid": 0, "per_score": {str(s): 0 for s in range(6)},
      "per_branch": {b: 0 for b in report_card.BRANCHES}, "dead_letters": {},
      "dead_letters_total": 0, "dead_letters_written": 0, "tags_inserted": 0,
      "score_distribution": {"raw": {"<i>source</i>": {"0": 1}}},
      "checks": {"originals": {"documents_read": 0, "raw": 0, "tagged": 0,
                               "dead_lettered_before_routing": 0, "holds": True},
                 "generation": {}},
      "checks_hold": True,
  }
  page = report_card.render(report, {"raw": [], "tagged": [{"id": "<x>", "text": "a & b"}]})
  assert "&lt;i&gt;source&lt;/i&gt;" in page and "<i>source</i>" not in page
  assert "&lt;x&gt;" in page and "a &amp; b" in page
  assert "No documents in this branch." in page
