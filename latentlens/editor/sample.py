"""Sample: the image-space half of EMS — a constrained delta-denoising update of the latent.

From ``z = z_src``, repeat ``iterations`` (K) times (all batched over images):

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
   iteration (``z = z_src``) it is exactly ``x̂₀(z_σ; E(α)) − x̂₀(z_σ; E_s)``. (With velocities,
   ``x̂₀ = z_σ − σ v``, the bracket is ``−σ [V_Δ + (z − z_src)]`` with
   ``V_Δ = v(z_σ; E(α)) − v(ẑ_σ; E_s)``; FlowEdit instead noises the edited latent as
   ``ẑ_σ + (z − z_src)`` and steps ``−Δσ V_Δ``, with no pull back toward ``z_src``.)
5. project into the constraint set: ``z ← z_src + M ⊙ clip(z − z_src)`` with
   ``‖z − z_src‖₂ ≤ ρ·√n`` (``n`` = elements of one latent, so ``ρ`` is a bound on the
   root-mean-square change per latent element and means the same at every resolution).
6. optional clean-up (``cleanup_sigma > 0``): noise the result to ``σ_c`` with a fresh ``ε``,
   integrate the flow ODE back to 0 under ``E(α)`` on the model's σ grid, and project again
   (step 5), so the last low-noise details come from the model while ``M`` and ``ρ`` still hold.

``M`` (``mask=``) is 1 everywhere (``"none"``), the *difference mask* of :func:`diff_mask`
(``"diff"``, the default: where the model's clean predictions under ``E(α)`` and ``E_s`` differ,
DiffEdit-style), or the attention mask of the edited words (:func:`attention_mask`, ``"attention"``).

Without a source embedding (``source=None``, the *image-only* ablation) the update is plain score
distillation toward the target: ``z ← z + η [x̂₀(z_σ; E_t) − z]`` (``x̂₀ − z = −σ (v − (ε − z))``,
the SDS gradient in clean-latent form), with no reference branch and no mask; steps 1, 5 and 6 are
unchanged.

Example::

    z = dds_update(model, z_src, e_alpha, e_src, EMSParams(iterations=20))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F

from latentlens.editor.model import EditModel, TextEmbeds
from latentlens.errors import ConfigError

#: The region restrictions ``EMSParams.mask`` accepts.
MASKS = ("none", "diff", "attention")
#: How the step size of iteration k is set (``EMSParams.step_rule``).
STEP_RULES = ("constant", "flow")


@dataclass
class EMSParams:
    """Parameters of the image-space update.

    The defaults (K = 20 flow-rule steps with η = 1 over σ ∈ [0.02, 0.9], difference mask at 0.2 of its
    maximum dilated by 2, ρ = 2, no clean-up) were chosen on the dev cases of the toy edit benchmark
    (seeds 2 and 3, never the benchmark's seed 0); the comparison is in benchmarks/RESULTS.md.

    Attributes:
        iterations: K, number of updates.
        step_size: η, fraction of the (prediction − current) gap closed per update, in (0, 1].
        t_range: ``(σ_min, σ_max)`` noise levels the updates draw from (0 = clean, 1 = noise).
        rho: ρ, bound on the root-mean-square change of the latent (None = unconstrained; 0 = no change).
            2.0 admits a full background swap in the toy model's [-1, 1] pixel space (white → black is
            an RMS change of about 1.7) and stops runaway updates; tighten it to keep edits small.
        mask: ``"diff"`` (restrict the change to where the target and source predictions differ,
            :func:`diff_mask`), ``"attention"`` (the edited words' attention, :func:`attention_mask`) or
            ``"none"``. ``True``/``False`` are read as ``"attention"``/``"none"``.
        mask_threshold: a latent position is in the mask where its score is at least this fraction of
            the image's maximum score.
        mask_sigma: noise level of the forward passes the mask is read from.
        mask_samples: noise draws averaged by the diff mask.
        mask_dilate: the mask is dilated by this many latent positions (0 = not at all).
        cleanup_sigma: σ of the final clean-up (module docstring, step 6); 0 = no clean-up.
        schedule: ``"descending"`` — the k-th σ is drawn uniformly from the k-th of K equal bins of
            ``t_range``, from high to low (coarse layout first, details last); ``"random"`` — every σ
            uniform over the whole range. (Ignored by ``step_rule="flow"``.)
        step_rule: ``"constant"`` — every update closes the fraction η of the gap; ``"flow"`` — the
            σ's are the evenly spaced grid ``σ_k = σ_max − k (σ_max − σ_min) / K`` and update k closes
            the fraction ``η (σ_k − σ_{k+1}) / σ_k`` (``σ_K = 0``), i.e. moves ``z`` by
            ``−η (σ_k − σ_{k+1}) [V_Δ + (z − z_src)]``: an Euler step of the flow from σ_max down to 0
            (small steps at high noise, the last one closes the whole gap).
        seed: seed of σ and ε draws (edits are reproducible).
    """

    iterations: int = 20
    step_size: float = 1.0
    t_range: tuple[float, float] = (0.02, 0.9)
    rho: float | None = 2.0
    mask: str | bool = "diff"
    mask_threshold: float = 0.2
    mask_sigma: float = 0.6
    mask_samples: int = 4
    mask_dilate: int = 2
    cleanup_sigma: float = 0.0
    schedule: str = "descending"
    step_rule: str = "flow"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.mask, bool) or self.mask is None:
            self.mask = "attention" if self.mask else "none"

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
        if self.step_rule not in STEP_RULES:
            raise ConfigError(f"step_rule={self.step_rule!r} is not one of {', '.join(repr(r) for r in STEP_RULES)}.")
        if self.mask not in MASKS:
            raise ConfigError(f"mask={self.mask!r} is not one of {', '.join(repr(m) for m in MASKS)}.")
        if not 0.0 < float(self.mask_threshold) <= 1.0:
            raise ConfigError(f"mask_threshold must be in (0, 1], got {self.mask_threshold}.")
        if not 0.0 < float(self.mask_sigma) <= 1.0:
            raise ConfigError(f"mask_sigma must be in (0, 1], got {self.mask_sigma}.")
        if int(self.mask_samples) < 1:
            raise ConfigError(f"mask_samples must be >= 1, got {self.mask_samples}.")
        if int(self.mask_dilate) < 0:
            raise ConfigError(f"mask_dilate must be >= 0, got {self.mask_dilate}.")
        if not 0.0 <= float(self.cleanup_sigma) < 1.0:
            raise ConfigError(f"cleanup_sigma must be in [0, 1), got {self.cleanup_sigma} (0 = no clean-up).")


def project(z: torch.Tensor, z_src: torch.Tensor, rho: float | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``z_src + M ⊙ d`` with ``d = z − z_src`` scaled down so ``‖M ⊙ d‖₂ ≤ ρ·√n`` per image.

    Args: ``z``, ``z_src`` ``[batch, channel, height, width]``; ``mask`` ``[batch, 1, height, width]`` (0/1) or None.
    """
    d = z - z_src  # [batch, channel, height, width]
    if mask is not None:
        d = d * mask
    if rho is not None:
        n = d[0].numel()
        norm = d.flatten(1).norm(dim=1)  # [batch]
        limit = float(rho) * math.sqrt(n)
        scale = torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm))
        d = d * scale.view(-1, 1, 1, 1)
    return z_src + d


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


@torch.no_grad()
def diff_mask(
    model: EditModel,
    z_src: torch.Tensor,
    target: TextEmbeds,
    source: TextEmbeds,
    threshold: float = 0.5,
    sigma: float = 0.6,
    samples: int = 4,
    dilate: int = 1,
    seed: int = 0,
    hook: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """A 0/1 mask ``[batch, 1, height, width]`` of where the model's predictions under ``target`` and ``source`` differ.

    DiffEdit-style (Couairon et al. 2022), in clean-latent form: for ``samples`` noise draws ``ε``,
    ``z_σ = (1−σ) z_src + σ ε`` and ``D += |x̂₀(z_σ; target) − x̂₀(z_σ; source)|`` summed over
    channels (one batched call per draw); ``D`` is smoothed with a 3×3 mean, divided by each image's
    maximum, thresholded at ``threshold`` and dilated by ``dilate`` positions. An image whose two
    predictions never differ gets an empty mask (nothing to edit). ``hook``: a context-manager
    factory active around the target branch only (image-space steering), which then runs separately.
    """
    b = z_src.shape[0]
    target, source = target.expand(b), source.expand(b)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    score = torch.zeros(b, 1, *z_src.shape[2:], device=z_src.device)  # [batch, 1, height, width]
    sig = model._sigma(sigma, b)
    for _ in range(int(samples)):
        eps = torch.randn(z_src.shape, generator=gen).to(z_src.device, z_src.dtype)
        z_t = (1 - sigma) * z_src + sigma * eps
        if hook is None:
            both = model.x0(torch.cat([z_t, z_t]), torch.cat([sig, sig]), TextEmbeds.cat([target, source]))
            x_t, x_s = both.float().chunk(2)
        else:
            x_t = model.x0(z_t, sig, target, hook=hook).float()
            x_s = model.x0(z_t, sig, source).float()
        score += (x_t - x_s).abs().sum(1, keepdim=True)
    score = F.avg_pool2d(score, 3, stride=1, padding=1, count_include_pad=False)
    peak = score.flatten(1).max(1).values.view(-1, 1, 1, 1)  # [batch, 1, 1, 1]
    mask = ((score >= threshold * peak) & (peak > 0)).float()
    return _dilate(mask, int(dilate)).to(z_src.dtype)


def _token_grid(n_img: int, h: int, w: int) -> tuple[int, int]:
    """The ``(rows, cols)`` of ``n_img`` image tokens laid out with the latent's aspect ratio ``h : w``."""
    gh = int(round(math.sqrt(n_img * h / w)))
    return gh, n_img // gh


def _resample_queries(m: torch.Tensor, grid: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """A map ``[batch, image_token, text_token]`` on its own token grid, resampled (nearest) to ``grid``; unchanged when it is on it.

    Blocks of a UNet attend at several resolutions; a DiT's blocks all share one grid.
    """
    own = _token_grid(m.shape[1], h, w)
    if own == grid:
        return m
    b, _, t = m.shape
    x = m.transpose(1, 2).reshape(b * t, 1, *own)  # [batch*text_token, 1, height, width]
    x = F.interpolate(x, size=grid, mode="nearest")
    return x.reshape(b, t, grid[0] * grid[1]).transpose(1, 2)  # [batch, image_token, text_token]


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
    """A 0/1 mask ``[batch, 1, height, width]`` of where the image attends to the edited words.

    One transformer call (no CFG) per condition in ``conds`` on ``z_src`` noised to ``sigma``; the
    image→text attention maps of every block (``blocks.*.attn.img2txt``, head mean, recorded exactly
    with :func:`latentlens.record`; a UNet's coarser levels resampled, nearest, to its finest grid) are
    averaged over blocks and summed over the image's token set
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
        per_block = [
            rec[name][0].float() for name in rec.names if name.endswith("attn.img2txt")
        ]  # [batch, image_token, text_token]
        n_img = max(m.shape[1] for m in per_block)
        gh, gw = _token_grid(n_img, h, w)
        mean = torch.stack([_resample_queries(m, (gh, gw), h, w) for m in per_block]).mean(
            0
        )  # [batch, image_token, text_token]
        for i in range(b):
            idx = [t for t in tokens[i] if t < mean.shape[2]]
            if not idx:
                continue
            any_tokens[i] = True
            m = mean[i][:, idx].sum(-1)  # [image_token]
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
    source: TextEmbeds | None,
    params: EMSParams,
    mask: torch.Tensor | None = None,
    hook: Callable[[int], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Run the constrained delta-denoising update (module docstring); returns ``z`` ``[batch, channel, height, width]``.

    ``source=None`` runs the image-only ablation (plain score distillation toward ``target``).
    ``mask`` ``[batch, 1, height, width]``: the region M (None = everywhere). ``hook(k)``: a context manager (or
    None) active only around the target branch's predictions at iteration ``k``
    (``latentlens.steer(...)`` for image-space directions); the two branches then run as separate
    transformer calls, otherwise as one batched call. ``hook(iterations)`` is used for the clean-up.
    """
    params.check()
    b = z_src.shape[0]
    target = target.expand(b)
    source = None if source is None else source.expand(b)
    if params.iterations == 0 or params.rho == 0:
        return z_src.clone()
    if (
        hook is None
        and source is not None
        and torch.equal(target.tokens, source.tokens)
        and (target.pooled is None or torch.equal(target.pooled, source.pooled))
    ):
        return z_src.clone()  # α = 0 or an empty edit: nothing to do (and exactly nothing changes)
    if mask is not None and not bool(mask.any()):
        return z_src.clone()
    gen = torch.Generator().manual_seed(int(params.seed))
    lo, hi = params.t_range
    z = z_src.clone()
    n_it = int(params.iterations)
    for k in range(n_it):
        eta = float(params.step_size)
        if params.step_rule == "flow":
            s_k = hi - k * (hi - lo) / n_it
            s_next = hi - (k + 1) * (hi - lo) / n_it if k + 1 < n_it else 0.0
            eta = eta * (s_k - s_next) / s_k if s_k > 0 else eta
            sigma = torch.full((b,), s_k, device=z.device)  # [batch]
        else:
            u = torch.rand(b, generator=gen)  # [batch]
            if params.schedule == "descending":
                u = (n_it - 1 - k + u) / n_it  # k-th bin from the top
            sigma = (lo + (hi - lo) * u).to(z.device)  # [batch]
        eps = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)  # [batch, channel, height, width]
        s4 = sigma.view(-1, 1, 1, 1)
        z_t = (1 - s4) * z + s4 * eps
        if source is None:
            x_tgt = model.x0(z_t, sigma, target, hook=None if hook is None else (lambda k=k: hook(k)))
            g = x_tgt - z  # [batch, channel, height, width]  plain SDS pull toward the target's prediction
        else:
            zs_t = (1 - s4) * z_src + s4 * eps
            if hook is None:
                both = model.x0(torch.cat([z_t, zs_t]), torch.cat([sigma, sigma]), TextEmbeds.cat([target, source]))
                x_tgt, x_src = both.chunk(2)
            else:
                x_tgt = model.x0(z_t, sigma, target, hook=lambda k=k: hook(k))
                x_src = model.x0(zs_t, sigma, source)
            g = (x_tgt - x_src) - (z - z_src)  # [batch, channel, height, width]
        if mask is not None:
            g = g * mask
        z = project(z + eta * g, z_src, params.rho, mask)
        if progress is not None:
            progress(k + 1, int(params.iterations))
    if params.cleanup_sigma > 0:
        sc = float(params.cleanup_sigma)
        eps = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
        step_hook = None if hook is None else (lambda i, n=int(params.iterations): hook(n))
        z = model.ode((1 - sc) * z + sc * eps, target, sc, 0.0, hook=step_hook)
        z = project(z, z_src, params.rho, mask)
    return z


__all__ = ["EMSParams", "MASKS", "STEP_RULES", "attention_mask", "dds_update", "diff_mask", "project"]
