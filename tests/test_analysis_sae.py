"""The TopK sparse autoencoder: scikit-learn conventions, streaming equals batch, dictionary recovery, I/O."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

import latentlens
from latentlens.analysis.sae import SparseAutoencoder, iter_site_rows
from latentlens.analysis.sae_run import best_thresholds
from latentlens.errors import ConfigError, StoreError
from latentlens.store import RunStore


def _sparse_data(n=20_000, n_atoms=32, dim=16, k=3, noise=0.01, seed=0):
    """Rows ``z @ D + noise + offset`` with ``k`` random atoms of a unit-norm dictionary ``D`` per row."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, dim))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, n_atoms))
    for i in range(n):
        codes[i, rng.choice(n_atoms, k, replace=False)] = rng.uniform(0.5, 2.0, k)
    return codes @ atoms + noise * rng.normal(size=(n, dim)) + 3.0, atoms


@parametrize_with_checks([SparseAutoencoder(n_features=16, k=4, epochs=2, batch_size=32)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_partial_fit_over_chunks_equals_fit_on_the_concatenation():
    """Stated tolerance: 1e-5 on every weight (the same Adam updates; chunks are multiples of batch_size)."""
    X, _ = _sparse_data(n=4096, seed=1)
    params = dict(n_features=48, k=4, batch_size=128, shuffle=False, dead_after=128, random_state=3)
    whole = SparseAutoencoder(**params, epochs=1).fit(X)
    streamed = SparseAutoencoder(**params)
    for chunk in np.split(X, [512, 1024, 2560]):  # 512, 512, 1536, 1536 rows
        streamed.partial_fit(chunk)
    assert streamed.n_steps_ == whole.n_steps_ == 32 and streamed.n_rows_seen_ == 4096
    for name in ("W_enc_", "b_enc_", "W_dec_", "b_pre_", "mean_", "fire_count_"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(whole, name), atol=1e-5, err_msg=name)
    assert 0 < whole.aux_steps_ == streamed.aux_steps_  # features idle for one batch count as dead: AuxK ran
    np.testing.assert_allclose(streamed.transform(X[:50]), whole.transform(X[:50]), atol=1e-4)


# a second seed (not a lucky one) in the slow tier: each fit is ~0.9 s
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_recovers_a_known_sparse_dictionary(seed):
    X, atoms = _sparse_data(n=20_000, seed=seed)
    sae = SparseAutoencoder(n_features=64, k=3, epochs=6, lr=3e-3, random_state=seed).fit(X)
    cosine = (atoms @ sae.W_dec_.T).max(axis=1)  # [atoms]: best match of every true atom
    assert cosine.mean() >= 0.9, cosine
    z = sae.transform(X[:200])
    assert ((z > 0).sum(1) <= 3).all() and sae.fvu(X) < 0.2


def test_auxiliary_loss_moves_only_dead_features():
    X, _ = _sparse_data(n=2048, seed=2)
    sae = SparseAutoencoder(n_features=32, k=3, batch_size=256, shuffle=False, random_state=0).fit(X)
    dead = np.zeros(32, dtype=bool)
    dead[[1, 5, 9, 20]] = True
    sae.rows_since_fired_ = np.where(dead, 1e9, 0.0)
    without = SparseAutoencoder(**{**sae.get_params(), "aux_coef": 0.0})
    without.__dict__.update({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in sae.__dict__.items()
                             if k.endswith("_") and k != "aux_coef"})
    import copy

    without.optimizer_state_ = copy.deepcopy(sae.optimizer_state_)
    batch = X[:256]
    sae.set_params(aux_coef=1.0).partial_fit(batch)
    without.partial_fit(batch)
    changed_enc = ~np.isclose(sae.W_enc_, without.W_enc_, atol=1e-7).all(axis=0)  # [features]
    changed_dec = ~np.isclose(sae.W_dec_, without.W_dec_, atol=1e-7).all(axis=1)
    assert changed_enc.any() and not (changed_enc & ~dead).any()
    assert not (changed_dec & ~dead).any()


def test_bad_hyperparameters_are_clear_errors():
    X = np.random.default_rng(0).normal(size=(64, 8))
    with pytest.raises(ConfigError, match="k=20 is larger than n_features=16"):
        SparseAutoencoder(n_features=16, k=20).fit(X)
    with pytest.raises(ConfigError, match="n_features must be a positive integer"):
        SparseAutoencoder(n_features=0).fit(X)
    with pytest.raises(ConfigError, match="device 'cuda'"):
        if torch.cuda.is_available():
            raise ConfigError("device 'cuda' check skipped on a GPU machine")
        SparseAutoencoder(n_features=16, k=2, device="cuda").fit(X)


def test_save_load_and_feature_direction(tmp_path):
    X, _ = _sparse_data(n=4000, seed=0)
    sae = SparseAutoencoder(n_features=32, k=3, epochs=2, random_state=0).fit(X)
    sae.save(tmp_path / "sae", provenance={"run": "runs/x", "site": "blocks.1.resid_out.img", "steps": [3]},
             metrics={"fvu": 0.1})
    loaded = SparseAutoencoder.load(tmp_path / "sae.safetensors")
    np.testing.assert_array_equal(loaded.transform(X[:20]), sae.transform(X[:20]))
    assert loaded.config_hash() == sae.config_hash() and loaded.provenance_["steps"] == [3]
    assert loaded.metrics_ == {"fvu": 0.1} and loaded.get_params() == sae.get_params()
    loaded.partial_fit(X[:512])  # training continues after load (fresh optimiser)
    f = int(np.argmax(sae.fire_count_))
    d = sae.feature_direction(f, site="blocks.1.resid_out.img", steps=[3])
    assert isinstance(d, latentlens.Direction) and d.site == "blocks.1.resid_out.img" and d.steps == [3]
    assert d.provenance["method"] == "sae_feature" and d.provenance["feature"] == f
    assert d.provenance["run"] == "runs/x" and d.provenance["sae_config_hash"] == sae.config_hash()
    unit = sae.W_dec_[f] / np.linalg.norm(sae.W_dec_[f])
    np.testing.assert_allclose(d.vector.numpy() / d.norm, unit, atol=1e-5)
    # adding the direction to a row raises that feature's activation by about its mean activation
    lift = sae.transform(X[:200] + d.vector.numpy())[:, f] - sae.transform(X[:200])[:, f]
    assert np.median(lift) > 0.5 * sae.mean_activation_[f]
    d.save(tmp_path / "f")
    assert latentlens.Direction.load(tmp_path / "f").provenance["feature"] == f
    with pytest.raises(ConfigError, match="Feature 99 does not exist"):
        sae.feature_direction(99, site="blocks.1.resid_out.img")
    with pytest.raises(StoreError, match="does not exist"):
        SparseAutoencoder.load(tmp_path / "missing")


def test_iter_site_rows_streams_chunks_of_the_chosen_samples(tmp_path):
    store = RunStore.create(tmp_path / "run", {"prompts": [f"p{i}" for i in range(10)], "seeds": list(range(10)),
                                               "recording": {"steps": [0, 4]}, "store": {"samples_per_chunk": 4}})
    x = np.arange(10 * 2 * 3 * 5, dtype=np.float32).reshape(10, 2, 3, 5)  # [sample, step, token, channel]
    store.write_samples(list(range(10)), {"blocks.0.resid_out.img": x},
                        dims={"blocks.0.resid_out.img": ("sample", "step", "token", "channel")})
    store.mark_complete(list(range(10)))
    run = latentlens.open_run(tmp_path / "run")
    got = list(iter_site_rows(run, "blocks.0.resid_out.img", steps=[4], samples=[1, 2, 6, 9]))
    assert [ids.tolist() for _, ids, _ in got] == [[1, 2], [6], [9]] and {s for *_, s in got} == {4}
    np.testing.assert_array_equal(np.concatenate([r for r, *_ in got]), x[[1, 2, 6, 9], 1].reshape(-1, 5))
    with pytest.raises(ConfigError, match="Step 3 was not recorded"):
        list(iter_site_rows(run, "blocks.0.resid_out.img", steps=[3]))


def test_best_thresholds_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    scores = np.maximum(rng.normal(size=(60, 5)), 0).round(1)  # ties and zeros
    targets = rng.random((60, 3)) < 0.3
    thresholds, f1 = best_thresholds(scores, targets)
    for f in range(5):
        for v in range(3):
            best = 0.0
            for t in np.unique(scores[:, f][scores[:, f] > 0]):
                pred = scores[:, f] >= t
                best = max(best, 2 * (pred & targets[:, v]).sum() / (pred.sum() + targets[:, v].sum()))
            assert f1[f, v] == pytest.approx(best)
            pred = scores[:, f] >= thresholds[f, v]
            if best > 0:
                assert 2 * (pred & targets[:, v]).sum() / (pred.sum() + targets[:, v].sum()) == pytest.approx(best)


def test_a_feature_direction_steers_a_pipeline_like_any_direction():
    from latentlens.toy.pipeline import tiny_toy_pipeline

    pipe = tiny_toy_pipeline(seed=0)
    site = "blocks.0.resid_out.img"
    prompts = ["a small red circle on the left on a gray background", "a large blue cross at the top on a black background"]
    with latentlens.record(pipe, sites=site) as rec, torch.no_grad():
        pipe(prompts, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    rows = rec[site].float().reshape(-1, rec[site].shape[-1]).numpy()  # [step * batch * tokens, channel]
    sae = SparseAutoencoder(n_features=16, k=2, epochs=3, batch_size=64, random_state=0).fit(rows)
    direction = sae.feature_direction(int(np.argmax(sae.fire_count_)), site=site)

    def image(alpha):
        with latentlens.steer(pipe, direction, alpha=alpha), torch.no_grad():
            return pipe(prompts[:1], num_inference_steps=2, output_type="np",
                        generator=torch.Generator().manual_seed(1)).images[0]

    plain = image(0.0)
    assert np.array_equal(plain, image(0.0)) and not np.allclose(plain, image(8.0))
