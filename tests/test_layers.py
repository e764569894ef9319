"""A lower layer never imports an upper one (DESIGN.md, "The shape").

`pipelines` is the lowest layer; `mlproject` (training) and `service` (the API) sit on it side by
side and know nothing of each other; `tbml` (the command line) sits above all three. Every module
of the three layers is parsed, not imported, so an import inside a function counts, and so does a
string that names a module of a higher layer (what `importlib.import_module` would be given).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT

# Each layer, and the top-level packages it must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "pipelines": frozenset({"mlproject", "service", "tbml"}),
    "mlproject": frozenset({"service", "tbml"}),
    "service": frozenset({"mlproject", "tbml"}),
}
PACKAGES = frozenset({*FORBIDDEN, "tbml"})


def _is_module(dotted: str, root: Path) -> bool:
    """Whether `dotted` names a module or package of the project under `root`."""
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        return False
    path = root.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, *, root: Path = PROJECT_ROOT) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in `source`, anywhere in it, and every string
    constant that names one of the project's modules (a module to be imported by name)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.split(".")[0] in PACKAGES
            and _is_module(node.value, root)
        ):
            found.append((node.lineno, node.value))
    return found


def violations(layer: str, source: str, *, root: Path = PROJECT_ROOT) -> list[str]:
    """What `source`, a module of `layer`, imports from the layers above it or beside it."""
    return [
        f"line {line}: {module}"
        for line, module in imported_modules(source, root=root)
        if module.split(".")[0] in FORBIDDEN[layer]
    ]


def _modules(layer: str) -> list[Path]:
    return sorted(
        path for path in (PROJECT_ROOT / layer).rglob("*.py") if "__pycache__" not in path.parts
    )


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_imports_a_higher_or_sibling_layer(layer: str) -> None:
    modules = _modules(layer)
    assert len(modules) > 3, f"found only {modules} under {layer}/"
    found = {
        str(path.relative_to(PROJECT_ROOT)): bad
        for path in modules
        if (bad := violations(layer, path.read_text(encoding="utf-8")))
    }
    assert found == {}, f"{layer} must not import {sorted(FORBIDDEN[layer])}"


def test_an_import_inside_a_function_is_found() -> None:
    source = "def register(app):\n    from service import cli\n    cli.register(app)\n"
    assert violations("pipelines", source) == ["line 2: service"]


def test_a_string_naming_a_module_of_a_higher_layer_is_found() -> None:
    source = 'MODULES = ("pipelines.queue.tables", "service.history.tables")\n'
    assert violations("pipelines", source) == ["line 1: service.history.tables"]


def test_a_tag_name_that_only_looks_like_a_module_is_not_an_import() -> None:
    source = 'TAG_JOB_ID = "tbml.job_id"\nimport tbml_extra\n'
    assert violations("pipelines", source) == []


def test_the_layers_own_imports_are_allowed() -> None:
    source = "import pipelines.db\nfrom mlproject.config import TrainConfig\nfrom . import x\n"
    assert violations("mlproject", source) == []
