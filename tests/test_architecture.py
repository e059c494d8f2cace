"""The package's shape, as docs/architecture.md states it: no import cycle, every import goes
down the layering (a module may import its own layer or lower ones), and no function is longer
than 80 lines. Imports are read from the source (function-level ones included: a lazy import is
still a dependency); imports under ``if TYPE_CHECKING:`` are type hints, not dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "diversefl"

# Lower layers first; the longest matching prefix decides a module's layer. Keep this table and
# the picture in docs/architecture.md the same.
LAYERS: list[tuple[str, ...]] = [
    ("diversefl.round", "diversefl.registry"),
    (
        "diversefl.models",
        "diversefl.data",
        "diversefl.engine.params",
        "diversefl.engine.dense_grads",
        "diversefl.engine.gradients",
        "diversefl.engine.seeding",
        "diversefl.engine.schedules",
        "diversefl.engine.allocator",
        "diversefl.engine.server_step",
        "diversefl.engine.federation",
    ),
    ("diversefl.aggregators",),
    ("diversefl.attacks", "diversefl.protocols"),
    ("diversefl.methods",),
    ("diversefl.config", "diversefl.config_diff"),
    ("diversefl.engine", "diversefl.results", "diversefl.cell_lock", "diversefl.review"),
    ("diversefl.api", "diversefl.demo", "diversefl.presets"),
    (
        "diversefl.flower",
        "diversefl.experiments",
        "diversefl.plots",
        # old import paths of the experiment tooling, kept as re-exports for one release
        "diversefl.sweep",
        "diversefl.sweep_status",
        "diversefl.reproduce",
        "diversefl.seed_spread",
        "diversefl.detection",
    ),
    ("diversefl.cli", "diversefl.cli_hints", "diversefl.__main__"),
]
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    if module == "diversefl":  # the package root: re-exports the public API, above everything
        return len(LAYERS)
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), i
    if layer is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and the architecture doc")
    return layer


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _resolve(base: str, name: str | None) -> str | None:
    """The package module an import names (a submodule when ``name`` is one)."""
    if name is not None and f"{base}.{name}" in MODULES:
        return f"{base}.{name}"
    return base if base in MODULES else None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    hints = _type_checking_lines(tree)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hints:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for alias in node.names:
                target = _resolve(base, alias.name)
                if target is not None:
                    found.add(target)
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _parent_packages(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycle():
    """Depth-first search for a back edge. A package's __init__ importing its own submodules
    (and those importing a sibling through the package) is how packages re-export; an import of
    a module's own parent package is not counted as an edge back."""
    graph = {m: {t for t in ts if t not in _parent_packages(m)} for m, ts in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_imports_follow_the_layering():
    wrong = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in sorted(GRAPH.items())
        if m != "diversefl"  # the package root re-exports the public API lazily
        for t in sorted(targets)
        if t != "diversefl" and layer_of(t) > layer_of(m)
    ]
    assert not wrong, "imports against the layering:\n  " + "\n  ".join(wrong)


def test_the_layering_check_catches_an_upward_import():
    """The checker itself: an aggregator importing the simulator would be reported."""
    assert layer_of("diversefl.engine.simulator") > layer_of("diversefl.aggregators.krum")
    assert layer_of("diversefl.engine.server_step") < layer_of("diversefl.aggregators.krum")
    assert _resolve("diversefl.engine", "simulator") == "diversefl.engine.simulator"


def long_functions() -> list[str]:
    out = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{module}.{node.name}: {length} lines")
    return sorted(out)


def test_no_function_is_longer_than_80_lines():
    assert not long_functions(), "functions over 80 lines:\n  " + "\n  ".join(long_functions())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_layer(module):
    layer_of(module)
