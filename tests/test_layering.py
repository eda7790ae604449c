"""The house's layering, checked from the source: no import cycle inside pipeline/ (every
import counted, those inside functions too), and the rooms import only downwards
(docs/ARCHITECTURE.md): receive/ never from prep/, jobs/ never from volume/ or drive/, the
drive format from nothing above it."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pipeline"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The pipeline modules ``name`` imports, anywhere in its body."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name and t != "pipeline":
                found.add(t)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycle_inside_pipeline() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and
                                            (PKG / parts[1]).is_dir()) else module


FORBIDDEN = {  # room -> rooms it must never import
    "drive": {"volume", "prep", "receive", "backup", "jobs", "storage", "commands"},
    "volume": {"prep", "receive", "backup", "jobs", "commands"},
    "storage": {"prep", "receive", "backup", "jobs", "commands", "volume"},
    "receive": {"prep", "commands", "backup"},
    "prep": {"receive", "commands", "backup", "jobs"},
    "jobs": {"volume", "drive", "prep", "receive", "commands", "backup"},
    "backup": {"prep", "receive", "commands", "jobs"},  # volume: its KDF (luks2's Argon2)
    "cluster": {"commands", "backup", "jobs"},  # beside prep/receive; only commands import it
}
for _room in ("drive", "volume", "storage", "receive", "prep", "jobs", "backup"):
    FORBIDDEN[_room] = FORBIDDEN[_room] | {"cluster"}
# Sideways imports a room may make: backup reads a source file (holes, zero runs) with the
# reader prep uses, rather than a second one.
ALLOWED = {("backup", "pipeline.prep.read")}


def test_rooms_import_only_downwards() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        room = room_of(module)
        for t in targets:
            if room_of(t) in FORBIDDEN.get(room, ()) and (room, t) not in ALLOWED:
                wrong.append(f"{module} -> {t}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_function_over_100_lines() -> None:
    """A function that does not fit on a screen or two does more than one thing."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)
