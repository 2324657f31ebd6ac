"""Check the import graph of a package: no cycles, and core modules never import the lora subpackage.

    python tools/check_imports.py [PACKAGE_DIR]

PACKAGE_DIR defaults to the ``mergebench/`` next to this ``tools/`` directory; the package name is the
directory's name. Files are read with ``ast`` only, never imported, so a broken or heavy module (torch,
transformers) cannot hide a problem or slow the check down.

What counts as an edge ``a -> b`` (a, b modules of the package):

- ``import pkg.b``, ``from pkg.b import x`` and relative ``from .b import x`` / ``from . import b``;
- ``from pkg.x import y`` goes to ``pkg.x.y`` when that is a submodule, else to ``pkg.x``;
- imports inside functions, methods and ``try`` blocks too: a function-level import that dodges a
  cycle at load time is still a cycle in the design;
- not imports under ``if TYPE_CHECKING:`` (they never run), and not the implicit load of parent
  packages (importing ``pkg.a.b`` runs ``pkg/a/__init__.py`` first; that alone is no cycle edge).

Exit status 0 with one ``ok: ...`` line, or 1 with one line per violation.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

DEFAULT_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "mergebench"

# The subpackage that core modules must not import (relative to the package: "lora" -> "mergebench.lora").
LORA_SUBPACKAGE = "lora"

# Modules outside the lora subpackage that may still import it, relative to the package. Only the
# command-line entry module: it wires the ``lora`` subcommand group into the top-level CLI.
LORA_IMPORT_ALLOWED = ("cli",)


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: Path
    line: int


@dataclass
class Report:
    """What ``check_package`` found; ``violations`` is empty when every rule holds."""

    package: str
    root: Path
    modules: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def edges(self) -> dict[str, dict[str, list[Import]]]:
        """Imports between modules of the package, grouped by source then target."""
        graph: dict[str, dict[str, list[Import]]] = {name: {} for name in self.modules}
        for imp in self.imports:
            if imp.target in self.modules:
                graph[imp.source].setdefault(imp.target, []).append(imp)
        return graph

    def where(self, imp: Import) -> str:
        """``pkg/a.py:12``, relative to the directory that holds the package."""
        return f"{self.relpath(imp.path)}:{imp.line}"

    def relpath(self, path: Path) -> str:
        return path.relative_to(self.root.parent).as_posix()


def module_name(path: Path, package_dir: Path) -> str:
    """Dotted module name of a file: ``pkg/a/__init__.py`` -> ``pkg.a``, ``pkg/a/b.py`` -> ``pkg.a.b``."""
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(package_dir: Path) -> tuple[dict[str, Path], set[str]]:
    """Map module name -> file for every importable .py, plus the dotted names of all package dirs.

    Directories without ``__init__.py`` (namespace packages, like ``mergebench/io``) are still packages;
    they have no module of their own, so an import of one alone is no edge.
    """
    modules: dict[str, Path] = {}
    packages: set[str] = {package_dir.name}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        if not all(part.isidentifier() for part in (*rel.parent.parts, rel.stem)):
            continue  # not importable (e.g. a "my-scripts" dir); not part of the package
        modules[module_name(path, package_dir)] = path
        parent = package_dir
        for part in rel.parent.parts:
            parent = parent / part
            packages.add(module_name(parent / "__init__.py", package_dir))
    return modules, packages


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (any ``x.TYPE_CHECKING``)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth, skipping ``if TYPE_CHECKING:`` bodies."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch of `if TYPE_CHECKING:` is what runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def resolve_base(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    """Absolute module named by a relative ``from`` (``level`` dots, then ``name``); None if it escapes."""
    parts = module.split(".")
    if not is_package:
        parts.pop()  # a plain module's relative imports start from its package
    if level - 1 > len(parts) - 1:
        return None  # beyond the top-level package
    parts = parts[: len(parts) - (level - 1)]
    if name:
        parts.append(name)
    return ".".join(parts)


def import_targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> list[str]:
    """Absolute names this statement loads; ``from x import y`` gives ``x.y`` when that is a (sub)package."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module if node.level == 0 else resolve_base(module, is_package, node.level, node.module)
    if base is None:
        return []
    targets: list[str] = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if alias.name != "*" and sub in known else base
        if target not in targets:
            targets.append(target)
    return targets


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def collect_imports(report: Report, packages: set[str]) -> None:
    """Parse every module and record its imports of names inside the package."""
    known = set(report.modules) | packages
    for module, path in report.modules.items():
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError) as exc:
            line = getattr(exc, "lineno", None) or 0
            report.violations.append(f"parse error: {report.relpath(path)}:{line}: {exc}")
            continue
        is_package = path.name == "__init__.py"
        for node in runtime_imports(tree):
            for target in import_targets(node, module, is_package, known):
                if is_under(target, report.package):
                    report.imports.append(Import(module, target, path, node.lineno))
    report.imports.sort(key=lambda imp: (imp.source, imp.line, imp.target))


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit); components in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def shortest_path(
    graph: dict[str, dict[str, list[Import]]], start: str, goal: str, within: set[str]
) -> list[str]:
    """Breadth-first path ``start .. goal`` using only nodes in ``within`` (one always exists in an SCC)."""
    previous: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for child in sorted(graph[node]):
            if child in within and child not in previous:
                previous[child] = node
                queue.append(child)
    path = [goal]
    while previous[path[-1]] is not None:
        path.append(previous[path[-1]])  # type: ignore[arg-type]
    return path[::-1]


def cycles_in(graph: dict[str, dict[str, list[Import]]], component: list[str]) -> list[list[str]]:
    """Short cycles that together use every edge of the component, so every import to rethink is shown."""
    within = set(component)
    uncovered = [(a, b) for a in component for b in sorted(graph[a]) if b in within]
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for a, b in uncovered:
        if any((a, b) in pairwise(cycle) for cycle in cycles):
            continue
        cycle = [a, *shortest_path(graph, b, a, within)] if a != b else [a, a]
        start = cycle.index(min(cycle[:-1]))  # rotate so the same cycle always prints the same way
        cycle = cycle[start:-1] + cycle[:start] + [cycle[start]]
        if tuple(cycle) not in seen:
            seen.add(tuple(cycle))
            cycles.append(cycle)
    return cycles


def check_cycles(report: Report) -> None:
    graph = report.edges
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        for cycle in cycles_in(graph, component):
            steps = []
            for a, b in pairwise(cycle):
                imports = graph[a][b]
                lines = ",".join(str(imp.line) for imp in imports)
                steps.append(f"{report.relpath(imports[0].path)}:{lines}")
            report.violations.append(f"cycle: {' -> '.join(cycle)} ({'; '.join(steps)})")


def check_layering(report: Report) -> None:
    lora = f"{report.package}.{LORA_SUBPACKAGE}"
    allowed = {f"{report.package}.{name}" for name in LORA_IMPORT_ALLOWED}
    for imp in report.imports:
        if is_under(imp.target, lora) and not is_under(imp.source, lora) and imp.source not in allowed:
            report.violations.append(
                f"layering: {imp.source} imports {imp.target} ({report.where(imp)}): "
                f"only {lora}.* and {', '.join(sorted(allowed))} may import {lora}"
            )


def check_package(package_dir: Path) -> Report:
    """Build the import graph of the package in ``package_dir`` and check both rules."""
    package_dir = package_dir.resolve()
    modules, packages = find_modules(package_dir)
    report = Report(package=package_dir.name, root=package_dir, modules=modules)
    collect_imports(report, packages)
    check_cycles(report)
    check_layering(report)
    return report


def main(argv: list[str] | None = None) -> int:
    """Print ``ok: ...`` and return 0, or print one line per violation and return 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or any(arg.startswith("-") for arg in args):
        print("usage: check_imports.py [PACKAGE_DIR]", file=sys.stderr)
        return 2
    package_dir = Path(args[0]) if args else DEFAULT_PACKAGE_DIR
    if not package_dir.is_dir():
        print(f"error: {package_dir} is not a directory", file=sys.stderr)
        return 2
    report = check_package(package_dir)
    if report.violations:
        for line in report.violations:
            print(line)
        print(f"{len(report.violations)} violation(s) in {report.package}")
        return 1
    edges = sum(len(targets) for targets in report.edges.values())
    print(f"ok: {len(report.modules)} modules, {edges} imports, no cycles, layering respected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
