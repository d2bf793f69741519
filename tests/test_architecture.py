"""The rule of imports (ARCHITECTURE.md), checked on the source: corpus/ imports nothing from the
project but itself, models/ nothing from transforms/ or beam_pipeline/, transforms/ nothing from
beam_pipeline/; no import circle between modules (imports inside functions included); and no
module in transforms/ over 350 lines."""

from __future__ import annotations

import ast
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("corpus", "models", "transforms", "beam_pipeline")
# A package may import these (besides itself); benchmarks/ and tests/ sit above them all.
MAY_IMPORT = {
    "corpus": set(),
    "models": {"corpus"},
    "transforms": {"corpus", "models"},
    "beam_pipeline": {"corpus", "models", "transforms"},
}
MAX_TRANSFORMS_LINES = 350


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every module of the four packages."""
  modules = {}
  for package in PACKAGES:
    for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
      name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
      modules[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return modules


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The project modules a file imports, anywhere in it."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    else:
      continue
    found.update(name for name in names if name in modules)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_no_import_runs_upward():
  upward = []
  for module, imported in _graph().items():
    package = module.split(".")[0]
    for name in imported:
      target = name.split(".")[0]
      if target != package and target not in MAY_IMPORT[package]:
        upward.append(f"{module} imports {name}")
  assert not upward, upward


def test_no_import_circle():
  graph = _graph()
  state: dict[str, int] = {}
  circles = []

  def visit(module, path):
    state[module] = 1
    for name in sorted(graph.get(module, ())):
      if state.get(name) == 1:
        circles.append(path[path.index(name):] + [name] if name in path else [module, name])
      elif not state.get(name):
        visit(name, path + [name])
    state[module] = 2

  for module in sorted(graph):
    if not state.get(module):
      visit(module, [module])
  assert not circles, circles


def test_no_module_in_transforms_is_over_350_lines():
  long = {}
  for path in glob.glob(os.path.join(REPO, "transforms", "*.py")):
    with open(path, encoding="utf-8") as f:
      lines = sum(1 for _ in f)
    if lines > MAX_TRANSFORMS_LINES:
      long[os.path.basename(path)] = lines
  assert not long, long
