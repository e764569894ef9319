"""`tbml.schema` lists every module that defines a table of the service database."""

from __future__ import annotations

import ast

from pipelines.settings import PROJECT_ROOT
from tbml.schema import TABLE_MODULES, metadata


def _defines_tables(source: str) -> bool:
    """Whether a module declares a class on `pipelines.db.Base` (a table)."""
    tree = ast.parse(source)
    imports_base = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "pipelines.db"
        and any(alias.name == "Base" for alias in node.names)
        for node in ast.walk(tree)
    )
    return imports_base and any(
        isinstance(node, ast.ClassDef)
        and any(isinstance(base, ast.Name) and base.id == "Base" for base in node.bases)
        for node in ast.walk(tree)
    )


def test_every_module_defining_tables_is_listed() -> None:
    found = {
        ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        for layer in ("pipelines", "mlproject", "service")
        for path in (PROJECT_ROOT / layer).rglob("*.py")
        if _defines_tables(path.read_text(encoding="utf-8"))
    }
    assert found, "no table modules found: the scan is broken"
    assert found == set(TABLE_MODULES)


def test_metadata_holds_the_tables_of_every_layer() -> None:
    tables = set(metadata().tables)
    assert {"training_jobs", "queue_control", "prediction_history"} <= tables
