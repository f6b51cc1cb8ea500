"""The import graph of stylefleet/, deployments/ and router/ has no cycle, and checking a config
loads no model runtime.

Every import counts, at the top of a module or inside a function: an import hidden in a function
to dodge a cycle is still a cycle (it only fails later, and in whichever order modules load).
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.samples import ROOT

PACKAGES = ("stylefleet", "deployments", "router")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may load (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        return [source] + [f"{source}.{alias.name}" for alias in node.names]
    return []


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (and, through them, their packages' __init__)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node, module, path.name == "__init__.py"):
                parts = name.split(".")
                deps.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules)
        deps.discard(module)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    modules = {"pkg.a": Path("a.py"), "pkg.b": Path("b.py"), "pkg.c": Path("c.py")}
    trees = {
        "pkg.a": "def f():\n    from pkg import b\n",
        "pkg.b": "from .c import thing\n",
        "pkg.c": "import pkg.a\n",
    }
    graph = {
        m: {n for node in ast.walk(ast.parse(src)) for n in _imported(node, m, False) if n in modules} - {m} for m, src in trees.items()
    }
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) is not None


def test_no_import_cycles_among_the_projects_modules() -> None:
    graph = import_graph(_modules())
    assert len(graph) > 50  # every module was found
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_checking_a_config_loads_neither_onnxruntime_nor_torch() -> None:
    code = (
        "import sys\n"
        "from stylefleet.spec import load_serve_file\n"
        "load_serve_file('serve_config.genai.yaml')\n"
        "load_serve_file('serve_config.yaml', 'profiles/gpu.yaml')\n"
        "print(sorted(m for m in ('onnxruntime', 'torch', 'diffusers', 'cv2') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module", ["stylefleet.config", "stylefleet.errors", "stylefleet.imageio", "stylefleet.storage", "stylefleet.manifest"]
)
def test_the_shared_base_imports_no_model_and_no_router(module: str) -> None:
    graph = import_graph(_modules())
    assert not {d for d in graph[module] if d.startswith(("deployments", "router"))}
