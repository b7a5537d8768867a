"""The house rules a newcomer relies on: no import circles, and no long source file without a reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The installed packages: `brogue` and the folders mapped under it (pyproject's package-dir).
PACKAGES = {"brogue": "brogue", "brogue.server": "server", "brogue.export": "export", "brogue.clients": "clients",
            "brogue.bench": "bench"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg, folder in PACKAGES.items():
        for f in (REPO / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            if pkg == "brogue" and parts and f"brogue.{parts[0]}" in PACKAGES:
                continue
            mods[".".join([pkg, *parts])] = f
    return mods


def _imports(name: str, path: Path, known) -> set[str]:
    """Modules of ``known`` that ``name`` imports when it is imported (top-level statements only:
    an import inside a function runs later and cannot close a circle at import time)."""
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                mod = f"{anchor}.{mod}" if mod else anchor
            deps |= {mod, *(f"{mod}.{a.name}" for a in node.names)}
    return {d for d in deps if d in known and d != name}


def test_no_import_circles():
    mods = _modules()
    graph = {n: _imports(n, p, mods) for n, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(n, path):
        state[n] = 1
        for m in graph[n]:
            assert state.get(m) != 1, "import circle: " + " -> ".join([*path, n, m])
            if m not in state:
                visit(m, [*path, n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])
    assert len(graph) > 50  # the scan found the packages


def test_long_source_files_say_why_in_their_docstring():
    long = {}
    for path in _modules().values():
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES + 20:  # "about 400"
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not re.search(r"about \d+ lines", doc):
                long[str(path.relative_to(REPO))] = lines
    assert not long, f"split these by job, or say in the docstring why not ('about N lines'): {long}"
