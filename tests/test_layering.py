"""Imports stay layered: a module imports only from its own layer or the layers below it, production
code does not import the demo, and the package graph has no cycle.

The layers are data (:data:`LAYERS`, lowest first); the check reads every ``import`` of every module
with ``ast`` (module level and inside functions), so a lazy import that runs back up the layers
fails here as well as a top-level one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    # utilities every stage may use; new small helpers (e.g. sedm.seeds, sedm.runtime) belong here
    ("sedm", "sedm.errors", "sedm.atomic", "sedm.labels", "sedm.config", "sedm.arms", "sedm.seeds", "sedm.runtime",
     "sedm.stain", "sedm.layout"),
    ("sedm.tiling",),  # slide -> store: the store every later stage reads
    ("sedm.models", "sedm.evaluation.metrics"),  # networks and metrics shared by the stages that train,
    # run and score them (segmentation validates with the metrics evaluation reports)
    ("sedm.diffusion", "sedm.autoencoder"),  # the two trainers of the generative model (the autoencoder's
    # network is in sedm.models, which the codec loads; its trainer samples crops like diffusion training)
    ("sedm.synthesis",),
    ("sedm.styles",),  # slides as numbers: reads stores, synthetic sets and the model's style encoder
    ("sedm.segmentation",),
    ("sedm.evaluation",),
    ("sedm.report",),
    ("sedm.demo",),  # makes a cohort to run the pipeline on; nothing in the pipeline needs it
    ("sedm.cli", "sedm.validate", "sedm.write_config", "sedm.config_template", "sedm.profile"),  # commands outside
    # the stages
)
"""Layers, lowest first; a name stands for itself and everything below it (``sedm.tiling`` covers
``sedm.tiling.store``). The most specific name decides (``sedm.labels`` before ``sedm``)."""

NO_DEMO_EXCEPT = ("sedm.demo", "sedm.cli")
"""Only these may import ``sedm.demo``."""

KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()
"""(importer, imported) pairs tolerated for now; each must still occur, so the list cannot go stale."""


# -------------------------------------------------------------------------------------- reading
def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Every sedm module ``path`` (module ``name``) imports, at any depth of its code. ``from a import
    b`` counts as ``a.b`` when that is a module, else as ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m == "sedm" or m.startswith("sedm.")}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the sedm modules it imports, for every module of the ``sedm`` package."""
    paths = {module_name(p, root): p for p in sorted((root / "sedm").rglob("*.py"))}
    return {name: imports_of(path, name, set(paths)) - {name} for name, path in paths.items()}


# -------------------------------------------------------------------------------------- checking
def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> tuple[int, str]:
    """(layer index, the declared name that placed it): the longest declared name covering ``module``."""
    best: tuple[int, str] | None = None
    for i, names in enumerate(layers):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (i, n)
    if best is None:
        raise KeyError(f"{module} is in no layer: add it to LAYERS")
    return best


def upward_imports(graph: Mapping[str, Iterable[str]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Imports from a higher layer than the importer's, as readable lines."""
    out = []
    for importer, imported in sorted(graph.items()):
        low, low_name = layer_of(importer, layers)
        for target in sorted(imported):
            high, high_name = layer_of(target, layers)
            if high > low:
                out.append(f"{importer} (layer {low_name}) imports {target} (layer {high_name}, higher)")
    return out


def demo_imports(graph: Mapping[str, Iterable[str]],
                 allowed: tuple[str, ...] = NO_DEMO_EXCEPT) -> list[tuple[str, str]]:
    """(importer, imported) where production code imports ``sedm.demo``."""
    def covered(m: str, names: Iterable[str]) -> bool:
        return any(m == n or m.startswith(n + ".") for n in names)

    return sorted((a, b) for a, targets in graph.items() if not covered(a, allowed)
                  for b in targets if covered(b, ("sedm.demo",)))


def package_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> str:
    return layer_of(module, layers)[1]


def package_cycles(graph: Mapping[str, Iterable[str]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[list[str]]:
    """Cycles among the declared packages (modules merged into the name that places them)."""
    edges: dict[str, set[str]] = {}
    for a, targets in graph.items():
        pa = package_of(a, layers)
        for b in targets:
            pb = package_of(b, layers)
            if pa != pb:
                edges.setdefault(pa, set()).add(pb)
    cycles, state = [], {}  # state: 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


def _without_known(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in KNOWN_VIOLATIONS} for a, targets in graph.items()}


# -------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_import_runs_back_up_the_layers(graph):
    assert upward_imports(_without_known(graph)) == []


def test_production_code_does_not_import_the_demo(graph):
    assert demo_imports(_without_known(graph)) == []


def test_package_graph_is_acyclic(graph):
    assert package_cycles(_without_known(graph)) == []


def test_known_violations_still_exist(graph):
    stale = sorted((a, b) for a, b in KNOWN_VIOLATIONS if b not in graph.get(a, set()))
    assert stale == [], f"fixed: delete {stale} from KNOWN_VIOLATIONS"


def test_the_checks_report_violations():
    fake = {
        "sedm.tiling.store": {"sedm.labels", "sedm.segmentation.data"},  # tiling reaching up into a stage
        "sedm.labels": {"sedm.errors"},
        "sedm.segmentation.data": {"sedm.tiling.store"},
        "sedm.evaluation.evaluate": {"sedm.demo.seeds"},  # production code importing the demo
        "sedm.cli": {"sedm.demo.cohort"},  # allowed
        "sedm.demo.cohort": {"sedm.tiling.annotations"},
    }
    assert sorted(upward_imports(fake)) == sorted([
        "sedm.tiling.store (layer sedm.tiling) imports sedm.segmentation.data (layer sedm.segmentation, higher)",
        "sedm.evaluation.evaluate (layer sedm.evaluation) imports sedm.demo.seeds (layer sedm.demo, higher)"])
    assert demo_imports(fake) == [("sedm.evaluation.evaluate", "sedm.demo.seeds")]
    assert package_cycles(fake) == [["sedm.tiling", "sedm.segmentation", "sedm.tiling"]]
    with pytest.raises(KeyError, match="no layer"):
        layer_of("other.module")


def test_lazy_and_relative_imports_are_read(tmp_path):
    pkg = tmp_path / "sedm" / "tiling"
    pkg.mkdir(parents=True)
    (tmp_path / "sedm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "store.py").write_text("")
    (pkg / "late.py").write_text("def f():\n    from sedm.report import build\n    from . import store\n")
    graph = import_graph(tmp_path)
    assert graph["sedm.tiling.late"] == {"sedm.report", "sedm.tiling.store"}
    assert upward_imports(graph) == ["sedm.tiling.late (layer sedm.tiling) imports sedm.report (layer sedm.report, "
                                     "higher)"]
