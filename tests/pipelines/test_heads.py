"""The heads of the tabular model types: what they compute, how they save, what they refuse, and
that a bundle holding one predicts through it without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from mlproject.tabular import to_onnx
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import default_spec
from pipelines.heads import (
    HEAD_FILE,
    LIGHTGBM_FILE,
    POOLED_FILE,
    BlendHead,
    HeadError,
    LightGBMHead,
    LogisticHead,
    load_head,
    save_head,
    tabular_rows,
)
from pipelines.modelbundle import BundleError, ModelBundle
from pipelines.settings import PROJECT_ROOT

FEATURES = 4


def _windows(rows: int, steps: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, steps, FEATURES)).astype(np.float32)


def _booster(extra_column: bool = False) -> lgb.Booster:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, FEATURES + int(extra_column)))
    if extra_column:
        x[:, -1] = rng.integers(0, 3, size=600)
    lift = 1.5 * (x[:, -1] == 2) if extra_column else 0.0  # the pair code matters
    y = (x[:, 0] + lift + 0.3 * rng.normal(size=600) > 0).astype(float)
    params = {"objective": "binary", "num_leaves": 4, "verbosity": -1, "num_threads": 1}
    categorical = [FEATURES] if extra_column else "auto"
    return lgb.train(
        params, lgb.Dataset(x, label=y, categorical_feature=categorical), num_boost_round=20
    )


def test_tabular_rows_put_the_last_steps_side_by_side_newest_first() -> None:
    windows = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)

    rows = tabular_rows(windows, lags=2)

    assert rows.tolist() == [[4, 5, 2, 3], [10, 11, 8, 9]]
    with pytest.raises(HeadError, match="lags must be between 1 and the window length 3"):
        tabular_rows(windows, lags=4)


def test_logistic_head_reads_only_the_last_step() -> None:
    head = LogisticHead(coef=np.array([1.0, -2.0, 0.0, 0.5]), intercept=0.25)
    windows = _windows(5)
    changed = windows.copy()
    changed[:, :-1, :] += 10.0  # every step but the last

    expected = 1 / (1 + np.exp(-(windows[:, -1, :] @ head.coef + 0.25)))
    np.testing.assert_allclose(head.proba(windows), expected, rtol=1e-12)
    np.testing.assert_array_equal(head.proba(changed), head.proba(windows))


def test_lightgbm_head_gives_the_boosters_own_probabilities_and_its_pair_code() -> None:
    booster = _booster(extra_column=True)
    onnx_model = to_onnx(booster)
    windows = _windows(50)
    head = LightGBMHead(onnx_model=onnx_model, pair_index=2, pairs=("BTC", "ETH", "XMR"))

    rows = np.column_stack([windows[:, -1, :], np.full(50, 2.0)])
    # The ONNX conversion reads float32 rows: LightGBM's own answer within float precision.
    np.testing.assert_allclose(head.proba(windows), booster.predict(rows), atol=1e-6)
    other = LightGBMHead(onnx_model=onnx_model, pair_index=0, pairs=("BTC", "ETH", "XMR"))
    assert np.abs(other.proba(windows) - head.proba(windows)).max() > 1e-3  # the code counts
    assert head.inputs(windows)[:, -1].tolist() == [2.0] * 50
    assert other.inputs(windows)[:, -1].tolist() == [0.0] * 50


def test_a_blend_is_the_weighted_mean_of_its_members() -> None:
    linear = LogisticHead(coef=np.array([0.5, 0.0, 0.0, 0.0]), intercept=0.0)
    boosted = LightGBMHead(onnx_model=to_onnx(_booster()))
    blend = BlendHead(members=(boosted, linear), weights=(0.3, 0.7))
    windows = _windows(40)

    expected = 0.3 * boosted.proba(windows) + 0.7 * linear.proba(windows)
    np.testing.assert_allclose(blend.proba(windows), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("weights", "words"),
    [((0.5, 0.6), "sum to 1"), ((1.2, -0.2), ">= 0"), ((1.0,), "one weight per member")],
)
def test_blend_weights_must_be_a_distribution(weights: tuple[float, ...], words: str) -> None:
    linear = LogisticHead(coef=np.zeros(FEATURES), intercept=0.0)
    with pytest.raises(HeadError, match=words):
        BlendHead(members=(linear, linear), weights=weights)


def test_every_head_survives_a_save_and_load(tmp_path: Path) -> None:
    boosted = LightGBMHead(onnx_model=to_onnx(_booster()))
    pooled = LightGBMHead(
        onnx_model=to_onnx(_booster(extra_column=True)),
        pair_index=1,
        pairs=("BTC", "ETH", "XMR"),
        file=POOLED_FILE,
    )
    linear = LogisticHead(coef=np.array([0.1, 0.2, -0.3, 0.4]), intercept=-0.1)
    blend = BlendHead(members=(boosted, pooled, linear), weights=(0.5, 0.25, 0.25))
    windows = _windows(30)

    save_head(blend, tmp_path)
    loaded = load_head(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [HEAD_FILE, LIGHTGBM_FILE, POOLED_FILE]
    )
    np.testing.assert_array_equal(loaded.proba(windows), blend.proba(windows))


@pytest.mark.parametrize(
    ("description", "words"),
    [
        ({"kind": "forest"}, "unknown head kind 'forest'"),
        ({"kind": "lightgbm", "file": "../../etc/passwd"}, "reads one of lightgbm.onnx"),
        ({"kind": "lightgbm"}, "file lightgbm.onnx is missing"),
        ({"kind": "logistic", "coef": [1.0, "x"], "intercept": 0}, "invalid logistic head"),
        ({"kind": "logistic", "coef": [float("inf")], "intercept": 0}, "finite"),
        ({"kind": "blend", "members": [], "weights": []}, "one weight per member"),
    ],
)
def test_a_bad_head_description_is_refused_with_its_reason(
    tmp_path: Path, description: dict[str, object], words: str
) -> None:
    (tmp_path / HEAD_FILE).write_text(json.dumps(description))
    with pytest.raises(HeadError, match=words):
        load_head(tmp_path)


def _head_bundle(tmp_path: Path, *, boosted: bool = False) -> Path:
    spec = default_spec()
    n = len(spec.names)
    rng = np.random.default_rng(0)
    scaler = FeatureScaler.fit(rng.normal(1.0, 3.0, size=(300, n)), names=spec.names)
    head: LogisticHead | BlendHead = LogisticHead(coef=rng.normal(size=n) * 0.1, intercept=0.05)
    if boosted:
        x = rng.normal(size=(400, n))
        booster = lgb.train(
            {"objective": "binary", "num_leaves": 4, "verbosity": -1, "num_threads": 1},
            lgb.Dataset(x, label=(x[:, 0] > 0).astype(float)),
            num_boost_round=10,
        )
        head = BlendHead(
            members=(LightGBMHead(onnx_model=to_onnx(booster)), head), weights=(0.5, 0.5)
        )
    metadata = {"pair": "BTC", "model_type": "logistic", "sequence_length": 6, "horizon": 1}
    directory = tmp_path / "bundle"
    ModelBundle(
        onnx_path=directory / HEAD_FILE, head=head, scaler=scaler, spec=spec, metadata=metadata
    ).save(directory)
    return directory


def test_a_head_bundle_predicts_scaled_last_steps_through_its_head(tmp_path: Path) -> None:
    directory = _head_bundle(tmp_path)
    bundle = ModelBundle.load(directory)
    raw = np.random.default_rng(5).normal(1.0, 3.0, size=(7, 6, len(bundle.spec.names)))

    assert bundle.head is not None
    assert not (directory / "model.onnx").exists()
    expected = bundle.head.proba(bundle.scaler.transform(raw))
    np.testing.assert_allclose(bundle.predict_proba(raw), expected, rtol=1e-12)
    with pytest.raises(BundleError, match=r"expected windows of shape \(n, 6, "):
        bundle.predict_proba(raw[:, :5, :])


def test_a_bundle_without_onnx_or_head_is_refused(tmp_path: Path) -> None:
    directory = _head_bundle(tmp_path)
    (directory / HEAD_FILE).unlink()

    with pytest.raises(BundleError, match=r"lacks a model \(model.onnx or head.json\)"):
        ModelBundle.load(directory)


def test_a_head_bundle_predicts_without_tensorflow_or_lightgbm(tmp_path: Path) -> None:
    directory = _head_bundle(tmp_path, boosted=True)
    code = f"""
import sys
sys.modules["tensorflow"] = None
sys.modules["keras"] = None
sys.modules["lightgbm"] = None
sys.modules["sklearn"] = None
from pathlib import Path
import numpy as np
from pipelines.modelbundle import ModelBundle
bundle = ModelBundle.load(Path({str(directory)!r}))
p = bundle.predict_proba(np.zeros((2, 6, len(bundle.spec.names))))
assert p.shape == (2,), p
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
