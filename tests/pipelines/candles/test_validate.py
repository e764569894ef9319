"""Every validation rule, with the file, the line and the rule in the message."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.candles.validate import (
    CandleValidationError,
    find_gaps,
    read_candle_bytes,
    read_candle_file,
)

HEADER = "timestamp,open,high,low,close,volume"
GOOD = [
    "2024-01-01T00:00:00Z,100,110,95,105,12.5",
    "2024-01-01T01:00:00Z,105,108,101,102,7",
    "2024-01-01T02:00:00Z,102,104,99,103,0",
    "2024-01-01T03:00:00Z,103,106,100,104,3.25",
]


def write(tmp_path: Path, lines: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "BTC-USDT_1h.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def with_row(index: int, row: str) -> list[str]:
    """GOOD with the row at `index` (line `index + 2`) replaced."""
    lines = list(GOOD)
    lines[index] = row
    return lines


def test_good_file_loads_as_typed_utc_frame(tmp_path: Path) -> None:
    frame = read_candle_file(write(tmp_path, GOOD))

    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == "UTC"
    assert frame.index.name == "timestamp"
    assert frame.index[0] == pd.Timestamp("2024-01-01T00:00Z")
    assert frame["volume"].iloc[0] == 12.5


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ("timestamp,open,high,low,close", "missing volume"),
        ("timestamp,open,high,low,close,volume,ticker", "unexpected ticker"),
        ("time,open,high,low,close,volume", "missing timestamp; unexpected time"),
    ],
    ids=["missing", "extra", "renamed"],
)
def test_wrong_columns_are_refused_naming_them(tmp_path: Path, header: str, detail: str) -> None:
    fields = len(header.split(","))
    lines = [",".join(row.split(",")[:fields] + ["x"] * (fields - 6)) for row in GOOD]
    path = write(tmp_path, lines, header=header)

    with pytest.raises(CandleValidationError) as caught:
        read_candle_file(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: line 1: columns: ")
    assert detail in message
    assert "expected exactly timestamp,open,high,low,close,volume" in message
    assert caught.value.rule == "columns"
    assert caught.value.line == 1


# Each case: the row index broken in GOOD, the broken row, the rule, a fragment of the detail.
RULES = [
    (
        1,
        "2024-01-01T25:00:00Z,105,108,101,102,7",
        "unparsable timestamp",
        "'2024-01-01T25:00:00Z' is not an ISO 8601 time",
    ),
    (2, "yesterday,102,104,99,103,0", "unparsable timestamp", "'yesterday'"),
    (1, "2024-01-01T01:00:00Z,abc,108,101,102,7", "unparsable open", "'abc' is not a finite"),
    (3, "2024-01-01T03:00:00Z,103,106,100,104,", "unparsable volume", "'' is not a finite"),
    (2, "2024-01-01T02:00:00Z,102,104,99,nan,0", "unparsable close", "'nan'"),
    (2, "2024-01-01T02:00:00Z,102,inf,99,103,0", "unparsable high", "'inf'"),
    (1, "2024-01-01T01:00:00Z,105,108,101,0,7", "non-positive price", "close=0.0 must be > 0"),
    (3, "2024-01-01T03:00:00Z,103,106,-1,104,3", "non-positive price", "low=-1.0 must be > 0"),
    (0, "2024-01-01T00:00:00Z,100,110,95,105,-2", "negative volume", "volume=-2.0"),
    (
        2,
        "2024-01-01T02:00:00Z,102,102.5,99,103,0",
        "high below max(open, close)",
        "high=102.5 < max(open=102.0, close=103.0)",
    ),
    (
        1,
        "2024-01-01T01:00:00Z,105,108,102.5,102,7",
        "low above min(open, close)",
        "low=102.5 > min(open=105.0, close=102.0)",
    ),
    (
        2,
        "2024-01-01T01:00:00Z,102,104,99,103,0",
        "duplicated timestamp",
        "2024-01-01T01:00:00+00:00 appears twice",
    ),
    (
        2,
        "2024-01-01T00:30:00Z,102,104,99,103,0",
        "non-increasing timestamp",
        "2024-01-01T00:30:00+00:00 comes after 2024-01-01T01:00:00+00:00",
    ),
]


@pytest.mark.parametrize(
    ("index", "row", "rule", "detail"), RULES, ids=[f"{r[2]}-{i}" for i, r in enumerate(RULES)]
)
def test_each_rule_names_file_line_and_rule(
    tmp_path: Path, index: int, row: str, rule: str, detail: str
) -> None:
    path = write(tmp_path, with_row(index, row))
    line = index + 2  # the header is line 1

    with pytest.raises(CandleValidationError) as caught:
        read_candle_file(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: line {line}: {rule}: "), message
    assert detail in message
    assert (caught.value.rule, caught.value.line) == (rule, line)
    # The line named really is the offending row.
    assert path.read_text().splitlines()[line - 1] == row


def test_error_counts_further_rows_breaking_the_same_rule(tmp_path: Path) -> None:
    lines = list(GOOD)
    lines[1] = "2024-01-01T01:00:00Z,105,108,101,-5,7"
    lines[3] = "2024-01-01T03:00:00Z,103,106,100,-5,3.25"

    with pytest.raises(CandleValidationError) as caught:
        read_candle_file(write(tmp_path, lines))

    assert str(caught.value).endswith(
        "line 3: non-positive price: close=-5.0 must be > 0 (and 1 more rows)"
    )


def test_blank_line_is_refused_at_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, [*GOOD[:2], "", *GOOD[2:]])

    with pytest.raises(CandleValidationError) as caught:
        read_candle_file(path)

    assert (caught.value.rule, caught.value.line) == ("unparsable timestamp", 4)


def test_empty_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "BTC-USDT_1h.csv"
    path.write_text("")

    with pytest.raises(CandleValidationError, match=rf"^{path}: empty file"):
        read_candle_file(path)


def test_row_with_too_many_fields_is_malformed_csv(tmp_path: Path) -> None:
    path = write(tmp_path, with_row(2, "2024-01-01T02:00:00Z,102,104,99,103,0,9"))

    with pytest.raises(CandleValidationError, match=rf"^{path}: malformed CSV: .*line 4"):
        read_candle_file(path)


def test_gzipped_file_reads_like_plain(tmp_path: Path) -> None:
    plain = write(tmp_path, GOOD)
    packed = tmp_path / "BTC-USDT_1h.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))

    pd.testing.assert_frame_equal(read_candle_file(packed), read_candle_file(plain))


def test_content_not_yet_written_is_checked_under_the_given_name() -> None:
    content = "\n".join([HEADER, *with_row(1, "2024-01-01T01:00:00Z,105,104,101,102,7")]) + "\n"

    with pytest.raises(CandleValidationError, match=r"^about-to-write: line 3: high below max"):
        read_candle_bytes(content.encode(), "about-to-write")


def test_gaps_are_counted_between_rows_not_filled(tmp_path: Path) -> None:
    lines = [GOOD[0], "2024-01-01T04:00:00Z,103,106,100,104,3", "2024-01-01T05:00:00Z,1,2,1,1,1"]
    frame = read_candle_file(write(tmp_path, lines))

    gaps = find_gaps(frame, "1h")

    assert len(frame) == 3
    assert [(g.after, g.before, g.missing) for g in gaps] == [
        (pd.Timestamp("2024-01-01T00:00Z"), pd.Timestamp("2024-01-01T04:00Z"), 3)
    ]
    assert str(gaps[0]) == "2024-01-01 00:00 -> 2024-01-01 04:00: 3 missing"
    assert find_gaps(frame, "15m")[0].missing == 15
