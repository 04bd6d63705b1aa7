"""Directions from data and the disentanglement measures (cosine matrix, SDE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentlens.analysis.directions import class_mean_direction, pca_direction, probe_direction
from latentlens.analysis.metrics import cosine_matrix, sde
from latentlens.analysis.pca import PCA
from latentlens.analysis.probes import LinearProbeGrid
from latentlens.direction import Direction
from latentlens.errors import ConfigError


def test_cosine_matrix_recovers_known_angles():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(32, 32)))  # random orthonormal frame in 32-D
    e0, e1, e2 = basis[:, 0], basis[:, 1], basis[:, 2]
    angles = {"a": 0.0, "b": 30.0, "c": 90.0, "d": 135.0}
    vectors = {k: 3.0 * (math.cos(math.radians(t)) * e0 + math.sin(math.radians(t)) * e1) for k, t in angles.items()}
    vectors["e"] = Direction(torch.from_numpy(e2 * 0.1), site="blocks.0.resid_out.img")  # Direction objects work too
    names, matrix = cosine_matrix(vectors)
    assert names == ["a", "b", "c", "d", "e"]
    for i, a in enumerate("abcd"):
        for j, b in enumerate("abcd"):
            assert matrix[i, j] == pytest.approx(math.cos(math.radians(angles[a] - angles[b])), abs=1e-6)
    np.testing.assert_allclose(matrix[4, :4], 0.0, atol=1e-6)
    assert matrix[4, 4] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="one width"):
        cosine_matrix({"a": np.ones(3), "b": np.ones(4)})


def test_class_mean_direction_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array(["red", "blue", "green"] * 100)
    shift = {"red": np.eye(8)[0], "blue": np.eye(8)[1], "green": np.eye(8)[2]}
    X = np.stack([shift[v] * 4 for v in labels]) + rng.normal(size=(300, 8)) * 0.1
    d = class_mean_direction(X, labels, to="blue", from_="red", site="blocks.2.resid_out.img", steps=[3],
                             attribute="color", run="runs/x")
    expected = np.zeros(8)
    expected[1], expected[0] = 4, -4
    np.testing.assert_allclose(d.vector.numpy(), expected, atol=0.1)
    assert d.provenance["method"] == "class_mean" and d.provenance["to"] == "blue" and d.provenance["run"] == "runs/x"
    d.save(tmp_path / "d")
    assert Direction.load(tmp_path / "d").provenance["n_to"] == 100
    with pytest.raises(ConfigError, match="No sample has color 'pink'"):
        class_mean_direction(X, labels, to="pink", site="blocks.2.resid_out.img", attribute="color")


def test_adjusted_class_mean_removes_a_confounded_attribute_and_keeps_token_rows(tmp_path):
    # red samples are mostly circles, blue ones mostly squares: the plain class-mean difference
    # mixes the shape shift into the colour direction; adjust_for recovers the colour shift alone
    rng = np.random.default_rng(0)
    n = 2000
    color = rng.choice(["red", "blue"], n)
    shape = np.where(rng.random(n) < np.where(color == "red", 0.8, 0.2), "circle", "square")
    color_shift, shape_shift = rng.normal(size=8), rng.normal(size=8)
    X = (color == "blue")[:, None] * color_shift + (shape == "square")[:, None] * shape_shift
    X = X + 0.1 * rng.normal(size=(n, 8))
    plain = class_mean_direction(X, color, to="blue", from_="red", site="blocks.0.resid_out.img")
    adjusted = class_mean_direction(X, color, to="blue", from_="red", site="blocks.0.resid_out.img",
                                    adjust_for={"shape": shape})
    assert np.abs(plain.vector.numpy() - color_shift).max() > 0.3
    np.testing.assert_allclose(adjusted.vector.numpy(), color_shift, atol=0.03)
    assert adjusted.provenance["adjusted_for"] == ["shape"]
    # token-wise: X [n, tokens, dim] -> a [tokens, dim] direction, row t = that token's shift
    X3 = np.stack([X, 2 * X, -X], axis=1)  # [n, 3, 8]
    rows = class_mean_direction(X3, color, to="blue", from_="red", site="blocks.0.resid_in.txt",
                                adjust_for={"shape": shape})
    assert rows.token_rows == 3 and rows.dim == 8
    np.testing.assert_allclose(rows.vector.numpy(), np.stack([color_shift, 2 * color_shift, -color_shift]), atol=0.06)
    rows.save(tmp_path / "rows")
    assert torch.equal(Direction.load(tmp_path / "rows").vector, rows.vector)
    with pytest.raises(ConfigError, match="3 rows but tokens="):
        Direction(rows.vector, site="blocks.0.resid_in.txt", tokens=[0, 1])
    with pytest.raises(ConfigError, match="confounded"):
        class_mean_direction(X, color, to="blue", from_="red", site="blocks.0.resid_out.img", adjust_for={"copy": color})


def test_probe_and_pca_directions_point_the_right_way():
    rng = np.random.default_rng(1)
    y = rng.integers(2, size=400)
    X = rng.normal(size=(400, 6))
    X[:, 2] += 5.0 * y
    grid = LinearProbeGrid(max_features=None).fit({("blocks.1.resid_out.img", 4): X}, {"size": np.array(["small", "large"])[y]})
    d = probe_direction(grid, "size", "blocks.1.resid_out.img", 4, to="large", from_="small")
    assert int(np.argmax(np.abs(d.vector.numpy()))) == 2 and d.vector[2] > 0
    assert d.steps == [4] and d.provenance["accuracy"] > 0.9
    pca = PCA(n_components=2).fit(X)
    p = pca_direction(pca, 0, site="blocks.1.resid_out.img")
    assert int(np.argmax(np.abs(p.vector.numpy()))) == 2
    assert p.norm == pytest.approx(math.sqrt(pca.explained_variance_[0]))


def test_sde_effectiveness_leakage():
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:4, 2:4] = True  # 4 pixels inside, 60 outside
    x = np.zeros((8, 8, 3))
    flipped = x.copy()
    flipped[mask] = 1.0  # only inside changes: 3 channels x 1^2 per pixel
    out = sde(x, flipped, mask)
    assert out["effectiveness"] == pytest.approx(3.0) and out["leakage"] == 0.0 and out["sde"] == 1.0
    flipped[0, 0] = 1.0  # one outside pixel changes too
    out = sde(x, flipped, mask)
    assert out["leakage"] == pytest.approx(3.0 / 60) and out["sde"] == pytest.approx(3.0 / (3.0 + 3.0 / 60))
    # channels-first batches work the same
    out_cf = sde(torch.zeros(2, 3, 8, 8), torch.from_numpy(np.stack([flipped, flipped]).transpose(0, 3, 1, 2)), mask)
    assert out_cf["sde"] == pytest.approx(out["sde"])
    assert math.isnan(sde(x, x, mask)["sde"])
    with pytest.raises(ConfigError, match="inside and some outside"):
        sde(x, flipped, np.zeros((8, 8), dtype=bool))


def test_text_direction_from_prompt_pairs_with_the_toy_text_encoder():
    from latentlens.analysis.directions import text_direction
    from latentlens.toy.pipeline import tiny_toy_pipeline

    pipe = tiny_toy_pipeline()
    pairs = [(f"a small red {s} on the left", f"a small blue {s} on the left") for s in ("circle", "square")]
    d = text_direction(pipe, pairs, attribute="color")
    assert d.site == "text.tokens" and d.dim == 384 and d.provenance["n_pairs"] == 2
    # by hand: the changed word's token embedding, target minus source, averaged over the pairs
    manual = []
    for source, target in pairs:
        tokens, _, _, _ = pipe.encode_prompt([source, target], do_classifier_free_guidance=False)
        position = d.provenance["changed_tokens"][len(manual)][0]
        manual.append(tokens[1, position].float().mean(0) - tokens[0, position].float().mean(0))
    assert torch.allclose(d.vector, torch.stack(manual).mean(0), atol=1e-5)
    pooled = text_direction(pipe, pairs, where="pooled")
    assert pooled.site == "text.pooled" and pooled.dim == 384
    with pytest.raises(ConfigError, match="differ in no token"):
        text_direction(pipe, [("a red circle", "a red circle")])
