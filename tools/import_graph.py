"""Regenerate ``docs/architecture_graph.md``: trainmap's import graph between its parts, from the
code (grimp), never drawn by hand. ``python tools/import_graph.py`` rewrites the file;
``python tools/import_graph.py --check`` exits 1 when the file is out of date (the tests run it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

#: the parts of the package, in layer order (top first); a module belongs to the first part that
#: is a prefix of its name
PARTS = ["trainmap.cli", "trainmap.commands", "trainmap.report", "trainmap.joint", "trainmap.jacobian", "trainmap.koopman",
         "trainmap.ribbon", "trainmap.results", "trainmap.record", "trainmap.presets", "trainmap.optimizers",
         "trainmap.adapters", "trainmap.recipe", "trainmap.protocol", "trainmap.models", "trainmap.data", "trainmap._io", "trainmap._progress"]

OUT = Path(__file__).resolve().parents[1] / "docs" / "architecture_graph.md"


def part_of(module: str) -> str | None:
    return next((p for p in PARTS if module == p or module.startswith(p + ".")), None)


def edges() -> dict[str, set[str]]:
    """part -> the parts it imports (module- or function-level imports, as grimp sees them)."""
    graph = grimp.build_graph("trainmap", include_external_packages=False)
    out: dict[str, set[str]] = {p: set() for p in PARTS}
    for mod in graph.modules:
        src = part_of(mod)
        if src is None:
            continue
        for dep in graph.find_modules_directly_imported_by(mod):
            dst = part_of(dep)
            if dst is not None and dst != src:
                out[src].add(dst)
    return out


def render() -> str:
    e = edges()
    short = {p: p.removeprefix("trainmap.") for p in PARTS}
    lines = ["# Import graph", "",
             "Generated from the code by `python tools/import_graph.py` (grimp); the test suite fails",
             "when it is out of date. An arrow `a → b` means a module of `a` imports one of `b`.", "",
             "| part | imports |", "|---|---|"]
    for p in PARTS:
        deps = ", ".join(f"`{short[d]}`" for d in PARTS if d in e[p]) or "—"
        lines.append(f"| `{short[p]}` | {deps} |")
    lines += ["", "```mermaid", "graph TD"]
    for p in PARTS:
        for d in PARTS:
            if d in e[p]:
                lines.append(f"  {short[p].strip('_')}[{short[p]}] --> {short[d].strip('_')}[{short[d]}]")
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/import_graph.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
