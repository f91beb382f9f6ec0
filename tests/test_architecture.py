"""docs/architecture.md's import diagram is the code's: every import between ferry's parts is an arrow the
document draws, and every arrow it draws is an import the code has. A part is a subpackage of ``ferry`` or a
module at its root (``errors``, ``settings``, ...); imports inside functions count, as they run too."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "ferry"
DOC = ROOT / "docs" / "architecture.md"


def part(module: str) -> str:
    """``ferry.serving.request.dataplane`` -> ``serving``; ``ferry.errors`` -> ``errors``; ``ferry`` -> ``ferry``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "ferry"


def module_name(path: Path) -> str:
    relative = path.relative_to(SOURCE.parent).with_suffix("")
    name = ".".join(relative.parts)
    return name.removesuffix(".__init__")


def imported(path: Path) -> set[str]:
    """The ferry modules ``path`` imports, wherever in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
    return {m for m in found if m == "ferry" or m.startswith("ferry.")}


def code_arrows() -> dict[tuple[str, str], str]:
    """(from part, to part) -> one file that makes the arrow."""
    arrows: dict[tuple[str, str], str] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        source = part(module_name(path))
        for target in map(part, imported(path)):
            if target != source:
                arrows.setdefault((source, target), str(path.relative_to(ROOT)))
    return arrows


def drawn_arrows() -> set[tuple[str, str]]:
    """The arrows of the document's ```imports block: ``part -> other other ...`` a line."""
    block = re.search(r"```imports\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no ```imports block"
    arrows = set()
    for line in block.group(1).splitlines():
        if "->" in line:
            source, targets = (side.strip() for side in line.split("->"))
            arrows.update((source, target) for target in targets.split())
    return arrows


def cycles(arrows: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs of parts that reach each other."""
    reach: dict[str, set[str]] = defaultdict(set)
    for source, target in arrows:
        reach[source].add(target)
    changed = True
    while changed:
        changed = False
        for source in list(reach):
            more = set().union(*(reach[t] for t in reach[source])) - reach[source]
            if more:
                reach[source] |= more
                changed = True
    return sorted((a, b) for a in reach for b in reach[a] if a < b and a in reach.get(b, set()))


def test_every_import_between_parts_is_drawn_in_the_architecture():
    code, drawn = code_arrows(), drawn_arrows()
    undrawn = {arrow: where for arrow, where in code.items() if arrow not in drawn}
    assert not undrawn, "imports the map does not allow (draw them in docs/architecture.md or remove them): " + (
        "; ".join(f"{a} -> {b} ({where})" for (a, b), where in sorted(undrawn.items()))
    )
    stale = drawn - set(code)
    assert not stale, f"arrows docs/architecture.md draws that no code makes: {sorted(stale)}"


def test_no_two_parts_import_each_other():
    assert cycles(set(code_arrows())) == []


def test_every_part_and_subpackage_is_in_the_parts_list():
    """The map's parts list names every module at ferry's root, every subpackage and every sub-subpackage (once a
    whole data plane went missing from it unnoticed)."""
    block = re.search(r"## The parts\n\n```\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no parts list"
    named = set(re.findall(r"^\s+([\w.]+/?)\s", block.group(1), re.M))
    wanted = {p.name for p in SOURCE.glob("*.py") if p.name != "__init__.py"}
    wanted |= {f"{p.name}/" for p in SOURCE.iterdir() if (p / "__init__.py").exists()}
    wanted |= {
        f"{p.name}/" for p in SOURCE.glob("*/*") if (p / "__init__.py").exists() and p.parent.name != "migrations"
    }
    assert not wanted - named, f"{DOC}'s parts list lacks {sorted(wanted - named)}"
