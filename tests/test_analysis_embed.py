"""2-D embeddings: the PCA fallback is exact and method names are checked."""

from __future__ import annotations

import numpy as np
import pytest

from latentlens.analysis.embed import embed_2d
from latentlens.analysis.pca import PCA
from latentlens.errors import ConfigError


def test_pca_embedding_is_the_first_two_components():
    X = np.random.default_rng(0).normal(size=(50, 6)) * np.array([5, 3, 1, 1, 1, 1])
    out = embed_2d(X, method="pca")
    assert out["method"] == "pca" and out["coords"].shape == (50, 2) and out["coords"].dtype == np.float32
    np.testing.assert_allclose(out["coords"], PCA(2).fit_transform(X.astype(np.float32)), atol=1e-4)


def test_bad_embedding_requests():
    with pytest.raises(ConfigError, match="method must be"):
        embed_2d(np.zeros((5, 3)), method="tsne")
    with pytest.raises(ConfigError, match="n_samples >= 3"):
        embed_2d(np.zeros((2, 3)))
