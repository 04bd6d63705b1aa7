"""`latentlens sae` on a small synthetic shapes-world run with a known sparse code (written through the store API)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import latentlens
from latentlens import shapes
from latentlens.analysis.sae_run import ground_truth_masks, load_sae_result, sae_sites
from latentlens.cli import main
from latentlens.store import RunStore

N, DIM, SIDE, PATCH = 160, 24, 8, 4
SITE = "blocks.1.resid_out.img"


def _make_run(path, labelled=True):
    """Image tokens = 2 atom(colour) on the object's patches, atom(background) elsewhere, + noise."""
    rng = np.random.default_rng(0)
    combos = shapes.training_combinations()
    chosen = [combos[int(i)] for i in rng.choice(len(combos), N, replace=False)]
    labels = [c.as_dict() for c in chosen]
    atoms = rng.normal(size=(len(shapes.COLORS) + len(shapes.BACKGROUNDS), DIM))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    colour = {c: atoms[i] for i, c in enumerate(shapes.COLORS)}
    background = {b: atoms[len(shapes.COLORS) + i] for i, b in enumerate(shapes.BACKGROUNDS)}
    img = np.zeros((N, 2, SIDE * SIDE, DIM), dtype=np.float32)  # [sample, step, token, channel]
    for i, c in enumerate(chosen):
        cover = shapes.render(c, canvas=SIDE * PATCH).mask.reshape(SIDE, PATCH, SIDE, PATCH).mean(axis=(1, 3))
        on = (cover >= 0.5).reshape(-1)
        img[i, :, on] = 2.0 * colour[c.color]
        img[i, :, ~on] = 1.0 * background[c.background]
    img += 0.05 * rng.normal(size=img.shape).astype(np.float32)
    txt = rng.normal(size=(N, 2, 5, DIM)).astype(np.float32)
    manifest = {"prompts": [shapes.canonical_caption(c) for c in chosen], "seeds": list(range(N)),
                "recording": {"steps": [3, 7]},
                "model": {"id": "synthetic", "transformer_config": {"sample_size": SIDE * PATCH, "patch_size": PATCH}}}
    if labelled:
        manifest["labels"] = labels
    store = RunStore.create(path, manifest, samples_per_chunk=16)  # a recording's batch-sized chunks, not one file per sample
    dims = ("sample", "step", "token", "channel")
    store.write_samples(list(range(N)), {SITE: img, "blocks.1.resid_out.txt": txt}, dims={SITE: dims, "blocks.1.resid_out.txt": dims})
    store.mark_complete(list(range(N)))
    store.close()
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _make_run(tmp_path_factory.mktemp("sae") / "run")


def test_sae_json_alignment_and_written_results(run_dir, capsys):
    assert main(["sae", str(run_dir), "--site", SITE, "--steps", "7", "--features", "16", "--k", "2", "--epochs", "6",
                 "--lr", "3e-3", "--threads", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["site"] == SITE and doc["steps"] == [7] and doc["k"] == 2
    assert doc["fvu"] < 0.1 and 0 <= doc["dead_fraction"] < 0.5 and 1.9 <= doc["l0"] <= 2.0
    alignment = doc["alignment"]
    assert len(alignment) == 20 and doc["iou_note"] is None
    for value in (*(f"color={c}" for c in shapes.COLORS), *(f"background={b}" for b in shapes.BACKGROUNDS)):
        assert alignment[value]["f1"] >= 0.85, (value, alignment[value])  # 32 held-out samples
        assert alignment[value]["iou"] >= 0.8, (value, alignment[value])
    colour_features = {alignment[f"color={c}"]["feature"] for c in shapes.COLORS}
    assert len(colour_features) == 6  # one feature per colour
    assert doc["alignment_summary"]["values"] == 20 and doc["alignment_summary"]["f1_at_least_0.9"] >= 6
    assert alignment["position=left"]["f1"] < 0.6  # nothing in the code marks position: no feature for it
    # written: the SAE, the per-feature statistics the dashboard reads, the aligned features as directions
    assert sae_sites(run_dir) == [SITE]
    stored = load_sae_result(run_dir, SITE)
    assert stored["arrays"]["sample_max"].shape == (N, 16) and stored["arrays"]["top_tokens"].shape[2] == SIDE * SIDE
    sae = latentlens.SparseAutoencoder.load(run_dir / "analysis" / "sae" / SITE / "sae")
    assert sae.provenance_["site"] == SITE and sae.provenance_["steps"] == [7] and sae.n_features == 16
    red = alignment["color=red"]["feature"]
    results = latentlens.load_results(run_dir)
    direction = results.load_direction(f"sae/{SITE}/f{red:04d}")
    assert direction.provenance["feature"] == red and direction.provenance["to"] == "red"
    assert direction.site == SITE and direction.steps == [7]


def test_sae_text_output_and_a_text_site_has_no_iou(run_dir, capsys):
    assert main(["sae", str(run_dir), "--site", "blocks.1.resid_out.txt", "--features", "16", "--k", "2",
                 "--epochs", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "held-out FVU" in out and "color=red" in out
    assert "IoU unavailable: 'blocks.1.resid_out.txt' is not an image-stream site" in out


def test_masks_come_from_the_labels(run_dir):
    run = latentlens.open_run(run_dir)
    labels = {a: np.asarray([r[a] for r in run.manifest["labels"]]) for a in shapes.ATTRIBUTES}
    masks, note = ground_truth_masks(run, SITE, labels)
    assert note is None and masks.shape == (N, SIDE * SIDE)
    data = np.asarray(run[SITE][:, 0])  # object tokens carry a colour atom: larger norm than background tokens
    norms = np.linalg.norm(data, axis=-1)
    assert norms[masks].min() > norms[~masks].max()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--site", "blocks.9.resid_out.img"], "did not record site 'blocks.9.resid_out.img'"),
        (["--site", SITE, "--features", "8", "--k", "12"], "k=12 is larger than n_features=8"),
        (["--site", SITE, "--steps", "5"], "Step 5 was not recorded"),
    ],
)
def test_bad_input_is_one_clear_error(run_dir, capsys, argv, message):
    assert main(["sae", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_alignment_on_a_run_without_labels_is_a_clear_error(tmp_path, capsys):
    run = _make_run(tmp_path / "bare", labelled=False)
    assert main(["sae", str(run), "--site", SITE, "--features", "8", "--k", "2", "--alignment"]) == 2
    err = capsys.readouterr().err
    assert "has no labels" in err and "--probe" in err
    assert not (run / "analysis").exists()  # checked before any work
    assert main(["sae", str(run), "--site", SITE, "--features", "8", "--k", "2", "--epochs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["alignment"] == {} and "no labels" in doc["iou_note"]
