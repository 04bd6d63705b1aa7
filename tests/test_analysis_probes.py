"""Linear probes agree with scikit-learn, report honest held-out accuracy, and flag NaN cells."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from latentlens.analysis.probes import LinearProbe, LinearProbeGrid, control_labels, grouped_split, wilson_interval
from latentlens.errors import ConfigError


def _blobs(n=500, d=12, k=4, spread=0.9, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * spread
    y = rng.integers(k, size=n)
    X = centres[y] + rng.normal(size=(n, d)) + 2.0
    X[:, 0] *= 7.0  # badly scaled feature: standardisation must handle it
    return X, y


def _sklearn_reference(X, y, C):
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=10_000, tol=1e-10)).fit(X, y)
    scaler, lr = pipe[0], pipe[1]
    coef = lr.coef_ / scaler.scale_  # [k, d] in original units
    intercept = lr.intercept_ - (scaler.mean_ / scaler.scale_) @ lr.coef_.T
    return pipe, coef, intercept - intercept.mean()


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_linear_probe_matches_sklearn(C):
    X, y = _blobs()
    probe = LinearProbe(C=C).fit(X, y)
    pipe, coef, intercept = _sklearn_reference(X, y, C)
    assert np.abs(probe.coef_ - coef).max() <= 1e-3 * np.abs(coef).max()
    assert np.abs(probe.intercept_ - intercept).max() <= 1e-2
    assert (probe.predict(X) == pipe.predict(X)).mean() >= 0.995
    np.testing.assert_allclose(probe.predict_proba(X), pipe.predict_proba(X), atol=2e-3)


def test_grid_matches_sklearn_per_cell():
    X, y = _blobs(n=600, d=10, k=3, spread=0.5)
    rng = np.random.default_rng(1)
    X2 = X + rng.normal(size=X.shape) * 2.0
    features = {("blocks.0.resid_out.img", 0): X, ("blocks.1.resid_out.img", 0): X2}
    grid = LinearProbeGrid(C=1.0, max_features=None, tol=1e-7, max_iter=2000, dtype=torch.float64).fit(
        features, {"a": y}
    )
    test = grid.test_mask_
    assert 0.15 < test.mean() < 0.25
    for (site, step), x in features.items():
        pipe, coef, intercept = _sklearn_reference(x[~test], y[~test], 1.0)
        ours = grid.coef_[(site, step)]["a"]
        assert np.abs(ours - coef).max() <= 1e-3 * np.abs(coef).max()
        np.testing.assert_allclose(grid.intercept_[(site, step)]["a"], intercept, atol=1e-2)
        row = next(r for r in grid.records() if r["site"] == site)
        assert row["accuracy"] == pytest.approx(pipe.score(x[test], y[test]), abs=1.0 / test.sum() + 1e-9)
        assert row["n_test"] == test.sum() and row["ci_low"] <= row["accuracy"] <= row["ci_high"]


def test_grid_pca_reduction_keeps_accuracy_and_maps_weights_back():
    X, y = _blobs(n=800, d=40, k=4, spread=0.8)
    grid = LinearProbeGrid(max_features=8).fit({("blocks.0.resid_out.img", 0): X}, {"a": y})
    assert grid.records()[0]["accuracy"] > 0.85
    coef = grid.coef_[("blocks.0.resid_out.img", 0)]["a"]
    assert coef.shape == (4, 40)
    logits = X @ coef.T + grid.intercept_[("blocks.0.resid_out.img", 0)]["a"]
    assert (logits.argmax(1)[grid.test_mask_] == y[grid.test_mask_]).mean() == pytest.approx(
        grid.records()[0]["accuracy"], abs=0.02
    )


def test_grid_with_fewer_samples_than_components_does_not_fit_noise():
    # 48 samples of width 128 with max_features=64: the 38 centred training rows span 37 directions;
    # whitening a 38th (numerically empty) component used to wreck the held-out rows
    X, y = _blobs(n=48, d=128, k=3, spread=0.8)
    grid = LinearProbeGrid(max_features=64).fit({("blocks.0.resid_out.img", 0): X}, {"a": y})
    assert grid.records()[0]["accuracy"] >= 0.9


def test_grid_shapes_best_selectivity_and_nan_report():
    rng = np.random.default_rng(0)
    n, d = 600, 16
    labels = {"color": rng.choice(["red", "blue", "green"], size=n), "size": rng.choice(["small", "large"], size=n)}
    code = {"red": 0, "blue": 1, "green": 2, "small": 3, "large": 4}
    signal = np.zeros((n, d))
    for attribute in labels:
        signal[np.arange(n), [code[v] for v in labels[attribute]]] = 1.0
    features = {}
    for block in range(3):
        for step in range(2):
            features[(f"blocks.{block}.resid_out.img", step)] = signal * 2.5 * block + rng.normal(size=(n, d))
            features[(f"blocks.{block}.resid_out.txt", step)] = rng.normal(size=(n, d))
    features[("blocks.1.resid_out.txt", 1)][5, 3] = np.nan
    grid = LinearProbeGrid(random_state=3).fit(features, labels, types=np.arange(n) // 2)
    assert grid.nan_cells_ == [{"site": "blocks.1.resid_out.txt", "step": 1, "nan_count": 1}]
    blocks, steps, table = grid.grid("color", "img")
    assert blocks == [0, 1, 2] and steps == [0, 1] and table.shape == (3, 2)
    assert (table[2] > 0.95).all() and (table[0] < 0.6).all()
    best = grid.best("color", "img")
    assert best["block"] == 2 and best["accuracy"] > 0.95
    assert best["selectivity"] > 0.4  # control task: a random class per type (pair of samples)
    _, _, txt = grid.grid("size", "txt")
    assert np.isnan(txt[1, 1]) and np.nanmax(txt) < 0.7
    nan_rows = [r for r in grid.records() if r["nan"]]
    assert {(r["site"], r["step"]) for r in nan_rows} == {("blocks.1.resid_out.txt", 1)}
    direction = grid.direction("color", "blocks.2.resid_out.img", 0, to="blue", from_="red")
    assert direction.shape == (d,) and direction[1] > 0 > direction[0]
    with pytest.raises(ConfigError, match="no attribute 'shape'"):
        grid.best("shape")
    with pytest.raises(ConfigError, match="no class 'pink'"):
        grid.direction("color", "blocks.2.resid_out.img", 0, to="pink")


def test_grid_refuses_bad_input():
    X = np.zeros((20, 3))
    with pytest.raises(ConfigError, match="single class"):
        LinearProbeGrid().fit({("blocks.0.resid_out.img", 0): X}, {"a": np.zeros(20)})
    with pytest.raises(ConfigError, match="19 labels"):
        LinearProbeGrid().fit({("blocks.0.resid_out.img", 0): X}, {"a": np.arange(19) % 2})


def test_wilson_interval_matches_scipy():
    for k, n in [(0, 10), (7, 10), (95, 100), (200, 200), (413, 500)]:
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_split_keeps_groups_together_and_control_labels_follow_types():
    groups = [i // 3 for i in range(300)]
    test = grouped_split(300, 0.2, groups, seed=0)
    for g in range(100):
        assert len(set(test[3 * g : 3 * g + 3])) == 1
    assert 0.18 <= test.mean() <= 0.23
    y = np.array([0, 1] * 150)
    types = [i % 10 for i in range(300)]
    control = control_labels(y, types, 2, np.random.default_rng(0))
    for t in range(10):
        assert len(set(control[t::10])) == 1


@parametrize_with_checks([LinearProbe()])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
