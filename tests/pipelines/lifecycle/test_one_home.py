"""Each statistic and decision of the lifecycle is defined once, in `pipelines.lifecycle`.

A copy elsewhere drifts from the original (three log-loss clips, two Wilson intervals and two
bootstraps once disagreed), so defining one of these names outside the package fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HOME = ROOT / "pipelines" / "lifecycle"
SOURCES = ("pipelines", "mlproject", "service", "tbml")
# Function names that are a lifecycle statistic or decision.
OWNED = frozenset(
    {
        "log_loss",
        "log_losses",
        "brier_losses",
        "wilson_interval",
        "paired_interval",
        "paired_block_bootstrap",
        "block_bootstrap_interval",
        "newey_west_lag",
        "detectable_edge",
        "rows_per_day",
        "naive_probabilities",
        "model_age_hours",
        "model_stale",
        "candle_stale",
        "proof_of",
        "outcomes",
    }
)
# Constants that clip probabilities for a loss.
OWNED_CONSTANTS = frozenset({"LOG_LOSS_EPS", "_LOSS_EPS"})


def _definitions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = node.name.lstrip("_")
            if name in OWNED:
                found.append((node.name, node.lineno))
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in OWNED_CONSTANTS:
                    found.append((target.id, node.lineno))
        elif isinstance(node, ast.Constant) and node.value == 1e-15:
            found.append(("a 1e-15 probability clip", node.lineno))
    return found


def _modules() -> list[Path]:
    return sorted(
        path
        for source in SOURCES
        for path in (ROOT / source).rglob("*.py")
        if HOME not in path.parents
    )


def test_the_package_defines_what_it_owns() -> None:
    names = {name.lstrip("_") for path in HOME.glob("*.py") for name, _ in _definitions(path)}

    assert {"log_losses", "wilson_interval", "paired_interval", "rows_per_day"} <= names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_other_module_defines_a_lifecycle_statistic(path: Path) -> None:
    copies = _definitions(path)

    assert not copies, (
        f"{path.relative_to(ROOT)} defines {copies}: import it from pipelines.lifecycle instead"
    )


def test_the_scan_finds_a_copy(tmp_path: Path) -> None:
    copy = tmp_path / "copy.py"
    copy.write_text("def log_loss(y, p):\n    return 0.0\nEPS = 1e-15\n", encoding="utf-8")

    assert [name for name, _ in _definitions(copy)] == ["log_loss", "a 1e-15 probability clip"]
