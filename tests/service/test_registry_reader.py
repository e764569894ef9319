"""The serving side's registry reads: MLflow's public client or REST API, never its tables.

The REST reader against a real `mlflow server` is tested in tests/scaleout/test_tracking_server.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.modelbundle import ModelBundle, download_bundle
from service.registry_reader import MlflowReader, RegistryError, RestReader, reader_for
from tests.conftest import free_port
from tests.service.conftest import (
    Trained,
    edit_json,
    make_settings,
    register_variant,
    registry,
    set_production,
)


def test_reader_names_the_version_run_and_tags_mlflow_names(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    client = registry(settings)
    expected = client.get_model_version_by_alias("BTC-lstm", "production")

    info = MlflowReader(settings.tracking_uri).production("BTC-lstm")

    assert info is not None
    assert (info.version, info.run_id) == (str(expected.version), expected.run_id)
    assert info.tags == dict(expected.tags)
    assert info.tags  # the gate tags every version it decides on


def test_reader_follows_the_alias_when_it_moves(tmp_path: Path, trained: Trained) -> None:
    settings = make_settings(tmp_path, trained)
    version = register_variant(settings, tmp_path, name="BTC-lstm")
    set_production(settings, "BTC-lstm", version)

    info = MlflowReader(settings.tracking_uri).production("BTC-lstm")

    assert info is not None
    assert info.version == version != "1"


def test_no_alias_and_no_model_both_read_as_no_production_version(
    tmp_path: Path, trained: Trained
) -> None:
    settings = make_settings(tmp_path, trained)
    client = registry(settings)
    client.delete_registered_model_alias("ETH-lstm", "production")
    reader = MlflowReader(settings.tracking_uri)

    assert reader.production("ETH-lstm") is None
    assert reader.production("XMR-lstm") is None


def test_reader_copies_the_same_bundle_mlflow_downloads(tmp_path: Path, trained: Trained) -> None:
    settings = make_settings(tmp_path, trained)
    reader = MlflowReader(settings.tracking_uri)
    info = reader.production("BTC-gru")
    assert info is not None

    ours = ModelBundle.load(reader.download_bundle(info, tmp_path / "ours"))
    theirs = download_bundle(registry(settings), name="BTC-gru", version="1", dst=tmp_path / "x")

    assert ours.onnx_path.read_bytes() == theirs.onnx_path.read_bytes()
    assert ours.spec == theirs.spec
    assert ours.metadata == theirs.metadata


def test_reader_copies_the_bundle_of_the_versions_own_logged_model(
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
    reader = MlflowReader(settings.tracking_uri)
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


def test_summary_counts_what_the_registry_holds(tmp_path: Path, trained: Trained) -> None:
    settings = make_settings(tmp_path, trained)
    register_variant(settings, tmp_path, name="BTC-lstm")

    summary = MlflowReader(settings.tracking_uri).summary()

    assert summary.registered_models == 3
    assert summary.versions == 4
    assert summary.production == {"BTC-lstm": "1", "BTC-gru": "1", "ETH-lstm": "1"}


def test_a_tracking_server_is_read_over_rest_and_any_other_store_through_mlflow() -> None:
    assert isinstance(reader_for("http://127.0.0.1:5000"), RestReader)
    assert isinstance(reader_for("sqlite:///x.db"), MlflowReader)
    assert isinstance(reader_for("postgresql://u@localhost/mlflow"), MlflowReader)


def test_the_service_queries_no_table_of_mlflows_schema() -> None:
    # MLflow's tables are its own, unversioned: the service reads the registry through MLflow.
    tables = "|".join(
        ("registered_model_aliases", "model_versions", "model_version_tags", "registered_models")
    )
    query = re.compile(rf"\b(from|join|into|update)\s+({tables})\b", re.IGNORECASE)
    service = Path(__file__).resolve().parents[2] / "service"
    for path in service.rglob("*.py"):
        assert not query.search(path.read_text()), path


def test_an_unreachable_tracking_server_is_an_error_not_no_version() -> None:
    reader = reader_for(f"http://127.0.0.1:{free_port()}")

    with pytest.raises(RegistryError, match="unreachable"):
        reader.production("BTC-lstm")


def test_mlflow_is_imported_on_the_first_read_not_with_the_reader(
    tmp_path: Path, trained: Trained
) -> None:
    # The service builds its reader at start and reads in the background refresh: importing
    # MLflow (seconds) must wait for that first read.
    settings = make_settings(tmp_path, trained)
    script = textwrap.dedent(
        f"""
        import sys
        from service.registry_reader import reader_for
        reader = reader_for({settings.tracking_uri!r})
        print("mlflow" in sys.modules)
        print(reader.production("BTC-lstm").version)
        print("mlflow" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "1", "True"]
