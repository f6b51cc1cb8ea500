"""The import graph of the stylefleet package has no cycle, and checking a config
loads no model runtime.

Every import counts, at the top of a module or inside a function: an import hidden in a function
to dodge a cycle is still a cycle (it only fails later, and in whichever order modules load).
"""

from __future__ import annotations

import ast
import graphlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.samples import ROOT

# The one installed package, in real folders.
PACKAGE = "stylefleet"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, _, names in os.walk(ROOT / PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                found[_module_name(Path(folder) / name)] = Path(folder) / name
    return found


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
    assert not {d for d in graph[module] if d.startswith(("stylefleet.deployments", "stylefleet.router"))}


# The layers the folders name (docs/architecture.md), lowest first, and what each may import.
LAYERS = {
    "base": {"base"},  # stylefleet/*.py: errors, config, imageio, storage, manifest, retry, ...
    "compute": {"base", "compute"},  # stylefleet/deployments (not serve/): the models and their kind table, pure
    # stylefleet/spec.py: the one validated app spec. It cross-checks the config against the
    # models' kind table (params, files), so it sits above the models and below what runs them.
    "spec": {"base", "compute", "spec"},
    "glue": {"base", "compute", "spec", "glue"},  # stylefleet/deployments/serve: the Ray Serve wrappers
    "router": {"base", "compute", "spec", "glue", "router"},  # stylefleet/router: the HTTP ingress
    "tools": {"base", "compute", "spec", "glue", "router", "tools"},  # stylefleet/tools/ (CLI, batch, k8s) and stylefleet/bench/
}


def layer(module: str) -> str:
    parts = module.split(".")
    sub = parts[1] if len(parts) > 1 else ""
    if sub in ("tools", "bench"):  # stylefleet/bench: the benchmark, a package of its own at the tools layer
        return "tools"
    if sub == "router":
        return "router"
    if sub == "deployments":
        return "glue" if len(parts) > 2 and parts[2] == "serve" else "compute"
    return "spec" if sub == "spec" else "base"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} ({layer(module)}) imports {dep} ({layer(dep)})"
        for module, deps in graph.items()
        for dep in deps
        if layer(dep) not in LAYERS[layer(module)]
    )


def test_the_layer_check_catches_an_upward_import() -> None:
    graph = {
        "stylefleet.config": {"stylefleet.tools.cli"},
        "stylefleet.deployments.stylize": {"stylefleet.deployments.serve.serving"},
        "stylefleet.deployments.serve.serving": {"stylefleet.deployments.stylize", "stylefleet.config"},
        "stylefleet.router.app": {"stylefleet.deployments.serve.serving"},
    }
    assert layer_violations(graph) == [
        "stylefleet.config (base) imports stylefleet.tools.cli (tools)",
        "stylefleet.deployments.stylize (compute) imports stylefleet.deployments.serve.serving (glue)",
    ]


@pytest.mark.parametrize("lower", ["base", "compute", "spec", "glue", "router"])
def test_the_layer_check_catches_a_planted_upward_import_in_every_folder(lower: str) -> None:
    """A real module of each layer, given an import of the CLI, is reported: the walk covers every folder."""
    graph = import_graph(_modules())
    module = sorted(m for m in graph if layer(m) == lower)[0]
    graph[module] = graph[module] | {"stylefleet.tools.cli"}
    assert layer_violations(graph) == [f"{module} ({lower}) imports stylefleet.tools.cli (tools)"]


def test_every_import_goes_down_the_layers() -> None:
    graph = import_graph(_modules())
    assert {layer(m) for m in graph} == set(LAYERS)  # every layer was found
    assert layer_violations(graph) == []


def test_pure_compute_imports_no_ray() -> None:
    modules = _modules()
    using_ray = sorted(
        module
        for module, path in modules.items()
        if layer(module) == "compute"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        for name in _imported(node, module, path.name == "__init__.py")
        if name == "ray" or name.startswith("ray.")
    )
    assert using_ray == []


def test_nothing_imports_the_package_folders_by_their_bare_names() -> None:
    """stylefleet/deployments and stylefleet/router are imported through the package: a bare
    `import router` would load another distribution's module, or a second copy of ours."""
    files = [p for top in ("stylefleet", "tests", "scripts") if (ROOT / top).is_dir() for p in (ROOT / top).rglob("*.py")]
    assert len([p for p in files if "deployments" in p.parts]) > 15  # the walk enters the model folders
    bare = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        for name in _imported(node, "x", False)
        if name.split(".")[0] in ("deployments", "router")
    )
    assert bare == []


def _toml_table(text: str, table: str) -> dict[str, object]:
    """One table of a TOML file: tomllib (Python 3.11+), else ``tomli`` where installed, else a
    minimal reader of ``key = value`` lines whose values are also Python literals (strings, lists
    of strings, numbers): enough for the table read here, on Python 3.10 too."""
    try:
        import tomllib as toml
    except ModuleNotFoundError:
        try:
            import tomli as toml  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return _minimal_toml_table(text, table)
    found: object = toml.loads(text)
    for key in table.split("."):
        assert isinstance(found, dict)
        found = found[key]
    assert isinstance(found, dict)
    return found


def _minimal_toml_table(text: str, table: str) -> dict[str, object]:
    body = re.search(rf"^\[{re.escape(table)}\][ \t]*\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert body is not None, f"no [{table}] table"
    entries = (line.split("#", 1)[0].split("=", 1) for line in body[1].splitlines() if "=" in line.split("#", 1)[0])
    return {key.strip(): ast.literal_eval(value.strip()) for key, value in entries}


def test_the_minimal_toml_reader_reads_the_package_table_as_toml_does() -> None:
    toml = pytest.importorskip("tomllib")
    text = (ROOT / "pyproject.toml").read_text()
    assert _minimal_toml_table(text, "tool.setuptools.packages.find") == toml.loads(text)["tool"]["setuptools"]["packages"]["find"]
    assert _minimal_toml_table('[a.b]\nx = ["y*"]  # why\nn = 3\n[c]\nz = 1\n', "a.b") == {"x": ["y*"], "n": 3}


def test_the_distribution_installs_one_top_level_package_in_real_folders() -> None:
    find = _toml_table((ROOT / "pyproject.toml").read_text(), "tool.setuptools.packages.find")
    assert find["include"] == ["stylefleet*"]
    links = [str(p.relative_to(ROOT)) for top in (PACKAGE, "tests") for p in (ROOT / top).rglob("*") if p.is_symlink()]
    assert links == []
    assert not (ROOT / "deployments").exists() and not (ROOT / "router").exists()


def test_every_folder_of_python_modules_is_a_package() -> None:
    folders = {p.parent for p in (ROOT / PACKAGE).rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file()) == []
