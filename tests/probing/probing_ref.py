"""Independent references for the probing tests: plain torch hooks and float64 attention from the weights."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tiny_pipes import get_pipe  # noqa: F401  (the session's tiny pipelines, shared with every test file)

SEED = 0
KINDS = ("sd3", "sd35", "flux", "pixart")  # the DiTs; the UNets ("sd", "sdxl") have test_unet.py


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def run_pipe(pipe: Any, kind: str, prompt: Any = "a red circle", **extra: Any) -> Any:
    """One tiny, deterministic pipeline call (2 steps, numpy output)."""
    kw: dict[str, Any] = dict(num_inference_steps=2, output_type="np", generator=gen())
    if kind in ("sd3", "sd35"):
        kw.update(max_sequence_length=8)
    elif kind == "flux":
        kw.update(height=16, width=16, max_sequence_length=8)
    elif kind == "pixart":
        kw.update(use_resolution_binning=False, max_sequence_length=8, clean_caption=False)
    kw.update(extra)
    return pipe(prompt, **kw).images


def hook_counts(model: torch.nn.Module) -> tuple[int, int, int]:
    """(forward hooks, forward pre-hooks, diffusers registry hooks) over every submodule."""
    fwd = sum(len(m._forward_hooks) for m in model.modules())
    pre = sum(len(m._forward_pre_hooks) for m in model.modules())
    reg = sum(len(m._diffusers_hook.hooks) for m in model.modules() if hasattr(m, "_diffusers_hook"))
    return fwd, pre, reg


class Tap:
    """Plain torch forward hooks that keep inputs (kwargs merged) and outputs of modules, per call."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: dict[str, list[dict[str, Any]]] = {k: [] for k in modules}
        self.handles = []
        for key, mod in modules.items():
            self.handles.append(mod.register_forward_hook(self._hook(key), with_kwargs=True))

    def _hook(self, key: str):
        def fn(module, args, kwargs, out):
            self.calls[key].append({"args": args, "kwargs": dict(kwargs), "out": out})

        return fn

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    b = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), layer.weight.double(), b)


def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
    if norm is None:
        return x
    eps = getattr(norm, "eps", None) or 1e-6
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    w = getattr(norm, "weight", None)
    return y * w.double() if w is not None else y


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Flux RoPE on [b, n, h, d] with interleaved (real, imag) pairs, in float64."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return x * cos[None, :, None, :].double() + rotated * sin[None, :, None, :].double()


def ref_probs(attn: Any, x: torch.Tensor, ctx: torch.Tensor | None, *, order: str, rope: Any = None,
              mask: torch.Tensor | None = None, cross: bool = False) -> torch.Tensor:
    """softmax(QKᵀ/√d) in float64 from the module's weights, averaged over heads: [b, N, N].

    order: "img_txt" (SD3), "txt_img" (Flux double), "joint" (Flux single / self-attention).
    cross: PixArt cross-attention (queries from x, keys from ctx with to_k).
    """
    heads = attn.heads
    inner = attn.to_q.out_features
    d = inner // heads

    def hd(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, d))

    q = _rms(attn.norm_q, hd(_lin(attn.to_q, x)))
    k = _rms(attn.norm_k, hd(_lin(attn.to_k, ctx if cross else x)))
    if ctx is not None and not cross:
        cq = _rms(getattr(attn, "norm_added_q", None), hd(_lin(attn.add_q_proj, ctx)))
        ck = _rms(getattr(attn, "norm_added_k", None), hd(_lin(attn.add_k_proj, ctx)))
        if order == "img_txt":
            q, k = torch.cat([q, cq], 1), torch.cat([k, ck], 1)
        else:
            q, k = torch.cat([cq, q], 1), torch.cat([ck, k], 1)
    if rope is not None:
        q, k = _rope(q, *rope), _rope(k, *rope)
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5
    if mask is not None:
        m = mask.double()
        while m.ndim < 4:
            m = m.unsqueeze(1)
        logits = logits + m
    return logits.softmax(-1).mean(1)  # [b, N, N]
