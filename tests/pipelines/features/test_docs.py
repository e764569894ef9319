"""docs/features.md is generated from the registry and must not drift from it."""

from __future__ import annotations

from pipelines.features.docs import DOCS_PATH, main, render
from pipelines.features.spec import FEATURE_SETS, default_spec, feature_spec


def test_committed_docs_equal_the_generated_docs() -> None:
    assert DOCS_PATH.read_text() == render(), (
        "docs/features.md is stale: run `python -m pipelines.features.docs`"
    )


def test_docs_table_lists_every_feature_with_its_definition() -> None:
    text = render()
    for name in default_spec().names:
        assert f"| `{name}` |" in text
    assert f"`{default_spec().version}`" in text


def test_check_mode_reports_a_fresh_file_as_up_to_date() -> None:
    assert main(["--check"]) == 0


def test_docs_list_every_feature_set_and_its_features() -> None:
    text = render()
    for name in FEATURE_SETS:
        spec = feature_spec(name, references=("BTC", "ETH", "XMR", "RVN"))
        assert f"`{spec.version}`" in text
        for feature in spec.names:
            assert f"`{feature}`" in text
    assert f"`{feature_spec('extended', timeframe='15m').version}`" in text
