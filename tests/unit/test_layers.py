"""No import runs up a layer, and each state path has one spelling.

The layers come from the ```layers block of ARCHITECTURE.md (its one statement): each line names
a layer, the modules in it (a path ending in ``/`` is a folder) and the layers it uses. Every
module of the package is read with :mod:`ast`, so an import under ``TYPE_CHECKING`` or inside a
function counts like any other.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "esp_mirror_plugin"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


@dataclass(frozen=True)
class Layer:
    name: str
    paths: tuple[str, ...]  # relative to the package; "x/" is the folder x
    uses: tuple[str, ...]


def layers_of(text: str) -> list[Layer]:
    """The layers of the ```layers block of ``text``, top first."""
    blocks = re.findall(r"^```layers\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "ARCHITECTURE.md needs exactly one ```layers block"
    layers = []
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        words, _, uses = line.partition(" uses ")
        name, *paths = words.split()
        layers.append(Layer(name, tuple(paths), tuple(uses.split())))
    return layers


def allowed(layers: list[Layer]) -> dict[str, set[str]]:
    """Each layer's own name and every layer below the ones it uses (transitively)."""
    by_name = {layer.name: layer for layer in layers}
    reach: dict[str, set[str]] = {}
    for layer in layers:
        seen, todo = {layer.name}, list(layer.uses)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(by_name[name].uses)
        reach[layer.name] = seen
    return reach


def module_name(package: Path, path: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(package: Path, path: Path, layers: list[Layer]) -> str | None:
    relative = path.relative_to(package).as_posix()
    for layer in layers:
        for entry in layer.paths:
            if relative == entry or (entry.endswith("/") and relative.startswith(entry)):
                return layer.name
    return None


def imports(package: Path, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the package's own modules in ``path``."""
    modules = {module_name(package, p) for p in package.rglob("*.py")}
    here = module_name(package, path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in modules else base))
    return [(line, name) for line, name in dict.fromkeys(found) if name in modules]


def upward_imports(package: Path, layers: list[Layer]) -> list[str]:
    """One line per import that runs up a layer (or touches a module in no layer)."""
    reach = allowed(layers)
    paths = {module_name(package, p): p for p in sorted(package.rglob("*.py"))}
    problems = []
    for path in paths.values():
        layer = layer_of(package, path, layers)
        if layer is None:
            problems.append(f"{path.relative_to(package)}: in no layer of ARCHITECTURE.md")
            continue
        for line, imported in imports(package, path):
            above = layer_of(package, paths[imported], layers)
            if above not in reach[layer]:
                problems.append(
                    f"{path.relative_to(package)}:{line} imports {imported} ({layer} must not import {above})"
                )
    return problems


def test_the_layers_come_from_architecture_md() -> None:
    layers = layers_of(ARCHITECTURE.read_text())
    names = [layer.name for layer in layers]
    assert names[:6] == ["cli", "host", "plugin", "upkeep", "hooks", "pipeline"]
    assert names[-2:] == ["system", "base"]
    assert set(allowed(layers)["upkeep"]) == set(names) - {"cli", "host", "plugin"}
    assert allowed(layers)["system"] == {"system", "base"}
    # pipeline/ is named file by file, so that a circle among its files runs up a layer
    pipeline = [p for layer in layers for p in layer.paths if p.startswith("pipeline/")]
    assert "pipeline/" not in pipeline
    assert sorted(pipeline) == sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "pipeline").glob("*.py")), (
        "every file of pipeline/ is in one layer of ARCHITECTURE.md"
    )


def test_no_import_runs_up_a_layer() -> None:
    assert upward_imports(PACKAGE, layers_of(ARCHITECTURE.read_text())) == []


SYNTHETIC = """
```layers
top     top.py            uses low
low     low/ __init__.py
```
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("from pkg.low import deep\n")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "deep.py").write_text("import os\nfrom pkg import low\n")
    return package


def test_a_tree_that_imports_downwards_passes(tree: Path) -> None:
    assert upward_imports(tree, layers_of(SYNTHETIC)) == []


def test_every_kind_of_upward_import_is_named(tree: Path) -> None:
    (tree / "low" / "deep.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import pkg.top\n"
        "from pkg import top\n"
        "from .. import top as again\n"
        "if TYPE_CHECKING:\n"
        "    from pkg.top import Thing\n"
        "def later():\n"
        "    from pkg.top import other\n"
    )
    assert upward_imports(tree, layers_of(SYNTHETIC)) == [
        "low/deep.py:3 imports pkg.top (low must not import top)",
        "low/deep.py:4 imports pkg.top (low must not import top)",
        "low/deep.py:5 imports pkg.top (low must not import top)",
        "low/deep.py:7 imports pkg.top (low must not import top)",
        "low/deep.py:9 imports pkg.top (low must not import top)",
    ]


def test_a_module_in_no_layer_is_named(tree: Path) -> None:
    (tree / "stray.py").write_text("")
    assert upward_imports(tree, layers_of(SYNTHETIC)) == ["stray.py: in no layer of ARCHITECTURE.md"]


def test_the_real_tree_fails_once_a_layer_no_longer_uses_the_one_below() -> None:
    layers = [
        Layer("hooks", ("hooks/",), ("system",)) if layer.name == "hooks" else layer
        for layer in layers_of(ARCHITECTURE.read_text())
    ]
    ours = [p for p in upward_imports(PACKAGE, layers) if p.startswith("hooks/")]
    assert any(
        re.fullmatch(r"hooks/fstab\.py:\d+ imports esp_mirror_plugin\.pipeline\.fat \(hooks must not import fat\)", p)
        for p in ours
    )
    assert all(" imports esp_mirror_plugin.pipeline." in p for p in ours)


def _strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of ``path`` that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_the_state_directory_is_spelled_once() -> None:
    spelled = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, value in _strings(path)
        if "var/lib/esp-mirror" in value
    ]
    assert spelled == ["system/state.py:11"]


def circles(package: Path) -> list[list[str]]:
    """Every import circle among the package's modules (``TYPE_CHECKING`` and imports in
    functions included), each as the modules in it, sorted."""
    paths = {module_name(package, p): p for p in sorted(package.rglob("*.py"))}
    graph = {name: {m for _, m in imports(package, path) if m != name} for name, path in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    assert circles(PACKAGE) == []


def test_a_circle_is_found_and_named(tree: Path) -> None:
    (tree / "low" / "deep.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.top\n")
    assert circles(tree) == [["pkg.low.deep", "pkg.top"]]


def test_a_circle_in_pipeline_runs_up_a_layer() -> None:
    """request.py importing bootloaders.py again (the circle this layout broke) fails the layers."""
    layers = layers_of(ARCHITECTURE.read_text())
    request = PACKAGE / "pipeline" / "request.py"
    assert layer_of(PACKAGE, request, layers) != layer_of(PACKAGE, PACKAGE / "pipeline" / "bootloaders.py", layers)
    reach = allowed(layers)[layer_of(PACKAGE, request, layers) or ""]
    assert layer_of(PACKAGE, PACKAGE / "pipeline" / "bootloaders.py", layers) not in reach
