"""A synthetic run for tests and benchmarks: shapes-world labels, random-but-structured latents, fake analysis.

Written only through latentlens' public API (:class:`latentlens.RunStore`,
:class:`latentlens.Direction`), in the layout :mod:`latentlens.results` reads, so
every dashboard page can be exercised without a trained model.

Example::

    from dashboards.synthetic import make_synthetic_run
    make_synthetic_run("runs/fake", n_samples=200)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latentlens import RunStore

ATTRIBUTES = ("shape", "color", "size")


def make_synthetic_run(
    path: str | Path,
    n_samples: int = 120,
    *,
    blocks: int = 3,
    steps: int = 4,
    channels: int = 32,
    img_tokens: int = 16,
    txt_tokens: int = 8,
    text_width: int | None = None,
    model_id: str = "toy",
    images: bool | int = True,
    analysis: bool = True,
    attention: bool = True,
    seed: int = 0,
) -> Path:
    """Create a finished run at ``path`` (with ``analysis/`` unless ``analysis=False``); returns the path.

    Latents carry the labels: sample *i*'s residual at block *b*, step *s* is a class embedding of its
    colour/shape/size scaled by how deep and late the cell is, plus noise, so probes, PCA and
    directions show real structure. ``images``: True (all), False, or N (the first N samples).
    """
    from latentlens.shapes import VALUES, Attributes, canonical_caption, render

    rng = np.random.default_rng(seed)
    path = Path(path)
    combos = [
        Attributes(
            shape=rng.choice(VALUES["shape"]),
            color=rng.choice(VALUES["color"]),
            size=rng.choice(VALUES["size"]),
            position=rng.choice(VALUES["position"]),
            background=rng.choice(VALUES["background"]),
        )
        for _ in range(n_samples)
    ]
    prompts = [canonical_caption(a) for a in combos]
    labels = [{k: getattr(a, k) for k in ATTRIBUTES} for a in combos]
    manifest: dict[str, Any] = {
        "model": {"id": model_id, "pipeline_class": "ToyPipeline", "adapter": "sd3"},
        "prompts": prompts,
        "seeds": list(range(n_samples)),
        "labels": labels,
        "generation": {"num_inference_steps": steps},
        "recording": {"sites": "blocks.*.resid_out.*", "synthetic": True},
    }
    store = RunStore.create(path, manifest, samples_per_chunk=256)
    text_width = text_width or channels
    class_vectors = {a: {v: rng.normal(size=channels).astype(np.float32) for v in VALUES[a]} for a in ATTRIBUTES}
    chunk = 1024
    for start in range(0, n_samples, chunk):
        ids = list(range(start, min(n_samples, start + chunk)))
        n = len(ids)
        signal = np.zeros((n, channels), np.float32)
        for a in ATTRIBUTES:
            signal += np.stack([class_vectors[a][labels[i][a]] for i in ids])
        arrays: dict[str, np.ndarray] = {}
        dims: dict[str, tuple[str, ...]] = {}
        for b in range(blocks):
            for stream, tokens, width in (("img", img_tokens, channels), ("txt", txt_tokens, text_width)):
                strength = (b + 1) / blocks
                data = np.empty((n, steps, tokens, width), np.float32)  # [sample, step, token, channel]
                for s in range(steps):
                    scale = strength * (s + 1) / steps
                    base = (
                        signal[:, None, :width]
                        if width <= channels
                        else np.pad(signal, ((0, 0), (0, width - channels)))[:, None]
                    )
                    data[:, s] = scale * base + rng.normal(size=(n, tokens, width)).astype(np.float32)
                name = f"blocks.{b}.resid_out.{stream}"
                arrays[name] = data
                dims[name] = ("sample", "step", "token", "channel")
            if attention:
                side = int(round(np.sqrt(img_tokens)))
                yy, xx = np.mgrid[0:side, 0:side]
                att = rng.random((n, steps, img_tokens, txt_tokens)).astype(np.float32)  # [sample, step, query, key]
                blob = np.exp(-((yy - side / 2) ** 2 + (xx - side / 2) ** 2) / max(side, 1)).reshape(-1)
                att[..., 3] += 4 * blob[None, None, :]
                att /= att.sum(axis=-1, keepdims=True)
                name = f"blocks.{b}.attn.img2txt"
                arrays[name] = att
                dims[name] = ("sample", "step", "query", "key")
        store.write_samples(ids, arrays, dims)
        meta = []
        for i in ids:
            entry: dict[str, Any] = {"prompt": prompts[i], "seed": i, "labels": labels[i]}
            if images is True or (images and i < int(images)):
                store.save_image(i, render(combos[i], canvas=32).image)
                entry["image"] = f"images/{i:04d}.png"
            meta.append(entry)
        store.mark_complete(ids, meta)
    store.close()
    if analysis:
        write_fake_analysis(path, blocks=blocks, steps=steps, channels=channels, seed=seed)
    return path


def write_fake_analysis(path: str | Path, *, blocks: int, steps: int, channels: int, seed: int = 0) -> None:
    """Probe cells, one stored embedding and a few directions, in the layout of :mod:`latentlens.results`."""
    import torch

    from latentlens import Direction, open_run
    from latentlens.analysis import AnalysisWriter
    from latentlens.shapes import VALUES

    rng = np.random.default_rng(seed + 1)
    records = []
    for a in ATTRIBUTES:
        chance = 1.0 / len(VALUES[a])
        for stream in ("img", "txt"):
            for b in range(blocks):
                for s in range(steps):
                    acc = min(1.0, chance + (1 - chance) * ((b + 1) / blocks) * ((s + 1) / steps) + rng.normal(0, 0.02))
                    records.append(
                        {
                            "attribute": a,
                            "site": f"blocks.{b}.resid_out.{stream}",
                            "stream": stream,
                            "block": b,
                            "step": s,
                            "accuracy": round(float(acc), 4),
                            "selectivity": round(float(acc - chance), 4),
                            "n_train": 80,
                            "n_test": 20,
                        }
                    )
    run = open_run(path)
    site, step = f"blocks.{blocks - 1}.resid_out.img", steps - 1
    x = np.asarray(run[site][:, step]).mean(axis=1)  # [sample, channel]
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    pcs = x @ vt[:2].T
    umap_like = np.tanh(pcs / (pcs.std(axis=0) + 1e-6))  # a stand-in 2-D layout
    labels = run.manifest["labels"]
    with AnalysisWriter(path) as out:  # the writer `latentlens analyze` uses: one home for the format
        out.probes(records, attributes={a: list(VALUES[a]) for a in ATTRIBUTES})
        out.embedding(
            site,
            step,
            {"pca": pcs.astype(np.float32), "umap": umap_like.astype(np.float32), "sample": np.arange(len(x))},
            "umap",
        )
        for a, to in (("color", "blue"), ("color", "red"), ("shape", "square"), ("size", "large")):
            mask = np.array([row[a] == to for row in labels])
            vector = x[mask].mean(axis=0) - x[~mask].mean(axis=0)
            d = Direction(
                torch.from_numpy(vector.astype(np.float32)),
                site=site,
                steps=[step],
                provenance={
                    "method": "class_mean",
                    "attribute": a,
                    "to": to,
                    "from": "rest",
                    "run": str(path),
                    "accuracy": 0.9,
                },
            )
            out.direction(f"{a}/{to}", d)


def save_tiny_toy_pipeline(
    path: str | Path, *, num_layers: int = 2, heads: int = 2, head_dim: int = 16, seed: int = 0
) -> Path:
    """Save a random-weight toy pipeline (width ``heads * head_dim``) that ``latentlens.load_pipeline(path)`` loads.

    For tests of the editor without the trained toy weights. Example: ``save_tiny_toy_pipeline("tmp/tiny")``.
    """
    import torch

    from latentlens import ToyPipeline
    from latentlens.toy.pipeline import build_scheduler, build_transformer
    from latentlens.toy.text_encoder import load_text_encoder

    torch.manual_seed(seed)
    transformer = build_transformer(num_layers=num_layers, num_attention_heads=heads, attention_head_dim=head_dim)
    tokenizer, text_encoder = load_text_encoder()
    pipe = ToyPipeline(
        transformer=transformer, scheduler=build_scheduler(), text_encoder=text_encoder, tokenizer=tokenizer
    )
    pipe.save_pretrained(str(path))
    return Path(path)


def make_scatter_run(path: str | Path, n_samples: int = 100_000, *, channels: int = 8, seed: int = 0) -> Path:
    """A big run for the scatter alone: one activation ``blocks.0.resid_out.img`` ``[sample, 1 step, channel]``
    with colour clusters, no images and no analysis; written in one go through :class:`latentlens.RunStore`.

    Example: ``make_scatter_run("runs/points", 100_000)`` (a few seconds).
    """
    from latentlens.shapes import VALUES

    rng = np.random.default_rng(seed)
    colours = list(VALUES["color"])
    codes = rng.integers(0, len(colours), n_samples)  # [sample]
    centres = rng.normal(scale=2.5, size=(len(colours), channels)).astype(np.float32)  # [value, channel]
    x = centres[codes] + rng.normal(size=(n_samples, channels)).astype(np.float32)  # [sample, channel]
    manifest: dict[str, Any] = {
        "model": {"id": "toy", "pipeline_class": "ToyPipeline", "adapter": "sd3"},
        "prompts": [f"a {colours[c]} shape" for c in codes],
        "seeds": list(range(n_samples)),
        "labels": [{"color": colours[c]} for c in codes],
        "generation": {"num_inference_steps": 1},
        "recording": {"sites": "blocks.0.resid_out.img", "synthetic": True},
    }
    store = RunStore.create(path, manifest, samples_per_chunk=max(1024, n_samples))
    ids = list(range(n_samples))
    store.write_samples(
        ids, {"blocks.0.resid_out.img": x[:, None, :]}, {"blocks.0.resid_out.img": ("sample", "step", "channel")}
    )
    store.mark_complete(ids)
    store.close()
    return Path(path)
