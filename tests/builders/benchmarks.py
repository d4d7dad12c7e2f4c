"""The scripts of ``benchmarks/`` as modules, so tests can call their pieces."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from builders.workflow import REPO


def load_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
