"""Baseline editors run in the same harness as EMS: prompt swap, SDEdit and FlowEdit.

All work on latents ``[batch, channel, height, width]`` through :class:`~latentlens.editor.model.EditModel`, batched.

- **prompt swap**: regenerate from the source's own initial noise under the target prompt
  (only for generated sources: the noise must be known).
- **SDEdit** (Meng et al. 2022): ``z_τ = (1 − τ) z_src + τ ε``, then the flow ODE from τ to 0
  under the target prompt.
- **FlowEdit** (Kulikov et al. 2024), inversion-free: ``z_FE = z_src``; for each σ_i of the
  scheduler grid with σ_i ≤ σ_max: draw fresh ``ε``, ``z_src,σ = (1 − σ_i) z_src + σ_i ε``,
  ``z_tar,σ = z_FE + z_src,σ − z_src``, ``V_Δ = v(z_tar,σ; target) − v(z_src,σ; source)``
  (averaged over ``n_avg`` draws), ``z_FE ← z_FE + (σ_{i+1} − σ_i) V_Δ``. The paper's final phase:
  for the last ``n_min`` steps of the grid (0 by default, as in the paper's SD3 and Flux settings),
  ``z_FE`` is noised once to the current σ with a fresh ``ε`` (``z_tar = z_FE + z_src,σ − z_src``) and
  then denoised with ordinary Euler steps under the target prompt alone. ``sigma_max`` plays the
  role of the paper's ``n_max`` (the grid points ≤ σ_max are edited; on the toy model's 20-step grid
  σ_max = 0.8 is n_max = 15 of T = 20). Source and target use the model's CFG scale unless
  ``source_guidance`` / ``target_guidance`` are given (the paper: 3.5 / 13.5 for SD3).

Example::

    z = flowedit(model, z_src, e_s, e_t, sigma_max=0.7, seed=0)
"""

from __future__ import annotations

from typing import Any

import torch

from latentlens.editor.model import EditModel, TextEmbeds
from latentlens.errors import ConfigError

BASELINES = ("prompt_swap", "sdedit", "flowedit")


@torch.no_grad()
def prompt_swap(model: EditModel, noise: torch.Tensor | None, target: TextEmbeds) -> torch.Tensor:
    """Regenerate from the source's initial ``noise`` ``[batch, channel, height, width]`` under ``target``."""
    if noise is None:
        raise ConfigError(
            "Prompt swap regenerates from the source's initial noise, which is only known for generated "
            "sources; use SDEdit, FlowEdit or EMS for a real image."
        )
    return model.generate(target.expand(noise.shape[0]), noise=noise)


@torch.no_grad()
def sdedit(
    model: EditModel, z_src: torch.Tensor, target: TextEmbeds, strength: float = 0.6, seed: Any = 0
) -> torch.Tensor:
    """Noise ``z_src`` to σ = ``strength`` and denoise under ``target``."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"SDEdit strength must be in [0, 1], got {strength}.")
    if strength == 0.0:
        return z_src.clone()
    eps = model.noise(z_src.shape[0], seed)
    z = (1 - strength) * z_src + strength * eps
    return model.ode(z, target.expand(z_src.shape[0]), strength, 0.0)


@torch.no_grad()
def flowedit(
    model: EditModel,
    z_src: torch.Tensor,
    source: TextEmbeds,
    target: TextEmbeds,
    sigma_max: float = 0.7,
    n_avg: int = 1,
    seed: int = 0,
    source_guidance: float | None = None,
    target_guidance: float | None = None,
    num_inference_steps: int | None = None,
    n_min: int = 0,
) -> torch.Tensor:
    """FlowEdit from ``z_src`` ``[batch, channel, height, width]`` (module docstring); σ_max sets how much may change.

    ``n_min``: the last ``n_min`` steps denoise normally under the target prompt (0 = the whole path is
    FlowEdit's, the paper's default).
    """
    if not 0.0 < sigma_max <= 1.0:
        raise ConfigError(f"FlowEdit sigma_max must be in (0, 1], got {sigma_max}.")
    if int(n_min) < 0:
        raise ConfigError(f"FlowEdit n_min must be >= 0 (steps of plain target sampling at the end), got {n_min}.")
    b = z_src.shape[0]
    source, target = source.expand(b), target.expand(b)
    grid = model.sigmas(num_inference_steps)
    points = [float(s) for s in grid if float(s) <= sigma_max + 1e-6]
    if not points or points[-1] != 0.0:
        points.append(0.0)
    gen = torch.Generator().manual_seed(int(seed))
    n_steps = len(points) - 1
    first_plain = max(0, n_steps - int(n_min))  # index of the first plain-sampling step
    same = (
        target_guidance == source_guidance
        and torch.equal(target.tokens, source.tokens)
        and (target.pooled is None or torch.equal(target.pooled, source.pooled))
    )
    if same and first_plain == n_steps:
        return z_src.clone()  # V_Δ is exactly 0 at every step: FlowEdit leaves the image as it is
    z_fe = z_src.clone()
    for i, (s, s_next) in enumerate(zip(points[:-1], points[1:])):
        if i >= first_plain:
            if i == first_plain:
                eps = torch.randn(z_src.shape, generator=gen).to(z_src.device, z_src.dtype)
                z_fe = z_fe + ((1 - s) * z_src + s * eps) - z_src  # z_tar at σ = s
            z_fe = z_fe + (s_next - s) * model.velocity(z_fe, s, target, guidance_scale=target_guidance)
            continue
        v_delta = torch.zeros_like(z_src)
        for _ in range(max(1, int(n_avg))):
            eps = torch.randn(z_src.shape, generator=gen).to(z_src.device, z_src.dtype)
            zs_t = (1 - s) * z_src + s * eps
            zt_t = z_fe + zs_t - z_src
            if source_guidance == target_guidance:
                v = model.velocity(
                    torch.cat([zt_t, zs_t]), s, TextEmbeds.cat([target, source]), guidance_scale=target_guidance
                )
                v_t, v_s = v.chunk(2)
            else:
                v_t = model.velocity(zt_t, s, target, guidance_scale=target_guidance)
                v_s = model.velocity(zs_t, s, source, guidance_scale=source_guidance)
            v_delta = v_delta + (v_t - v_s)
        z_fe = z_fe + (s_next - s) * v_delta / max(1, int(n_avg))
    return z_fe


__all__ = ["BASELINES", "flowedit", "prompt_swap", "sdedit"]
