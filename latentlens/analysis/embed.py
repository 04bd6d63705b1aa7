"""2-D embeddings of activations for the dashboard: UMAP when umap-learn is installed, else PCA.

umap-learn is an optional dependency (``pip install latentlens[umap]``): it pulls in numba,
whose first call in a process compiles for ~10-30 s on a laptop CPU. Without it,
:func:`embed_2d` falls back to the first two principal components and says so in its
``method`` field, so a dashboard can label the axes honestly.

Example::

    from latentlens.analysis.embed import embed_2d
    out = embed_2d(X, method="auto")     # {'coords': [sample, 2], 'method': 'umap' | 'pca'}
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import numpy as np

from latentlens.errors import ConfigError


def umap_available() -> bool:
    """Whether umap-learn can be imported."""
    return importlib.util.find_spec("umap") is not None


def embed_2d(X: Any, method: str = "auto", random_state: int = 0, n_neighbors: int = 15) -> dict[str, Any]:
    """Embed ``X`` ``[sample, channel]`` in 2-D.

    ``method``: ``"umap"`` (error if umap-learn is missing), ``"pca"``, or ``"auto"`` (UMAP when
    available, else PCA). Returns ``{"coords": float32 [sample, 2], "method": "umap" | "pca"}``.
    """
    from latentlens.analysis.pca import PCA

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or len(X) < 3:
        raise ConfigError(f"embed_2d needs [n_samples >= 3, dim] data, got shape {X.shape}.")
    if method not in ("auto", "umap", "pca"):
        raise ConfigError(f"method must be 'auto', 'umap' or 'pca', got {method!r}.")
    if method == "umap" and not umap_available():
        raise ConfigError("method='umap' needs umap-learn: pip install 'latentlens[umap]' (or use method='pca').")
    if method in ("umap", "auto") and umap_available():
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # umap warns that random_state disables parallelism
            reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(X) - 1), random_state=random_state)
            coords = reducer.fit_transform(X)
        return {"coords": np.asarray(coords, dtype=np.float32), "method": "umap"}
    coords = PCA(n_components=2).fit_transform(X) if X.shape[1] >= 2 else np.c_[X, np.zeros(len(X))]
    return {"coords": np.asarray(coords, dtype=np.float32), "method": "pca"}
