"""Atomic replacement of a file's content."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.candles.atomic import write_atomic


def test_new_file_is_created_with_its_folders_and_readable_mode(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "file.csv"

    write_atomic(path, b"content\n")

    assert path.read_bytes() == b"content\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.csv"]


def test_replacement_keeps_the_old_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "file.csv"
    path.write_bytes(b"old\n")
    path.chmod(0o640)

    write_atomic(path, b"new\n")

    assert path.read_bytes() == b"new\n"
    assert path.stat().st_mode & 0o777 == 0o640


def test_failed_write_keeps_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "file.csv"
    path.write_bytes(b"old\n")

    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]

    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file.csv"]
