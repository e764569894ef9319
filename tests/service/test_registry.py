"""The serving side's registry reads agree with MLflow's own client, without importing MLflow."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.modelbundle import ModelBundle, download_bundle
from service.registry import MlflowReader, RegistryError, SqlReader, reader_for
from tests.conftest import free_port
from tests.service.conftest import (
    Trained,
    edit_json,
    make_settings,
    register_variant,
    registry,
    set_production,
)


def test_sql_reader_names_the_version_run_and_tags_mlflow_names(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    client = registry(settings)
    expected = client.get_model_version_by_alias("BTC-lstm", "production")

    info = SqlReader(settings.tracking_uri).production("BTC-lstm")

    assert info is not None
    assert (info.version, info.run_id) == (str(expected.version), expected.run_id)
    assert info.tags == dict(expected.tags)
    assert info.tags  # the gate tags every version it decides on


def test_sql_reader_follows_the_alias_when_it_moves(tmp_path: Path, trained: Trained) -> None:
    settings = make_settings(tmp_path, trained)
    version = register_variant(settings, tmp_path, name="BTC-lstm")
    set_production(settings, "BTC-lstm", version)

    info = SqlReader(settings.tracking_uri).production("BTC-lstm")

    assert info is not None
    assert info.version == version != "1"


def test_no_alias_and_no_model_both_read_as_no_production_version(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    client = registry(settings)
    client.delete_registered_model_alias("ETH-lstm", "production")
    reader = SqlReader(settings.tracking_uri)

    assert reader.production("ETH-lstm") is None
    assert reader.production("XMR-lstm") is None


def test_sql_reader_copies_the_same_bundle_mlflow_downloads(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    reader = SqlReader(settings.tracking_uri)
    info = reader.production("BTC-gru")
    assert info is not None

    ours = ModelBundle.load(reader.download_bundle(info, tmp_path / "ours"))
    theirs = download_bundle(registry(settings), name="BTC-gru", version="1", dst=tmp_path / "x")

    assert ours.onnx_path.read_bytes() == theirs.onnx_path.read_bytes()
    assert ours.spec == theirs.spec
    assert ours.metadata == theirs.metadata


def test_sql_reader_copies_the_bundle_of_the_versions_own_logged_model(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    version = register_variant(
        settings,
        tmp_path,
        name="BTC-lstm",
        edit=lambda d: edit_json(d / "metadata.json", beats_baseline=False, marker="variant"),
    )
    set_production(settings, "BTC-lstm", version)
    reader = SqlReader(settings.tracking_uri)
    info = reader.production("BTC-lstm")
    assert info is not None

    ours = ModelBundle.load(reader.download_bundle(info, tmp_path / "ours"))
    theirs = download_bundle(
        registry(settings), name="BTC-lstm", version=version, dst=tmp_path / "x"
    )

    assert info.source == registry(settings).get_model_version("BTC-lstm", version).source
    assert str(info.source).startswith("models:/m-")
    assert ours.metadata["marker"] == theirs.metadata["marker"] == "variant"
    assert ours.onnx_path.read_bytes() == theirs.onnx_path.read_bytes()


def test_summary_counts_what_mlflow_counts(tmp_path: Path, trained: Trained) -> None:
    settings = make_settings(tmp_path, trained)
    register_variant(settings, tmp_path, name="BTC-lstm")

    ours = SqlReader(settings.tracking_uri).summary()
    theirs = MlflowReader(settings.tracking_uri).summary()

    assert ours == theirs
    assert ours.registered_models == 3
    assert ours.versions == 4
    assert ours.production == {"BTC-lstm": "1", "BTC-gru": "1", "ETH-lstm": "1"}


def test_a_database_that_is_not_an_mlflow_store_falls_back_to_mlflow(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()
    reader = SqlReader(f"sqlite:///{path}")

    # MLflow's client creates its tables in the empty file and finds no model there.
    assert reader.production("BTC-lstm") is None


def test_an_unreachable_tracking_server_is_an_error_not_no_version() -> None:
    reader = reader_for(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(RegistryError, match="unreachable"):
        reader.production("BTC-lstm")


def test_reading_the_registry_does_not_import_mlflow(tmp_path: Path, trained: Trained) -> None:
    settings = make_settings(tmp_path, trained)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from service.registry import reader_for
        reader = reader_for({settings.tracking_uri!r})
        info = reader.production("BTC-lstm")
        reader.download_bundle(info, Path({str(tmp_path / "copy")!r}))
        reader.summary()
        print(sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
