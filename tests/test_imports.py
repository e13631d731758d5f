"""The import graph of the packages, read from the source (lazy imports inside functions included):
no cycle anywhere; the dependency direction of docs/DESIGN.md; `ray` only under cluster/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "rewards", "learner", "cluster", "benchmarks")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules and the top-level packages `name` imports."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules} | {t.split(".")[0] for t in targets}
    return out - {name}


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def test_no_module_imports_itself_through_others():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ()) & GRAPH.keys()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_dependency_direction_holds():
    def importers(package: str, of: str) -> list[str]:
        return sorted(n for n, deps in GRAPH.items() if n.split(".")[0] == package and of in deps)

    assert importers("learner", "rewards") == []  # the learner trains on tokens, not on reward rules
    assert importers("learner", "cluster") == [] and importers("rewards", "cluster") == []
    assert importers("actors", "cluster") == [] and importers("actors", "rewards") == []
    assert importers("actors", "learner") == []
    outside = sorted(
        n for n, deps in GRAPH.items() if "ray" in deps and n.split(".")[0] not in ("cluster", "benchmarks")
    )
    assert outside == []  # workers are plain classes, made remote by the pools
