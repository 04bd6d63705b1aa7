"""record(): bit-identical output, values equal to independent hooks, selection, cleanup, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from latentlens import record, site_names
from latentlens.errors import ConfigError, UnknownNameError
from latentlens.names import is_map
from probing_ref import Tap, get_pipe, hook_counts, run_pipe


def test_output_bit_identical_with_everything_recorded(kind, pipe):
    before = hook_counts(pipe.transformer)
    ref = run_pipe(pipe, kind)
    with record(pipe, sites="*", cfg="both") as rec:
        out = run_pipe(pipe, kind)
    assert np.array_equal(ref, out)
    assert hook_counts(pipe.transformer) == before
    assert set(rec.names) == set(site_names(pipe))  # every site and every quadrant was recorded
    assert len(rec.timesteps) == 2


def test_toy_like_bare_transformer_bit_identical():
    """A pixel-space SD3 transformer called bare (as the toy model is): every name, output unchanged."""
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    model = tiny_sd3_transformer(in_channels=3, num_layers=3, qk_norm="rms_norm")
    inputs = sd3_inputs(model, batch=2, text_tokens=5)
    with torch.no_grad():
        ref = model(**inputs).sample
        with record(model, sites="*") as rec:
            out = model(**inputs).sample
    assert torch.equal(ref, out)
    assert rec["blocks.2.attn.img2txt"].shape == (1, 2, 16, 5)  # bare transformer: no CFG split, batch kept
    assert torch.equal(rec["pred"][0], ref)


def _expected(kind: str, t, name: str, taps: Tap) -> torch.Tensor:
    """The value of ``name`` per call, read from plain torch hooks (independent of the adapters)."""
    calls_t = taps.calls["transformer"]
    if name in ("latents", "text.tokens", "text.pooled"):
        arg = {"latents": "hidden_states", "text.tokens": "encoder_hidden_states", "text.pooled": "pooled_projections"}[name]
        return torch.stack([c["kwargs"].get(arg, c["args"][0] if c["args"] else None) for c in calls_t])
    if name == "pred":
        return torch.stack([c["out"][0] for c in calls_t])
    parts = name.split(".")
    i, site = int(parts[1]), ".".join(parts[2:])
    n_double = len(t.transformer_blocks)
    blocks = list(t.transformer_blocks) + list(getattr(t, "single_transformer_blocks", []))
    single = kind == "flux" and i >= n_double
    calls = lambda key: taps.calls[f"{i}.{key}"]  # noqa: E731
    out = []
    for n, cb in enumerate(calls("block")):
        if site == "resid_in.img":
            v = cb["kwargs"].get("hidden_states", cb["args"][0] if cb["args"] else None)
        elif site == "resid_in.txt":
            v = cb["kwargs"]["encoder_hidden_states"]
        elif site == "resid_out.img":
            v = cb["out"] if kind == "pixart" else cb["out"][1]
        elif site == "resid_out.txt":
            v = cb["out"][0]
        elif site in ("attn_out.img", "attn_out.txt"):
            a = calls("attn")[n]["out"]
            if single:
                tl = cb["kwargs"]["encoder_hidden_states"].shape[1]
                v = a[:, :tl] if site.endswith("txt") else a[:, tl:]
            elif kind == "pixart":
                v = a
            else:
                v = a[0] if site.endswith("img") else a[1]
        elif site == "attn2_out.img":
            v = calls("attn2")[n]["out"]
        elif site == "xattn_out.img":
            v = calls("attn2")[n]["out"]
        elif site == "ff_out.img":
            v = calls("ff")[n]["out"]
        elif site == "ff_out.txt":
            v = calls("ff_context")[n]["out"]
        elif site == "mod":
            if kind == "pixart":
                ts = cb["kwargs"]["timestep"]
                v = blocks[i].scale_shift_table[None] + ts.reshape(ts.shape[0], 6, -1)
            else:
                m = calls("norm")[n]["out"]
                v = m.reshape(m.shape[0], -1, blocks[i].attn.to_q.out_features)
        elif site == "mod.txt":
            m = calls("norm_context")[n]["out"]
            v = m.reshape(m.shape[0], -1, blocks[i].attn.to_q.out_features)
        else:
            raise AssertionError(f"no reference for {name}")
        out.append(v)
    return torch.stack(out)


def _taps(kind: str, t) -> Tap:
    mods = {"transformer": t}
    blocks = list(t.transformer_blocks) + list(getattr(t, "single_transformer_blocks", []))
    for i, b in enumerate(blocks):
        mods[f"{i}.block"] = b
        for key, attr in (("attn", "attn1" if kind == "pixart" else "attn"), ("attn2", "attn2"), ("ff", "ff"),
                          ("ff_context", "ff_context")):
            if getattr(b, attr, None) is not None:
                mods[f"{i}.{key}"] = getattr(b, attr)
        if kind != "pixart":
            norm = b.norm1 if hasattr(b, "norm1") else b.norm
            mods[f"{i}.norm"] = norm.linear
            if hasattr(b, "norm1_context"):
                mods[f"{i}.norm_context"] = b.norm1_context.linear
    return Tap(mods)


def test_every_site_equals_an_independent_hook(kind, pipe):
    check_every_site_equals_an_independent_hook(pipe, kind)


def check_every_site_equals_an_independent_hook(pipe, kind: str) -> None:
    """Every activation site recorded from ``pipe`` (any device) equals a plain torch hook, bit for bit."""
    t = pipe.transformer
    names = [n for n in site_names(pipe) if not is_map(n)]
    taps = _taps(kind, t)
    try:
        with record(pipe, sites=names, cfg="both") as rec:
            run_pipe(pipe, kind)
    finally:
        taps.close()
    for name in names:
        exp = _expected(kind, t, name, taps).cpu()
        assert torch.equal(rec[name], exp), name
        assert rec.dims(name)[:2] == ("step", "batch")
        assert len(rec.dims(name)) == rec[name].ndim


def test_cfg_halves_and_steps(pipe, kind):
    if kind == "flux":
        pytest.skip("Flux without true CFG has no doubled batch (see test_flux_true_cfg_contexts)")
    with record(pipe, sites="blocks.0.resid_out.img", cfg="both") as both:
        run_pipe(pipe, kind, prompt=["a red circle", "a blue square"])
    with record(pipe, sites="blocks.0.resid_out.img", steps=[1]) as cond:
        run_pipe(pipe, kind, prompt=["a red circle", "a blue square"])
    with record(pipe, sites="blocks.0.resid_out.img", cfg="uncond", steps=slice(0, 1)) as unc:
        run_pipe(pipe, kind, prompt=["a red circle", "a blue square"])
    x = both["blocks.0.resid_out.img"]  # [2, 4, tokens, dim]: batch [uncond, uncond, cond, cond]
    assert x.shape[:2] == (2, 4)
    assert torch.equal(cond["blocks.0.resid_out.img"], x[1:2, 2:])
    assert torch.equal(unc["blocks.0.resid_out.img"], x[0:1, :2])
    assert cond.steps == [1] and cond.timesteps == [both.timesteps[1]]


def test_flux_true_cfg_contexts():
    from latentlens.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1)
    kw = dict(negative_prompt="blurry", true_cfg_scale=2.0)
    ref = run_pipe(pipe, "flux", **kw)
    with record(pipe, sites=["blocks.1.resid_out.img", "pred"], attention="blocks.1.attn.img2txt", cfg="both") as both:
        out = run_pipe(pipe, "flux", **kw)
    with record(pipe, sites=["blocks.1.resid_out.img"], cfg="cond") as cond:
        run_pipe(pipe, "flux", **kw)
    with record(pipe, sites=["blocks.1.resid_out.img"], cfg="uncond") as unc:
        run_pipe(pipe, "flux", **kw)
    assert np.array_equal(ref, out)
    x = both["blocks.1.resid_out.img"]
    assert x.shape[:2] == (2, 2)  # step axis = denoising step; batch [uncond, cond]
    assert torch.equal(cond["blocks.1.resid_out.img"], x[:, 1:])
    assert torch.equal(unc["blocks.1.resid_out.img"], x[:, :1])
    assert both["blocks.1.attn.img2txt"].shape == (2, 2, 64, 8)


def test_reductions_tokens_and_dtype():
    pipe = get_pipe("sd3")
    with record(pipe, sites=["blocks.0.resid_out.img", "blocks.0.resid_out.txt"], attention="blocks.0.attn.img2txt",
                cfg="both") as full:
        run_pipe(pipe, "sd3")
    with record(pipe, sites=["blocks.0.resid_out.*"], attention="blocks.0.attn.img2txt", tokens=[1, 2],
                reduce=["mean_img_tokens", "mean_steps"], dtype=torch.float64, cfg="both") as red:
        run_pipe(pipe, "sd3")
    img = full["blocks.0.resid_out.img"]  # [step, batch, tokens, dim]
    assert red.dims("blocks.0.resid_out.img") == ("step", "batch", "channel")
    assert red["blocks.0.resid_out.img"].dtype == torch.float64
    torch.testing.assert_close(red["blocks.0.resid_out.img"][0], img.double().mean(dim=(0, 2)))
    torch.testing.assert_close(red["blocks.0.resid_out.txt"][0], full["blocks.0.resid_out.txt"][:, :, [1, 2]].double().mean(0))
    m = full["blocks.0.attn.img2txt"]  # [step, batch, 16 img, text]
    torch.testing.assert_close(red["blocks.0.attn.img2txt"][0], m[:, :, :, [1, 2]].double().mean(dim=(0, 2)))
    with record(pipe, attention="blocks.0.attn.img2img", reduce="pool=2", cfg="both") as pooled:
        run_pipe(pipe, "sd3")
    assert pooled["blocks.0.attn.img2img"].shape == (2, 2, 4, 4)  # 4×4 token grid pooled 2×2 on both axes
    # a pooled row is the mean of 4 query rows and each pooled column the mean of 4 key columns,
    # so 4 × (pooled row sum) = the mean image-key mass of those 4 queries = 1 - their text mass
    img_mass = 1 - full["blocks.0.attn.img2txt"].sum(-1)  # [step, batch, 16]
    grid = img_mass.reshape(2, 2, 2, 2, 2, 2).mean(dim=(3, 5)).reshape(2, 2, 4)
    torch.testing.assert_close(pooled["blocks.0.attn.img2img"].sum(-1) * 4, grid, atol=1e-5, rtol=0)


def test_word_tokens_select_the_right_positions():
    from latentlens.recorder import word_token_indices
    from latentlens.adapters import adapter_for
    pipe = get_pipe("sd3")
    idx = word_token_indices(adapter_for(pipe), "red", "a small red circle")
    # CLIP segment: [CLS] a small red → 3; T5 segment starts at tokenizer_max_length (8): 8 + 3
    assert idx == [3, 11]
    with record(pipe, sites="blocks.0.resid_in.txt", tokens="red", prompt="a small red circle", cfg="both") as rec:
        run_pipe(pipe, "sd3", prompt="a small red circle")
    with record(pipe, sites="blocks.0.resid_in.txt", cfg="both") as full:
        run_pipe(pipe, "sd3", prompt="a small red circle")
    assert torch.equal(rec["blocks.0.resid_in.txt"], full["blocks.0.resid_in.txt"][:, :, [3, 11]])
    with pytest.raises(ConfigError, match="does not occur"):
        record(pipe, sites="blocks.0.resid_in.txt", tokens="green", prompt="a small red circle")
    with pytest.raises(ConfigError, match="prompt="):
        record(pipe, sites="blocks.0.resid_in.txt", tokens="red")


def test_hooks_removed_when_the_model_raises(pipe, kind):
    t = pipe.transformer
    before = hook_counts(t)
    had_forward = "forward" in t.__dict__

    def boom(module, args, kwargs, out):
        raise RuntimeError("boom inside the block")

    h = (list(t.transformer_blocks)[0]).register_forward_hook(boom, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with record(pipe, sites="*", cfg="both"):
                run_pipe(pipe, kind)
    finally:
        h.remove()
    assert hook_counts(t) == before
    assert ("forward" in t.__dict__) == had_forward


def test_unknown_names_and_steps_errors():
    pipe = get_pipe("sd3")
    with pytest.raises(UnknownNameError, match="blocks.0.resid_out.img"):
        record(pipe, sites="blocks.0.resid_out.imgg")
    with pytest.raises(UnknownNameError, match="attn.img2txt"):
        record(pipe, attention="blocks.0.attn.img2text")
    with pytest.raises(UnknownNameError):
        record(pipe, sites="blocks.9.*")
    with pytest.raises(ConfigError, match="negative"):
        record(pipe, steps=[-1])
    with pytest.raises(ConfigError, match="called only 2"):
        with record(pipe, sites="blocks.0.resid_out.img", steps=[0, 5]):
            run_pipe(pipe, "sd3")
    with pytest.raises(ConfigError, match="cfg"):
        record(pipe, cfg="positive")
    with pytest.raises(ConfigError, match="still running"):
        with record(pipe, sites="pred") as rec:
            rec["pred"]
    with record(pipe, sites="pred") as rec:
        pass  # the pipeline is never called inside the block
    with pytest.raises(ConfigError, match="Nothing was recorded, so there is no 'pred': the transformer never ran"):
        rec["pred"]
    # globs, lists and callables select the same names
    a = record(pipe, sites="blocks.1.*_out.img")._recorder.names
    b = record(pipe, sites=["blocks.1.attn_out.img", "blocks.1.ff_out.img", "blocks.1.resid_out.img"])._recorder.names
    c = record(pipe, sites=lambda n: n.startswith("blocks.1.") and n.endswith("_out.img"))._recorder.names
    assert a == b == c == ["blocks.1.attn_out.img", "blocks.1.ff_out.img", "blocks.1.resid_out.img"]


def test_unsupported_model_class_error():
    from latentlens.adapters import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="SD3Transformer2DModel.*latentlens/adapters/"):
        record(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match="Linear"):
        site_names(torch.nn.Linear(2, 2))


def test_caching_hook_is_refused_or_gaps_recorded():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from latentlens.adapters.hooks import CachingHookError
    from latentlens.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=1)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=10.0))  # skips after step 0
    with pytest.raises(CachingHookError, match="FBC.*allow_caching=True"):
        record(pipe, sites="blocks.*.resid_out.img").__enter__()
    with record(pipe, sites="blocks.*.resid_out.img", attention="blocks.*.attn.img2txt", allow_caching=True) as rec:
        run_pipe(pipe, "flux", num_inference_steps=3)
    assert rec.gaps and all(step > 0 and block > 0 for step, block in rec.gaps)
    step, block = rec.gaps[0]
    assert torch.isnan(rec[f"blocks.{block}.attn.img2txt"][step]).all()


def test_nan_warns_once_naming_site_and_step():
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    model = tiny_sd3_transformer()
    inputs = sd3_inputs(model)
    inputs["encoder_hidden_states"][0, 0, 0] = float("nan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), record(model, sites="blocks.0.resid_out.txt"):
            model(**inputs)
            model(**inputs)
    msgs = [str(w.message) for w in caught if "NaN" in str(w.message)]
    assert len(msgs) == 1 and "blocks.0.resid_out.txt" in msgs[0] and "step 0" in msgs[0]


def test_store_receives_the_recording():
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    class FakeStore:
        got = None

        def add_recording(self, rec):
            self.got = rec

    model = tiny_sd3_transformer()
    store = FakeStore()
    with torch.no_grad(), record(model, sites="pred", store=store) as rec:
        model(**sd3_inputs(model))
    assert store.got is rec and rec.names == ["pred"]


def test_with_a_run_store_rec_reads_lazily_from_disk_and_equals_memory(tmp_path):
    from latentlens.store import RunStore
    from latentlens.testing import sd3_inputs, tiny_sd3_transformer

    model = tiny_sd3_transformer()
    inputs = sd3_inputs(model)
    with torch.no_grad(), record(model, sites="blocks.*.resid_out.img") as in_memory:
        model(**inputs)
        model(**inputs)
    store = RunStore.create(tmp_path / "run", {"model": {"id": "tiny-sd3"}})
    with torch.no_grad(), record(model, sites="blocks.*.resid_out.img", store=store) as on_disk:
        model(**inputs)
        model(**inputs)
    batch = in_memory[in_memory.names[0]].shape[1]
    assert on_disk.sample_ids == list(range(batch))
    assert all(on_disk._data[name] is None for name in on_disk.names)  # nothing kept in memory
    for name in in_memory.names:
        assert torch.equal(on_disk[name], in_memory[name])  # [step, batch, tokens, dim]


def test_toy_pipeline_bit_identical_and_words():
    toy = pytest.importorskip("latentlens.toy.pipeline")
    pipe = toy.tiny_toy_pipeline(num_layers=2)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a small red circle on the left on a gray background"
    kw = dict(num_inference_steps=2, output_type="np")
    ref = pipe(prompt, generator=torch.Generator().manual_seed(0), **kw).images
    with record(pipe, sites="*", tokens="red", prompt=prompt) as rec:
        out = pipe(prompt, generator=torch.Generator().manual_seed(0), **kw).images
    assert np.array_equal(ref, out)
    idx = pipe.tokenizer(prompt)["input_ids"].index(pipe.tokenizer.convert_tokens_to_ids("red"))
    assert rec.meta["tokens"] == [idx]
    assert rec["blocks.0.attn.img2txt"].shape[-1] == 1 and rec["text.tokens"].shape[2] == 1


def test_pyramid_attention_broadcast_gaps():
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    from latentlens.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(num_layers=1, num_single_layers=1)
    apply_pyramid_attention_broadcast(pipe.transformer, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 10000),
        current_timestep_callback=lambda: pipe.current_timestep))
    with record(pipe, attention="blocks.*.attn.img2txt", allow_caching=True) as rec:
        run_pipe(pipe, "flux", num_inference_steps=3)
    assert rec.gaps == [(1, 0), (1, 1)]  # every other step re-uses the cached attention output
    assert torch.isnan(rec["blocks.0.attn.img2txt"][1]).all() and not torch.isnan(rec["blocks.0.attn.img2txt"][2]).any()


def test_word_tokens_per_prompt_row():
    pipe = get_pipe("sd3")
    prompts = ["a red circle", "a small red circle"]  # "red" at CLIP position 2 and 3 (T5: 8 + 2, 8 + 3)
    with record(pipe, sites="blocks.0.resid_in.txt", attention="blocks.0.attn.*", tokens="red", prompt=prompts,
                cfg="both") as rec:
        run_pipe(pipe, "sd3", prompt=prompts)
    with record(pipe, sites="blocks.0.resid_in.txt", attention="blocks.0.attn.*", cfg="both") as full:
        run_pipe(pipe, "sd3", prompt=prompts)
    assert rec.meta["tokens"] == [[2, 10], [3, 11]]
    rows = [[2, 10], [3, 11], [2, 10], [3, 11]]  # batch [uncond × 2, cond × 2]; uncond rows follow their prompt
    for b, idx in enumerate(rows):
        assert torch.equal(rec["blocks.0.resid_in.txt"][:, b], full["blocks.0.resid_in.txt"][:, b, idx])
        torch.testing.assert_close(rec["blocks.0.attn.img2txt"][:, b], full["blocks.0.attn.img2txt"][:, b][..., idx],
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(rec["blocks.0.attn.txt2img"][:, b], full["blocks.0.attn.txt2img"][:, b, idx],
                                   atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="'red' does not occur in the prompt 'a reddish circle'"):
        record(pipe, sites="blocks.0.resid_in.txt", tokens="red", prompt=["a red circle", "a reddish circle"])
