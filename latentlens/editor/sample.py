"""Sample: the image-space half of EMS — a constrained delta-denoising update of the latent.

From ``z = z_src``, repeat ``iterations`` times (all batched over images):

1. draw ``σ`` in ``t_range`` per image (by default stratified and descending: the k-th draw is
   uniform in the k-th of K equal bins, from high σ to low) and one ``ε ~ N(0, I)`` shared by
   both branches;
2. noise both the current latent and the source latent: ``z_σ = (1−σ) z + σ ε``,
   ``ẑ_σ = (1−σ) z_src + σ ε``;
3. predict clean latents with classifier-free guidance as configured: ``x̂_tgt = x̂₀(z_σ; E(α))``
   (plus any steering hook) and ``x̂_src = x̂₀(ẑ_σ; E_s)``;
4. step ``z ← z + η · M ⊙ [(x̂_tgt − x̂_src) − (z − z_src)]``. Each prediction is taken relative to
   its own input — this is delta denoising (DDS, Hertz et al. 2023) written with clean-latent
   predictions: the part of the prediction that only reflects the noise cancels between the
   branches, and the update vanishes once ``z`` is what the target embedding predicts. On the first
   iteration (``z = z_src``) it is exactly ``x̂₀(z_σ; E(α)) − x̂₀(z_σ; E_s)``.
5. project into the constraint set: ``z ← z_src + M ⊙ clip(z − z_src)`` with
   ``‖z − z_src‖₂ ≤ ρ·√n`` (``n`` = elements of one latent, so ``ρ`` is a bound on the
   root-mean-square change per latent element and means the same at every resolution).

``M`` is 1 everywhere, or the attention-derived mask of :func:`attention_mask`.

Example::

    z = dds_update(model, z_src, e_alpha, e_src, EMSParams(iterations=20))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from latentlens.editor.model import EditModel, TextEmbeds
from latentlens.errors import ConfigError


@dataclass
class EMSParams:
    """Parameters of the image-space update (defaults tuned on the toy model; see benchmarks/RESULTS.md).

    Attributes:
        iterations: K, number of updates.
        step_size: η, fraction of the (prediction − current) gap closed per update, in (0, 1].
        t_range: ``(σ_min, σ_max)`` noise levels drawn uniformly each update (0 = clean, 1 = noise).
        rho: ρ, bound on the root-mean-square change of the latent (None = unconstrained; 0 = no change).
            The default 2.0 admits a full background swap in the toy model's [-1, 1] pixel space
            (white → black is an RMS change of about 1.7) and stops runaway updates; tighten it
            to keep edits small.
        mask: restrict the change to the attention mask of the edited words.
        mask_threshold: a latent position is in the mask where the edited words' attention is at least
            this fraction of its maximum over the image.
        mask_sigma: noise level of the single forward pass the mask is read from.
        schedule: ``"descending"`` — the k-th σ is drawn uniformly from the k-th of K equal bins of
            ``t_range``, from high to low (coarse layout first, details last); ``"random"`` — every σ
            uniform over the whole range.
        seed: seed of σ and ε draws (edits are reproducible).
    """

    iterations: int = 20
    step_size: float = 0.5
    t_range: tuple[float, float] = (0.3, 0.9)
    rho: float | None = 2.0
    mask: bool = False
    mask_threshold: float = 0.5
    mask_sigma: float = 0.6
    schedule: str = "descending"
    seed: int = 0

    def check(self) -> None:
        if int(self.iterations) < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}.")
        if not 0.0 < float(self.step_size) <= 1.0:
            raise ConfigError(f"step_size must be in (0, 1], got {self.step_size}.")
        lo, hi = self.t_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"t_range={self.t_range} must satisfy 0 <= low <= high <= 1 (noise levels σ).")
        if self.rho is not None and (self.rho < 0 or math.isnan(self.rho)):
            raise ConfigError(f"rho must be >= 0 (or None for no constraint), got {self.rho}.")
        if self.schedule not in ("descending", "random"):
            raise ConfigError(f"schedule={self.schedule!r} is not one of 'descending', 'random'.")
        if not 0.0 < float(self.mask_threshold) <= 1.0:
            raise ConfigError(f"mask_threshold must be in (0, 1], got {self.mask_threshold}.")


def project(z: torch.Tensor, z_src: torch.Tensor, rho: float | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``z_src + M ⊙ d`` with ``d = z − z_src`` scaled down so ``‖M ⊙ d‖₂ ≤ ρ·√n`` per image.

    Args: ``z``, ``z_src`` ``[B, C, h, w]``; ``mask`` ``[B, 1, h, w]`` (0/1) or None.
    """
    d = z - z_src  # [B, C, h, w]
    if mask is not None:
        d = d * mask
    if rho is not None:
        n = d[0].numel()
        norm = d.flatten(1).norm(dim=1)  # [B]
        limit = float(rho) * math.sqrt(n)
        scale = torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm))
        d = d * scale.view(-1, 1, 1, 1)
    return z_src + d


@torch.no_grad()
def attention_mask(
    model: EditModel,
    z_src: torch.Tensor,
    conds: list[TextEmbeds],
    token_sets: list[list[list[int]]],
    threshold: float = 0.5,
    sigma: float = 0.6,
    seed: int = 0,
) -> torch.Tensor:
    """A 0/1 mask ``[B, 1, h, w]`` of where the image attends to the edited words.

    One transformer call (no CFG) per condition in ``conds`` on ``z_src`` noised to ``sigma``; the
    image→text attention maps of every block (``blocks.*.attn.img2txt``, head mean, recorded exactly
    with :func:`latentlens.record`) are averaged over blocks and summed over the image's token set
    from ``token_sets[c][b]``. Each image's map is divided by its maximum; positions at or above
    ``threshold`` count, the mask is dilated by one image token (3×3) and upsampled (nearest) to the
    latent grid. The final mask is the union over conditions — e.g. the source words under ``E_s``
    (where the old object is) and the target words under ``E(α)`` (where the new one will be).
    An image whose token sets are all empty gets a full mask.
    """
    from latentlens.recorder import record

    b, c, h, w = z_src.shape
    eps = model.noise(b, seed)
    z_t = (1 - sigma) * z_src + sigma * eps
    total = torch.zeros(b, 1, h, w, device=z_src.device)
    any_tokens = torch.zeros(b, dtype=torch.bool)
    for cond, tokens in zip(conds, token_sets):
        with record(model.pipe, attention="blocks.*.attn.img2txt", cfg="both") as rec:
            model._call(z_t, model._sigma(sigma, b), cond.expand(b))
        maps = torch.stack([rec[name][0] for name in rec.names if name.endswith("attn.img2txt")])  # [blocks, B, I, T]
        mean = maps.float().mean(0)  # [B, I, T]
        n_img = mean.shape[1]
        gh = int(round(math.sqrt(n_img * h / w)))
        gw = n_img // gh
        for i in range(b):
            idx = [t for t in tokens[i] if t < mean.shape[2]]
            if not idx:
                continue
            any_tokens[i] = True
            m = mean[i][:, idx].sum(-1)  # [I]
            m = m / m.max().clamp(min=1e-12)
            grid = (m >= threshold).float().view(1, 1, gh, gw)
            grid = F.max_pool2d(grid, 3, stride=1, padding=1)
            total[i] = torch.maximum(total[i], F.interpolate(grid, size=(h, w), mode="nearest")[0])
    total[~any_tokens] = 1.0
    return total.to(z_src.dtype)


@torch.no_grad()
def dds_update(
    model: EditModel,
    z_src: torch.Tensor,
    target: TextEmbeds,
    source: TextEmbeds,
    params: EMSParams,
    mask: torch.Tensor | None = None,
    hook: Callable[[int], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run the constrained delta-denoising update (module docstring); returns ``z`` ``[B, C, h, w]``.

    ``hook(k)``: a context manager (or None) active only around the target branch's predictions at
    iteration ``k`` (``latentlens.steer(...)`` for image-space directions); the two branches then run
    as separate transformer calls, otherwise as one batched call.
    """
    params.check()
    b = z_src.shape[0]
    target, source = target.expand(b), source.expand(b)
    if params.iterations == 0 or params.rho == 0:
        return z_src.clone()
    if hook is None and torch.equal(target.tokens, source.tokens) and (
        target.pooled is None or torch.equal(target.pooled, source.pooled)
    ):
        return z_src.clone()  # α = 0 or an empty edit: nothing to do (and exactly nothing changes)
    gen = torch.Generator().manual_seed(int(params.seed))
    lo, hi = params.t_range
    z = z_src.clone()
    for k in range(int(params.iterations)):
        u = torch.rand(b, generator=gen)  # [B]
        if params.schedule == "descending":
            u = (params.iterations - 1 - k + u) / params.iterations  # k-th bin from the top
        sigma = (lo + (hi - lo) * u).to(z.device)  # [B]
        eps = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)  # [B, C, h, w]
        s4 = sigma.view(-1, 1, 1, 1)
        z_t = (1 - s4) * z + s4 * eps
        zs_t = (1 - s4) * z_src + s4 * eps
        if hook is None:
            both = model.x0(torch.cat([z_t, zs_t]), torch.cat([sigma, sigma]), TextEmbeds.cat([target, source]))
            x_tgt, x_src = both.chunk(2)
        else:
            x_tgt = model.x0(z_t, sigma, target, hook=lambda k=k: hook(k))
            x_src = model.x0(zs_t, sigma, source)
        g = (x_tgt - x_src) - (z - z_src)  # [B, C, h, w]
        if mask is not None:
            g = g * mask
        z = project(z + params.step_size * g, z_src, params.rho, mask)
        if progress is not None:
            progress(k + 1, int(params.iterations))
    return z


__all__ = ["EMSParams", "attention_mask", "dds_update", "project"]
