"""PCA agrees with scikit-learn; streaming PCA equals dense PCA within the stated tolerance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.utils.estimator_checks import parametrize_with_checks

from latentlens.analysis.pca import PCA, StreamingPCA


def _data(n=1200, d=24, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.1, d)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * scales) @ basis.T + 500.0  # large offset: tests the shift


def _component_error(a, b):
    return float(np.max(1.0 - np.abs(np.sum(a * b, axis=1))))


def test_dense_pca_matches_sklearn():
    X = _data()
    ours = PCA(n_components=8).fit(X)
    ref = SklearnPCA(n_components=8, svd_solver="full").fit(X)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-10)
    assert _component_error(ours.components_, ref.components_) < 1e-10
    Z = ours.transform(X)
    np.testing.assert_allclose(np.abs(Z), np.abs(ref.transform(X)), atol=1e-8)


@pytest.mark.parametrize("precision, var_rtol, comp_tol", [("float64", 1e-10, 1e-10), ("float32", 1e-5, 1e-6)])
def test_streaming_equals_dense(precision, var_rtol, comp_tol):
    X = _data()
    dense = PCA(n_components=10).fit(X)
    streaming = StreamingPCA(n_components=10, precision=precision, batch_size=256)
    for batch in np.array_split(X, 11):
        streaming.partial_fit(torch.from_numpy(batch) if precision == "float32" else batch)
    assert streaming.n_samples_seen_ == len(X)
    np.testing.assert_allclose(streaming.explained_variance_, dense.explained_variance_, rtol=var_rtol)
    np.testing.assert_allclose(streaming.mean_, dense.mean_, rtol=1e-7)
    assert _component_error(streaming.components_, dense.components_) < comp_tol
    # components are sign-normalised identically, so projections agree directly
    np.testing.assert_allclose(streaming.transform(X[:50]), dense.transform(X[:50]), atol=1e-2 * np.sqrt(var_rtol))


def test_streaming_refits_from_scratch_and_rejects_wrong_width():
    X = _data(n=500, d=12)
    pca = StreamingPCA(n_components=3).fit(X)
    pca.fit(X[:250])
    assert pca.n_samples_seen_ == 250
    with pytest.raises(ValueError, match="12 features"):
        pca.partial_fit(np.zeros((4, 5)))


@parametrize_with_checks([PCA(), StreamingPCA()])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)
